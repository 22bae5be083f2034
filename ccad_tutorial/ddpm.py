"""A small pixel-space DDPM: noise schedules, epsilon prediction, DDIM and reconstruction.

Chapter 2 of the book. diffusers supplies the parts:

* ``DDPMScheduler``: the betas, ``alphas_cumprod`` (alpha-bar) and ``add_noise`` (the
  forward process q(x_t | x_0));
* ``UNet2DModel``: the denoiser eps_theta(x_t, t), a plain ``nn.Module``;
* ``DDIMScheduler``: the deterministic sampler that walks x_t back to x_0.

This module holds what the book teaches on top of them: the training loop (epsilon MSE), the
held-out loss per timestep, sampling, and *reconstruction from partial noise* (noise an image
to ``t_start``, denoise it back), the idea behind reconstruction-based anomaly detection and
CCAD's ``t_start``. Images enter and leave in [0, 1]; the model works in [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor
from tqdm.auto import tqdm

# diffusers' names for the three schedules the chapter compares
SCHEDULES = {
    "scaled_linear": {  # Stable Diffusion, and CCAD: linear in sqrt(beta)
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
    },
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},  # DDPM
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},  # improved DDPM
}


@dataclass
class DDPMConfig:
    """Everything one small DDPM run needs (fast preset: two CPU cores, about a minute)."""

    block_out_channels: tuple[int, ...] = (16, 32, 64)  # UNet widths, one level per entry
    layers_per_block: int = 1
    attention: bool = False  # self-attention at the lowest resolution (full preset)
    norm_num_groups: int = 8
    schedule: str = "scaled_linear"  # a key of SCHEDULES
    num_train_timesteps: int = 1000
    steps: int = 300  # optimiser steps
    batch_size: int = 8
    crop_size: int = 32  # train on random crops (+ flips); the UNet is convolutional
    lr: float = 2e-3
    seed: int = 0


FAST = DDPMConfig()
FULL = DDPMConfig(
    block_out_channels=(64, 128, 256, 256),
    layers_per_block=2,
    attention=True,
    norm_num_groups=32,
    steps=4000,
    batch_size=32,
    crop_size=64,
    lr=3e-4,
)


def make_scheduler(
    schedule: str = "scaled_linear", num_train_timesteps: int = 1000
) -> DDPMScheduler:
    """diffusers' ``DDPMScheduler`` with one of the SCHEDULES ("scaled_linear", "linear", "cosine")."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}.")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, **SCHEDULES[schedule])


def build_unet(cfg: DDPMConfig) -> UNet2DModel:
    """The denoiser eps_theta: (B, 3, H, W) x_t and (B,) timesteps -> (B, 3, H, W) noise.

    H and W must be multiples of 2 ** (len(block_out_channels) - 1).
    """
    levels = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * levels
    if cfg.attention:
        down[-1] = "AttnDownBlock2D"
    up = [block.replace("Down", "Up") for block in reversed(down)]
    return UNet2DModel(
        sample_size=cfg.crop_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=cfg.block_out_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
    )


def to_model(images: Tensor) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] -> the model's range [-1, 1]."""
    return images * 2 - 1


def to_image(x: Tensor) -> Tensor:
    """Model space (B, 3, H, W) in [-1, 1] (or beyond) -> images in [0, 1], clipped."""
    return ((x + 1) / 2).clamp(0, 1)


