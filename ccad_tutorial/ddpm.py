"""A small pixel-space DDPM: noise schedules, epsilon prediction and its training.

Chapter 2 of the book. diffusers supplies the parts:

* ``DDPMScheduler``: the betas, ``alphas_cumprod`` (alpha-bar) and ``add_noise`` (the
  forward process q(x_t | x_0));
* ``UNet2DModel``: the denoiser eps_theta(x_t, t), a plain ``nn.Module``;
* ``DDIMScheduler``: the deterministic sampler that walks x_t back to x_0.

This module holds what the book teaches on top of them: the training loop (epsilon MSE), the
held-out loss per timestep, the model's one-shot guess of x_0 and the frames of the forward
process, and the round trip through a VAE. DDIM (the sampler CCAD uses too) is in ddim.py,
*reconstruction from partial noise* (noise an image to ``t_start``, denoise it back) and
its errors in reconstruction.py. Images enter and leave in [0, 1]; the model works in
[-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
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
    """diffusers' ``DDPMScheduler`` with one of the SCHEDULES.

    ``schedule``: "scaled_linear", "linear" or "cosine".
    """
    if schedule not in SCHEDULES:
        choices = list(SCHEDULES)
        raise ValueError(f"schedule must be one of {choices}, got {schedule!r}.")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, **SCHEDULES[schedule])


def build_unet(cfg: DDPMConfig) -> UNet2DModel:
    """The denoiser eps_theta: x_t (B, 3, H, W), timesteps (B,) -> noise (B, 3, H, W).

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


def random_crops(
    images: Tensor,
    n: int,
    size: int,
    generator: torch.Generator,
) -> Tensor:
    """n random (size x size) crops of random rows of images (N, C, H, W), randomly
    flipped left-right.

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
    """Train ``unet`` to predict the noise on random crops of normal images
    (N, 3, H, W) in [0, 1].

    AdamW with a constant learning rate, one crop batch per step, everything drawn
    from a generator seeded by ``cfg.seed``. Returns the training loss of every step
    (cfg.steps,).
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
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    images: Tensor,
    timesteps: list[int],
    seed: int = 0,
) -> Tensor:
    """Held-out epsilon MSE at each of ``timesteps`` on images (B, 3, H, W) in [0, 1].

    Same noise for every timestep (drawn from ``seed``), so numbers before and after
    training compare. Returns (len(timesteps),).
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


@torch.no_grad()
def predict_x0(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x_t: Tensor,
    t: Tensor,
) -> Tensor:
    """The model's one-shot guess of x_0 from x_t (B, 3, H, W) at timesteps t (B,),
    in model space.

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
    """x_t of one image (3, H, W) in [0, 1] at each of ``timesteps``, one eps for all.

    Returns (x_t, x0_hat): x_t (K, 3, H, W) in [0, 1] (clipped for display),
    K = len(timesteps); x0_hat the same shape, the model's ``predict_x0`` at each
    frame, or None when no ``unet`` is given.
    """
    device = image.device if unet is None else next(unet.parameters()).device
    t = torch.as_tensor(timesteps, dtype=torch.long, device=device)
    x0 = to_model(image.to(device))[None].expand(len(t), -1, -1, -1)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(image.shape, generator=generator).to(x0)
    x_t = scheduler.add_noise(x0, noise[None].expand_as(x0), t)
    x0_hat = None
    if unet is not None:
        x0_hat = to_image(predict_x0(unet, scheduler, x_t, t)).cpu()
    return to_image(x_t).cpu(), x0_hat


@torch.no_grad()
def vae_round_trip(
    vae,
    images: Tensor,
    scaling_factor: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Encode images (B, 3, H, W) in [0, 1] with a diffusers ``AutoencoderKL`` and
    decode.

    As ``CCAD.encode`` / ``CCAD.decode``: the latent is the posterior's mode times
    ``scaling_factor``, the decoder reads it divided by the same factor. Returns
    (latents (B, C, H/f, W/f), decoded images (B, 3, H, W) in [0, 1]).
    """
    x = to_model(images).to(next(vae.parameters()).device)
    latents = vae.encode(x).latent_dist.mode() * scaling_factor
    decoded = vae.decode(latents / scaling_factor).sample
    return latents.cpu(), to_image(decoded).cpu()
