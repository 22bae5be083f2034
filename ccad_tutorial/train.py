"""Training CCAD: the stage-1 VAE, the batches, the loop, EMA.

    train_vae: stage 1 of the tiny preset (SD ships its VAE; ours learns first)
    TrainingData, batch_indices, crop_batch: reproducible micro-batches of crops and flips
    fit:       the optimisation loop (epsilon MSE, AdamW, accumulation, autocast, EMA),
               checkpointing into the run folder (``runs.save_checkpoint``)

``detectors.CCADDetector.fit`` builds the bank and the model and calls ``fit``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ccad_tutorial import accel
from ccad_tutorial.model import CCAD
from ccad_tutorial.networks import build_vae
from ccad_tutorial.presets import CCADConfig
from ccad_tutorial.runs import read_loss_log, save_checkpoint


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train_vae(train_images: torch.Tensor, cfg: CCADConfig, progress: bool = True):
    """Stage 1 of the tiny preset: fit a small AutoencoderKL to the normals.

    The loss is L1 + a small KL term. SD ships a pretrained VAE; a random decoder
    reconstructs nothing, so ours learns first and is frozen afterwards. Also sets
    ``cfg.scaling_factor`` = 1 / std of the latents (SD's 0.18215 was found the same
    way). Returns the VAE.
    """
    vae = build_vae(cfg)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    for _ in tqdm(range(cfg.vae_steps), desc="stage 1: VAE", disable=not progress):
        x = random_crops(train_images * 2 - 1, cfg.batch_size, cfg.crop_size, gen)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.l1_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.requires_grad_(False).eval()
    with torch.no_grad():
        latents = torch.cat(
            [vae.encode(x * 2 - 1).latent_dist.mode() for x in train_images.split(16)]
        )
    cfg.scaling_factor = float(1.0 / latents.std())
    return vae


# ---------------------------------------------------------------------- batches
def random_crops(x: torch.Tensor, n: int, size: int | None, gen: torch.Generator, *others):
    """n random crops (size x size) with random flips of x (N, C, H, W) -> (n, C, size, size).

    ``others`` are tensors aligned with x at an integer scale (the images behind latents);
    they are cropped and flipped the same way and returned after the crops of x.
    """
    idx = torch.randint(0, x.shape[0], (n,), generator=gen)
    return crop_batch(idx, size, gen, x, *others)


def crop_batch(idx: torch.Tensor, size: int | None, gen: torch.Generator, x: torch.Tensor, *others):
    """Rows idx of x (and others), randomly cropped to size (in x's pixels) and flipped."""
    h = x.shape[-1]
    size = h if size is None else min(size, h)
    outs = [[] for _ in (x, *others)]
    for i in idx.tolist():
        top, left = (torch.randint(0, h - size + 1, (2,), generator=gen)).tolist()
        flips = [d for d, f in zip((-1, -2), torch.rand(2, generator=gen) < 0.5, strict=True) if f]
        for out, t in zip(outs, (x, *others), strict=True):
            s = t.shape[-1] // h  # integer scale of this tensor relative to x
            c = t[i, :, top * s : (top + size) * s, left * s : (left + size) * s]
            out.append(c.flip(flips) if flips else c)
    stacked = [torch.stack(o) for o in outs]
    return stacked[0] if not others else tuple(stacked)


def batch_indices(k: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Rows of micro-batch k: positions k*B .. (k+1)*B of seeded per-epoch permutations.

    Epoch e's order is randperm(n) with seed (seed, e), so a resumed run sees the same order.
    """
    pos = torch.arange(k * batch_size, (k + 1) * batch_size)
    rows = []
    for p in pos.tolist():
        epoch, j = divmod(p, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        rows.append(int(perm[j]))
    return torch.tensor(rows)


# ---------------------------------------------------------------------- the training loop
def fit(
    model: CCAD,
    images: torch.Tensor,
    out: Path,
    start_step: int = 0,
    state: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train ``model`` on normal images (N, 3, H, W) in [0, 1] up to ``cfg.steps``.

    Checkpoints every ``cfg.checkpoint_every`` steps and at the end. Step s draws its
    crops, flips, timesteps and noise from a generator seeded by (seed, s): resuming
    reproduces the uninterrupted run exactly; under ``accelerate launch`` each process
    takes its share of every batch (``accel``).
    Returns {"steps", "last_loss", "train_s", "ms_per_step"}.
    """
    cfg, device, acc = model.cfg, model.bank.device, accel.make_accelerator()
    # foreach=False on CPU: the fused update's temporaries raise sd15's peak memory
    opt = torch.optim.AdamW(
        model.trainable_parameters(),
        cfg.lr,
        weight_decay=cfg.weight_decay,
        foreach=device.type == "cuda",
    )
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ema = {n: p.detach().clone() for n, p in trained}
    log, elapsed, last_saved = read_loss_log(out, start_step), 0.0, start_step
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        elapsed, ema = float(state["elapsed_s"]), state.get("ema", ema)
    amp_dtype = accel.autocast_dtype(cfg.mixed_precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    amp = amp_dtype is not None
    model.train()
    model.freeze()  # frozen parts go back to eval mode
    ddp = acc.prepare_model(model)  # DistributedDataParallel with several processes
    data = TrainingData(model, images, acc.process_index, acc.num_processes)
    bar = tqdm(range(start_step, cfg.steps), "train", cfg.steps, initial=start_step,
               disable=not (progress and acc.is_main_process))  # fmt: skip
    for step in bar:
        t0 = time.perf_counter()
        gen = accel.step_generator(cfg.seed, step, acc.process_index)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for micro in range(cfg.grad_accum):  # gradient accumulation
            x0, control, query, labels = data.batch(step * cfg.grad_accum + micro, gen)
            with accel.sync_gradients(acc, ddp, micro == cfg.grad_accum - 1):
                with torch.autocast(device.type, amp_dtype, enabled=amp):
                    # CCAD.forward is CCAD.loss
                    micro_loss = ddp(x0, control, gen, query=query, labels=labels)
                    micro_loss = micro_loss / cfg.grad_accum
                scaler.scale(micro_loss).backward()
            loss += micro_loss.item()
        loss = accel.mean_over_processes(acc, loss)
        if not math.isfinite(loss):  # stop before the bad gradients touch the weights
            raise TrainingDiverged(
                f"The loss became {loss} at step {step + 1}; training stopped. The "
                f"last good checkpoint in {out} (step {last_saved}) is kept. Lower the "
                "learning rate (lr) or use mixed_precision='no', then continue with "
                "--resume."
            )
        scaler.step(opt)
        scaler.update()
        if cfg.ema_decay is not None:
            ema_update(ema, model, cfg.ema_decay)
        elapsed += time.perf_counter() - t0
        log.append((step + 1, loss, opt.param_groups[0]["lr"], round(elapsed, 3)))
        bar.set_postfix(loss=f"{loss:.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            trainer = {
                "step": step + 1,
                "optimizer": opt.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "elapsed_s": elapsed,
                "ema": ema if cfg.ema_decay is not None else {},
            }
            save_checkpoint(out, model, trainer, log)  # the main process writes
            acc.wait_for_everyone()
            last_saved = step + 1
    model.eval()
    return {
        "steps": cfg.steps,
        "last_loss": log[-1][1] if log else float("nan"),
        "train_s": round(elapsed, 2),
        "ms_per_step": round(1000 * elapsed / max(1, cfg.steps), 1),
    }


class TrainingData:
    """The training set in x0 space, cut into reproducible micro-batches.

    x0 (N, C, h, w) is encoded once (the VAE is frozen), so a step only crops; the clean
    images (N, 3, H, W) go along as the guidance input, with bank_mode "retrieved" each
    image's global feature (N, D) as the retrieval query, and with bank_mode="category" each
    image's category index (N,) (``cfg.extra["train_counts"]``, in the order of the images).
    """

    def __init__(self, model: CCAD, images: torch.Tensor, rank: int = 0, world: int = 1) -> None:
        self.device, self.images, self.seed = model.bank.device, images, model.cfg.seed
        self.batch_size = model.cfg.batch_size
        self.rows = accel.process_rows(self.batch_size, rank, world)
        counts = list(model.cfg.extra.get("train_counts", {}).values()) or [len(images)]
        self.labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        chunks = [x.to(self.device) for x in images.split(16)]
        self.x0 = torch.cat([model.encode(x).cpu() for x in chunks])
        self.queries = None
        if model.extractor is not None:
            self.queries = torch.cat([model.global_features(x).cpu() for x in chunks])
        crop = model.cfg.crop_size
        self.crop = None if crop is None else crop // model.factor  # in x0 positions

    def batch(self, k: int, gen: torch.Generator) -> tuple:
        """Micro-batch k -> (x0 (B, C, c, c), control images (B, 3, c*f, c*f), query or None,
        category labels (B,))."""
        idx = batch_indices(k, self.batch_size, len(self.images), self.seed)[self.rows]
        x0, control = crop_batch(idx, self.crop, gen, self.x0, self.images)
        query = None if self.queries is None else self.queries[idx].to(self.device)
        return x0.to(self.device), control.to(self.device), query, self.labels[idx].to(self.device)


@torch.no_grad()
def ema_update(ema: dict, model: CCAD, decay: float) -> None:
    """Exponential moving average of the trainable weights (mirrors diffusers' EMAModel.step)."""
    for name, p in model.named_parameters():
        if name in ema:
            ema[name].lerp_(p.detach(), 1 - decay)