def random_crops(images: Tensor, n: int, size: int, generator: torch.Generator) -> Tensor:
    """n random (size x size) crops of random rows of images (N, C, H, W), randomly h-flipped.

    Mirrors torchvision's RandomCrop + RandomHorizontalFlip, drawn per crop. Returns
    (n, C, size, size).
    """
    _, _, h, w = images.shape
    if size > min(h, w):
        raise ValueError(f"crop_size {size} is larger than the images ({h} x {w}).")
    rows = torch.randint(0, len(images), (n,), generator=generator)
    tops = torch.randint(0, h - size + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - size + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    crops = [
        images[r, :, t : t + size, left : left + size]
        for r, t, left in zip(rows.tolist(), tops.tolist(), lefts.tolist(), strict=True)
    ]
    crops = [c.flip(-1) if f else c for c, f in zip(crops, flips.tolist(), strict=True)]
    return torch.stack(crops)


def diffusion_loss(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x0: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """The simple DDPM loss ||eps - eps_theta(x_t, t)||^2 for clean x0 (B, 3, H, W)
    in [-1, 1].

    One uniform t ~ U{0, T-1} and one eps ~ N(0, I) per image; x_t from
    ``add_noise``. Returns the scalar mean squared error.
    """
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (len(x0),), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t, noise = t.to(x0.device), noise.to(x0)
    x_t = scheduler.add_noise(x0, noise, t)
    return F.mse_loss(unet(x_t, t).sample, noise)


def train_ddpm(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: Tensor,
    cfg: DDPMConfig,
    progress: bool = False,
) -> list[float]:
    """Train ``unet`` to predict the noise on random crops of normal images (N, 3, H, W) in [0, 1].

    AdamW with a constant learning rate, one crop batch per step, everything drawn from a
    generator seeded by ``cfg.seed``. Returns the training loss of every step (cfg.steps,).
    """
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    unet.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="train", disable=not progress):
        crops = random_crops(images, cfg.batch_size, cfg.crop_size, generator)
        loss = diffusion_loss(unet, scheduler, to_model(crops).to(device), generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    unet.eval()
    return losses


@torch.no_grad()
def loss_per_timestep(
    unet: UNet2DModel, scheduler: DDPMScheduler, images: Tensor, timesteps: list[int], seed: int = 0
) -> Tensor:
    """Held-out epsilon MSE at each of ``timesteps`` on images (B, 3, H, W) in [0, 1].

    Same noise for every timestep (drawn from ``seed``), so numbers before and after training
    compare. Returns (len(timesteps),).
    """
    device = next(unet.parameters()).device
    x0 = to_model(images).to(device)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0)
    out = []
    for t in timesteps:
        t_batch = torch.full((len(x0),), t, device=device, dtype=torch.long)
        x_t = scheduler.add_noise(x0, noise, t_batch)
        out.append(F.mse_loss(unet(x_t, t_batch).sample, noise).item())
    return torch.tensor(out)


def ddim_timesteps(
    scheduler: DDPMScheduler, t_start: int, n_steps: int
) -> tuple[DDIMScheduler, Tensor]:
    """A DDIM scheduler and at most ``n_steps`` timesteps t_start, t_start - s, ...

    diffusers' ``DDIMScheduler.step`` goes from t to t - T // num_inference_steps,
    so we pick num_inference_steps to give the stride s we want and then set the
    timesteps ourselves, starting exactly at t_start. The last step lands below 0,
    where ``set_alpha_to_one`` makes alpha-bar 1: the output is the model's
    estimate of x_0.
    """
    T = scheduler.config.num_train_timesteps
    if not 0 <= t_start < T:
        raise ValueError(f"t_start must lie in [0, {T - 1}], got {t_start}.")
    ddim = DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True)
    ddim.set_timesteps(T // max(1, math.ceil((t_start + 1) / n_steps)))
    stride = T // ddim.num_inference_steps  # the stride step() will use
    ddim.timesteps = torch.arange(t_start, -1, -stride)
    return ddim, ddim.timesteps


@torch.no_grad()
def denoise(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x_t: Tensor,
    t_start: int,
    n_steps: int = 10,
) -> Tensor:
    """Run DDIM (eta = 0) from x_t (B, 3, H, W) at timestep t_start down to x_0
    (model space)."""
    ddim, timesteps = ddim_timesteps(scheduler, t_start, n_steps)
    x = x_t
    for t in timesteps:
        t_batch = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
        eps = unet(x, t_batch).sample
        x = ddim.step(eps, int(t), x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def reconstruct(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: Tensor,
    t_start: int,
    n_steps: int = 10,
    seed: int = 0,
) -> Tensor:
    """Noise images (B, 3, H, W) in [0, 1] to t_start, denoise back with DDIM:
    (B, 3, H, W).

    x_{t_start} = sqrt(abar) x_0 + sqrt(1 - abar) eps with eps drawn from ``seed``
    (the same eps for every t_start, so reconstructions at different t_start
    compare).
    """
    device = next(unet.parameters()).device
    x0 = to_model(images).to(device)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.full((len(x0),), t_start, device=device, dtype=torch.long)
    x_t = scheduler.add_noise(x0, noise, t)
    return to_image(denoise(unet, scheduler, x_t, t_start, n_steps)).cpu()


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    n: int,
    size: int,
    n_steps: int = 20,
    seed: int = 0,
) -> Tensor:
    """n new images (n, 3, size, size) in [0, 1]: DDIM from pure noise at t = T - 1."""
    device = next(unet.parameters()).device
    noise = torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(seed))
    t_last = scheduler.config.num_train_timesteps - 1
    return to_image(denoise(unet, scheduler, noise.to(device), t_last, n_steps)).cpu()


