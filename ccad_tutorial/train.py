"""Training and evaluating one CCAD run, top to bottom.

    train_run: data -> bank (training normals only) -> [stage 1: tiny VAE] -> CCAD -> fit
    fit:       the optimisation loop (epsilon MSE, AdamW, accumulation, autocast, EMA)
    evaluate_run: load the run -> reconstruct the test split -> anomaly maps -> metrics

A run directory holds everything needed to rebuild the model:

    config.json         CCADConfig (+ train arguments, UNet/VAE configs, measured times)
    bank.safetensors    the Coarse Feature Bank (CoarseFeatureBank.save)
    vae.safetensors     the stage-1 VAE of the tiny preset (so a resume skips stage 1)
    model.safetensors   every weight of CCAD (trainable and frozen)
    ema.safetensors     EMA of the trainable weights (only with ema_decay)
    trainer_state.pt    step, optimiser, RNG, elapsed time: plain tensors, read with
                        torch.load(weights_only=True) so no pickle code ever runs
    loss_log.csv        step, loss, lr, elapsed_s (what the book plots)

Every file is written atomically (temporary file, then ``os.replace``), so an interrupted
run never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ccad_tutorial import accel
from ccad_tutorial.coreset import CoarseFeatureBank
from ccad_tutorial.datasets import DataError, list_categories, load_split
from ccad_tutorial.features import FeatureExtractor
from ccad_tutorial.model import CCAD, build_vae
from ccad_tutorial.modes import resolve_device
from ccad_tutorial.presets import CCADConfig, make_config, multiclass_overrides


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------- the bank and the VAE
def build_bank(
    train_images: torch.Tensor, cfg: CCADConfig, groups: list[int] | None = None
) -> tuple[CoarseFeatureBank, FeatureExtractor]:
    """CFB from training normals (N, 3, H, W): frozen features, then the greedy coreset.

    ``groups`` (image counts per category, in order) with ``cfg.balanced_bank``: one coreset
    per category, concatenated (indices still count in the pooled images' features).
    Returns the bank and the (calibrated) extractor that produced it.
    """
    extractor = FeatureExtractor(
        backbone=cfg.backbone,
        layers=cfg.feature_layers,
        pool=cfg.pool,
        pretrained=cfg.pretrained_backbone,
    )
    if not cfg.pretrained_backbone:  # random init: re-estimate BatchNorm statistics
        extractor.calibrate(train_images)
    feats = extractor.extract(train_images)  # (N, D) or (N, D, h, w)
    per_image = feats[0, 0].numel() if feats.dim() == 4 else 1  # bank points per image
    if feats.dim() == 4:  # pool="patch": every position is a point of the bank
        feats = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    if not (cfg.balanced_bank and groups and len(groups) > 1):
        bank = CoarseFeatureBank.build(feats, ratio=cfg.xi, min_size=cfg.min_bank, seed=cfg.seed)
        return bank, extractor
    parts, start = [], 0
    for count in groups:
        stop = start + count * per_image
        part = CoarseFeatureBank.build(
            feats[start:stop], ratio=cfg.xi, min_size=cfg.min_bank, seed=cfg.seed
        )
        parts.append((part, start))
        start = stop
    bank = CoarseFeatureBank(
        torch.cat([p.features for p, _ in parts]),
        torch.cat([p.indices + offset for p, offset in parts]),
        sum(len(p) for p, _ in parts) / len(feats),
        max(p.radius for p, _ in parts),
        len(feats),
    )
    return bank, extractor


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


# ---------------------------------------------------------------------- run directory
def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename tmp_path to path (os.replace is atomic).

    Under ``accelerate launch`` only the main process writes (the others hold the same)."""
    if not accel.is_main_process():
        return
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(out: Path, model: CCAD, trainer: dict, log: list) -> None:
    """model.safetensors (+ ema.safetensors), trainer_state.pt and loss_log.csv, atomically."""
    if not accel.is_main_process():
        return
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda p: save_file(weights, str(p)))
    ema = trainer.pop("ema", {})
    if ema:
        ema_cpu = {k: v.cpu().contiguous() for k, v in ema.items()}
        atomic_write(out / "ema.safetensors", lambda p: save_file(ema_cpu, str(p)))
    atomic_write(out / "trainer_state.pt", lambda p: torch.save(trainer, p))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "loss", "lr", "elapsed_s"])
    writer.writerows(log)
    atomic_write(out / "loss_log.csv", lambda p: p.write_text(buf.getvalue()))


def read_loss_log(out: Path, up_to_step: int) -> list:
    """Rows (step, loss, lr, elapsed_s) of loss_log.csv with step <= up_to_step."""
    path = out / "loss_log.csv"
    if up_to_step == 0 or not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [
        (int(r["step"]), float(r["loss"]), float(r["lr"]), float(r["elapsed_s"]))
        for r in rows
        if int(r["step"]) <= up_to_step
    ]


def loss_curve(run: str | os.PathLike, points: int = 20) -> tuple[list[int], list[float]]:
    """The training loss of a run folder as ``points`` window means: (steps, losses).

    Each point is the mean loss of one window of consecutive steps, plotted at the window's
    last step (a single step's loss is mostly the noise of its random timesteps).
    """
    rows = read_loss_log(Path(run), up_to_step=2**62)  # every row
    if not rows:
        raise FileNotFoundError(f"{Path(run) / 'loss_log.csv'}: no loss log (is it a run folder?)")
    window = max(1, len(rows) // points)
    ends = range(window - 1, len(rows), window)
    losses = [sum(r[1] for r in rows[i - window + 1 : i + 1]) / window for i in ends]
    return [rows[i][0] for i in ends], losses


def write_config(out: Path, cfg: CCADConfig) -> None:
    atomic_write(out / "config.json", lambda p: p.write_text(json.dumps(cfg.to_dict(), indent=2)))


def read_config(run: Path) -> CCADConfig:
    """The run's CCADConfig; a folder without config.json is not a run."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{run} is not a CCAD run (no config.json); train one with "
            f"`ccad-tutorial train --data DIR --category CAT --out {run}`."
        )
    try:
        return CCADConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path} is not a valid CCAD config ({err}); re-train the run.") from err


def _load_safetensors(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path} is missing; the run in {path.parent} is incomplete, re-train it.")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError on truncation
        raise ValueError(
            f"{path} is corrupt or truncated ({err}); restore it or re-train the run."
        ) from err


def load_run(
    run: str | os.PathLike, device: str = "auto", use_ema: bool = True
) -> tuple[CCAD, CCADConfig]:
    """Rebuild a trained CCAD from its run directory -> (model in eval mode, cfg).

    ``use_ema``: load ema.safetensors over the trainable weights when the run has one.
    """
    run = Path(run)
    cfg = read_config(run)
    if not (run / "model.safetensors").is_file():
        raise ValueError(
            f"{run} has no checkpoint (model.safetensors) yet; train it or resume training."
        )
    bank = CoarseFeatureBank.load(run / "bank.safetensors")
    model = build_model(cfg, bank.features, entry_labels(bank, cfg.extra.get("train_counts")))
    weights = _load_safetensors(run / "model.safetensors")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(
            f"{run / 'model.safetensors'} does not match config.json ({err})."
        ) from err
    if use_ema and (run / "ema.safetensors").is_file():
        model.load_state_dict(_load_safetensors(run / "ema.safetensors"), strict=False)
    return model.to(resolve_device(device)).eval(), cfg


def build_model(
    cfg: CCADConfig, bank: torch.Tensor, bank_labels: torch.Tensor | None = None
) -> CCAD:
    """An untrained CCAD with the architecture recorded in cfg.extra (UNet/VAE configs)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = vae = None
    if "unet_config" in cfg.extra:
        unet = UNet2DConditionModel.from_config(cfg.extra["unet_config"])
    if "vae_config" in cfg.extra and cfg.latent:
        vae = AutoencoderKL.from_config(cfg.extra["vae_config"])
    return CCAD(cfg, bank, unet=unet, vae=vae, bank_labels=bank_labels)


def load_trainer_state(run: Path) -> dict:
    """trainer_state.pt through torch.load(weights_only=True): tensors and plain containers only."""
    path = run / "trainer_state.pt"
    if not path.is_file():
        raise ValueError(
            f"{run} has no trainer_state.pt to resume from; train it again without --resume."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is corrupt or truncated ({err}); resume is impossible.") from err


# ---------------------------------------------------------------------- the two CLI commands
def train_run(
    data: str | os.PathLike,
    category: str,
    out: str | os.PathLike,
    variant: str = "F",
    preset: str = "tiny",
    layout: str = "mvtec",
    steps: int | None = None,
    pretrained: str | None = None,
    resume: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    progress: bool = True,
    device: str = "auto",
    vae_cache: str | os.PathLike | None = None,
    **overrides,
) -> dict:
    """``ccad-tutorial train``: build the bank, (stage 1 VAE), train, checkpoint. Returns a summary.

    Without ``steps`` the preset's default budget applies. ``resume`` continues the run in
    ``out`` at its saved step; ``overrides`` set any other CCADConfig field. ``vae_cache``
    (a folder) shares the stage-1 VAE between runs with the same data, category, seed and VAE
    settings (variants C, F and uncond then start from the identical autoencoder).

    ``category`` may join several with ``+`` (``"brick+grass"``): ONE model for all of them
    (DiAD's unified, multi-class setting), trained on their pooled normals, with one bank
    selected from all their features (``bank_categories`` says which category each bank
    entry came from). A conditioned variant then takes ``presets.MULTICLASS_DEFAULTS`` for
    every field not in ``overrides`` (bank mode, condition dropout, guidance scale).
    Evaluate it per category.
    """
    out = Path(out)
    categories = split_categories(category)
    for name in categories:
        _check_category(data, layout, name)
    if resume:
        cfg, model, state = _resume(out, variant, preset, str(accel.training_device(device)))
        if steps is not None:
            cfg.steps = steps
        if progress:  # the CLI says it; a chapter that trains in stages stays quiet
            print(f"Resumed from {out} at step {state['step']}")
    else:
        if (out / "config.json").exists():
            raise ValueError(
                f"{out} already holds a CCAD run; pass --resume to continue it or choose another --out."
            )
        accel.wait_for_everyone()  # every process checked before the main one writes
        sizes = {"image_size": image_size} if image_size else {}
        if len(categories) > 1:  # one model for all: the multi-class defaults fill the gaps
            overrides = multiclass_overrides(variant, overrides)
        cfg = make_config(preset, variant, seed=seed, **sizes, **overrides)
        accel.autocast_dtype(cfg.mixed_precision, accel.training_device(device))  # fp16 on CPU?
        if steps is not None:
            cfg.steps = steps
        state = None
    parts = [load_split(data, layout, c, "train", cfg.image_size).images for c in categories]
    images = torch.cat(parts)
    times = dict(cfg.extra.get("times", {}))
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        if len(categories) > 1:  # before the bank: _new_model writes config.json
            cfg.extra["train_counts"] = {c: len(p) for c, p in zip(categories, parts, strict=True)}
        model = _new_model(cfg, images, out, pretrained, times, progress, vae_cache, data, category)
        model.to(accel.training_device(device))
    cfg.extra.update(train_args={"data": str(data), "category": category, "layout": layout})
    summary = fit(model, images, out, state["step"] if state else 0, state, progress)
    times["train_s"] = summary["train_s"]
    cfg.extra["times"] = times
    write_config(out, cfg)
    return {
        "run": str(out),
        "variant": cfg.variant,
        "preset": cfg.preset,
        **summary,
        "times": times,
    }


def _new_model(
    cfg: CCADConfig,
    images,
    out: Path,
    pretrained,
    times: dict,
    progress: bool,
    vae_cache,
    data,
    category,
) -> CCAD:
    """Bank (training images only), stage-1 VAE if needed, the CCAD model; writes the run files."""
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    groups = list(cfg.extra.get("train_counts", {}).values()) or None
    bank, extractor = build_bank(images, cfg, groups)
    if accel.is_main_process():
        bank.save(out / "bank.safetensors")
    times["bank_s"] = round(time.perf_counter() - t0, 2)
    labels = entry_labels(bank, cfg.extra.get("train_counts"))
    if pretrained is not None:
        model = CCAD.from_pretrained(pretrained, cfg, bank.features)
        model.bank_labels = labels
    else:
        vae = None
        if cfg.latent and cfg.vae_steps > 0:
            t0 = time.perf_counter()
            vae = _cached_vae(images, cfg, progress, vae_cache, data, category)
            atomic_write(out / "vae.safetensors", lambda p: save_file(vae.state_dict(), str(p)))
            times["vae_s"] = round(time.perf_counter() - t0, 2)
        model = CCAD(cfg, bank.features, vae=vae, bank_labels=labels)
    if model.extractor is not None:  # retrieval must use the features the bank was built with
        model.extractor.load_state_dict(extractor.state_dict())
    cfg.extra["unet_config"] = dict(model.unet.config)
    if model.vae is not None:
        cfg.extra["vae_config"] = dict(model.vae.config)
    if cfg.score_mode == "feature" and not cfg.score_pretrained:
        model.scorer.calibrate(images)
    write_config(out, cfg)
    return model


VAE_FIELDS = (
    "image_size", "crop_size", "batch_size", "latent_channels", "vae_block_out_channels",
    "vae_layers_per_block", "vae_steps", "vae_kl_weight", "vae_lr", "seed",
)  # fmt: skip


def _cached_vae(images, cfg: CCADConfig, progress: bool, cache, data, category):
    """train_vae, or the VAE an earlier run trained with the same data and VAE settings."""
    if cache is None:
        return train_vae(images, cfg, progress)
    key = {name: getattr(cfg, name) for name in VAE_FIELDS}
    key.update(data=str(Path(data).resolve()), category=category)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    weights = Path(cache) / f"vae-{category}-{digest}.safetensors"
    meta = weights.with_suffix(".json")
    if weights.is_file() and meta.is_file():
        vae = build_vae(cfg)
        vae.load_state_dict(_load_safetensors(weights))
        vae.requires_grad_(False).eval()
        cfg.scaling_factor = json.loads(meta.read_text())["scaling_factor"]
        return vae
    vae = train_vae(images, cfg, progress)
    weights.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(weights, lambda p: save_file(vae.state_dict(), str(p)))
    text = json.dumps({"scaling_factor": cfg.scaling_factor, **key}, indent=2)
    atomic_write(meta, lambda p: p.write_text(text))  # written last: marks the pair complete
    return vae


def _resume(out: Path, variant: str, preset: str, device: str):
    """(cfg, model with the last weights, trainer state) of an existing run; checks it matches."""
    cfg = read_config(out)
    if (cfg.variant, cfg.preset) != (variant, preset):
        raise ValueError(
            f"Cannot resume {out}: it was trained as variant {cfg.variant!r} with preset "
            f"{cfg.preset!r}, but this call asks for variant {variant!r} with preset {preset!r}; "
            f"pass --variant {cfg.variant} --preset {cfg.preset} or choose another --out."
        )
    state = load_trainer_state(out)
    model, cfg = load_run(out, device=device, use_ema=False)
    if cfg.ema_decay is not None and (out / "ema.safetensors").is_file():
        state["ema"] = _load_safetensors(out / "ema.safetensors")
    return cfg, model, state


def split_categories(category: str) -> list[str]:
    """``"brick+grass"`` -> ``["brick", "grass"]`` (one category -> a list of one)."""
    names = [c.strip() for c in str(category).split("+")]
    if not all(names) or len(set(names)) != len(names):
        raise DataError(
            f"--category {category!r}: join distinct category names with '+', e.g. brick+grass."
        )
    return names


def entry_labels(bank: CoarseFeatureBank, counts: dict | None) -> torch.Tensor:
    """(M,) long: the index (in ``counts`` order) of the category each bank entry came from.

    ``counts`` ({category: number of training images}, in training order) maps an entry's
    source index to its image, hence its category; None (one category): all zeros.
    """
    if not counts:
        return torch.zeros(len(bank), dtype=torch.long)
    per_image = torch.repeat_interleave(
        torch.arange(len(counts)), torch.tensor(list(counts.values()))
    )
    per_entry = max(1, bank.source_count // len(per_image))  # patch banks: h*w entries per image
    return per_image[bank.indices.long() // per_entry]


def bank_categories(run: str | os.PathLike) -> list[str]:
    """The training category of each entry of a run's bank (in bank order).

    A single-category run returns its category for every entry; a unified run (``+``)
    maps each entry's source index through the per-category counts of its training set.
    """
    run = Path(run)
    cfg = read_config(run)
    bank = CoarseFeatureBank.load(run / "bank.safetensors")
    counts = cfg.extra.get("train_counts")
    if not counts:
        return [cfg.extra["train_args"]["category"]] * len(bank)
    names = list(counts)
    return [names[int(i)] for i in entry_labels(bank, counts)]


def _check_category(data, layout: str, category: str) -> None:
    """Fail early (before anything is written) when the category is not in the data."""
    if not Path(data).is_dir():
        raise DataError(f"--data {data} is not a folder; point it at an MVTec-layout data set.")
    found = list_categories(data, layout)
    if category not in found:
        raise DataError(
            f"Category {category!r} is not in {data} (layout {layout!r}); found {found}. "
            "Pick one of those with --category."
        )


@torch.no_grad()
def evaluate_run(
    run: str | os.PathLike,
    data: str | os.PathLike,
    category: str,
    layout: str = "mvtec",
    json_out: str | os.PathLike | None = None,
    grid_png: str | os.PathLike | None = None,
    noise_seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    **inference,
) -> dict:
    """``ccad-tutorial evaluate``: reconstruct the test split, score it, compute the metrics.

    ``inference`` overrides fields read at inference (``presets.INFERENCE_FIELDS``, e.g.
    guidance_scale=2) for this evaluation only. Returns {"image_auroc", "pixel_auroc",
    "aupro", "f1_max", ..., "per_defect", "eval_s", "n_test"}.
    """
    from ccad_tutorial.metrics import evaluate, per_defect_type

    model, cfg = load_run(run, device=device)
    set_inference_fields(cfg, inference)
    _check_category(data, layout, category)
    test = load_split(data, layout, category, "test", cfg.image_size)
    t0 = time.perf_counter()
    recons = model.reconstruct(test.images, noise_seed=noise_seed, progress=progress)
    maps, scores = model.anomaly_maps(test.images, recons)
    result = evaluate(test.labels, scores, test.masks, maps)
    result = {k: float(v) for k, v in result.items()}
    result["per_defect"] = per_defect_type(test.labels, scores, test.defect_types, test.masks, maps)
    result.update(
        eval_s=round(time.perf_counter() - t0, 2),
        n_test=len(test.labels),
        variant=cfg.variant,
        preset=cfg.preset,
        category=category,
        steps=cfg.steps,
    )
    if json_out is not None:
        text = json.dumps(result, indent=2)
        atomic_write(Path(json_out), lambda p: p.write_text(text))
    if grid_png is not None:
        save_grid(grid_png, test.images, recons, maps, test.masks)
    return result


def set_inference_fields(cfg: CCADConfig, values: dict, what: str = "an evaluation") -> None:
    """Set fields read at inference (t_start, guidance_scale, ...) on a loaded run's cfg;
    anything else would not match the trained weights and is refused, naming ``what`` asked."""
    from ccad_tutorial.presets import INFERENCE_FIELDS

    for key, value in values.items():
        if key not in INFERENCE_FIELDS:
            raise ValueError(
                f"{what} may set only {INFERENCE_FIELDS} (read at inference), not {key!r}: "
                "it is fixed when a run is trained."
            )
        setattr(cfg, key, value)
    CCADConfig.__post_init__(cfg)  # the same checks as a new config (e.g. guidance needs dropout)


def save_grid(path, images, recons, maps, masks, n: int = 6) -> None:
    """PNG grid, one row per image: input / reconstruction / anomaly map / ground truth."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays untouched

    order = torch.cat(
        [torch.nonzero(masks.flatten(1).amax(1) > 0).flatten(), torch.arange(len(images))]
    )
    rows = list(dict.fromkeys(order.tolist()))[:n]
    fig = Figure(figsize=(8, 2 * len(rows)))
    axes = fig.subplots(len(rows), 4, squeeze=False)
    for r, i in enumerate(rows):
        panels = [images[i].permute(1, 2, 0), recons[i].permute(1, 2, 0), maps[i, 0], masks[i, 0]]
        for ax, img, title in zip(
            axes[r], panels, ("input", "reconstruction", "anomaly map", "ground truth"), strict=True
        ):
            ax.imshow(img.numpy(), cmap=None if img.dim() == 3 else "magma")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title)
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=80))