@torch.no_grad()
def predict_x0(unet: UNet2DModel, scheduler: DDPMScheduler, x_t: Tensor, t: Tensor) -> Tensor:
    """The model's one-shot guess of x_0 from x_t (B, 3, H, W) at timesteps t (B,), model space.

    x0_hat = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t): the
    ``pred_original_sample`` that ``DDIMScheduler.step`` computes on its way.
    """
    abar = scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1)
    eps = unet(x_t, t.to(x_t.device)).sample
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def noising_frames(
    scheduler: DDPMScheduler,
    image: Tensor,
    timesteps: list[int],
    seed: int = 0,
    unet: UNet2DModel | None = None,
) -> tuple[Tensor, Tensor | None]:
    """x_t of one image (3, H, W) in [0, 1] at each of ``timesteps``, with one eps for all.

    Returns (x_t, x0_hat): x_t (K, 3, H, W) in [0, 1] (clipped for display), K =
    len(timesteps); x0_hat the same shape, the model's ``predict_x0`` at each frame, or None
    when no ``unet`` is given.
    """
    device = image.device if unet is None else next(unet.parameters()).device
    t = torch.as_tensor(timesteps, dtype=torch.long, device=device)
    x0 = to_model(image.to(device))[None].expand(len(t), -1, -1, -1)
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(seed)).to(x0)
    x_t = scheduler.add_noise(x0, noise[None].expand_as(x0), t)
    x0_hat = None if unet is None else to_image(predict_x0(unet, scheduler, x_t, t)).cpu()
    return to_image(x_t).cpu(), x0_hat


def add_defects(
    images: Tensor, seed: int = 0, category: str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Put one MiniTex-AD defect on each clean image (B, 3, H, W) in [0, 1].

    Defect types cycle through ``minitex.DEFECT_TYPES``. Returns (clean, defective, masks):
    clean (B, 3, H, W) quantised to 8 bits like the defective copy, defective (B, 3, H, W),
    masks (B, 1, H, W) in {0, 1}. Outside the mask, clean and defective are identical.
    """
    from ccad_tutorial.minitex import DEFECT_TYPES, apply_defect

    rng = np.random.default_rng(seed)
    clean = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pairs = [
        apply_defect(img, DEFECT_TYPES[i % len(DEFECT_TYPES)], rng, category=category)
        for i, img in enumerate(clean)
    ]
    defective = np.stack([p[0] for p in pairs])
    masks = np.stack([p[1] for p in pairs])[:, None]
    as_float = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return as_float(clean), as_float(defective), torch.from_numpy(masks).float()


def masked_mse(recons: Tensor, clean: Tensor, masks: Tensor) -> tuple[float, float]:
    """Mean squared error against the clean images, inside and outside the defect masks.

    recons, clean: (B, 3, H, W) in [0, 1]; masks: (B, 1, H, W) in {0, 1}. Pixels of all images
    are pooled. Returns (mse inside, mse outside).
    """
    err = ((recons - clean) ** 2).mean(1, keepdim=True)  # (B, 1, H, W)
    inside = masks > 0.5
    return float(err[inside].mean()), float(err[~inside].mean())


def _ratio(a: float, b: float) -> float:
    """a / b, inf for a > 0 = b (exact outside the defects), nan for 0 / 0."""
    if b > 0:
        return a / b
    return float("inf") if a > 0 else float("nan")


def reconstruction_errors(
    recons: Tensor, clean: Tensor, defective: Tensor, masks: Tensor
) -> dict[str, float]:
    """What a reconstruction of defective images removed, and what it lost.

    recons, clean, defective: (B, 3, H, W) in [0, 1]; masks: (B, 1, H, W) in {0, 1}.
    Returns ``inside`` / ``outside``: MSE to the defect-free original inside and outside the
    defects; ``excess``: inside - outside (what is left of the defects); ``contrast``: MSE
    to the *input* inside over outside (what an anomaly map sees); ``pixel_auroc`` of the
    plain pixel-L1 map |recon - input|; ``colour_error``: the largest channel difference
    between the mean colours of the reconstructions and of the originals.
    """
    from ccad_tutorial import metrics

    inside, outside = masked_mse(recons, clean, masks)  # against the defect-free original
    map_inside, map_outside = masked_mse(recons, defective, masks)  # against the input
    anomaly_map = (recons - defective).abs().mean(1, keepdim=True)  # (B, 1, H, W)
    colour = (recons.mean((0, 2, 3)) - clean.mean((0, 2, 3))).abs().max()
    return {
        "inside": inside,
        "outside": outside,
        "excess": inside - outside,
        "contrast": _ratio(map_inside, map_outside),
        "pixel_auroc": metrics.pixel_auroc(masks, anomaly_map),
        "colour_error": float(colour),
    }


@torch.no_grad()
def vae_round_trip(vae, images: Tensor, scaling_factor: float = 1.0) -> tuple[Tensor, Tensor]:
    """Encode images (B, 3, H, W) in [0, 1] with a diffusers ``AutoencoderKL`` and decode.

    As ``CCAD.encode`` / ``CCAD.decode``: the latent is the posterior's mode times
    ``scaling_factor``, the decoder reads it divided by the same factor. Returns (latents
    (B, C, H/f, W/f), decoded images (B, 3, H, W) in [0, 1]).
    """
    x = to_model(images).to(next(vae.parameters()).device)
    latents = vae.encode(x).latent_dist.mode() * scaling_factor
    decoded = vae.decode(latents / scaling_factor).sample
    return latents.cpu(), to_image(decoded).cpu()
