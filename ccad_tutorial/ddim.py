"""DDIM: the one sampler of the package, from any timestep back towards x_0.

``ddim_timesteps`` makes the schedule (a stride that fits ``n_steps``, starting exactly at
``t_start``, with chapter 2's ending at x_0 or CCAD's truncated one) and ``ddim_loop``
walks it with any noise predictor. ``CCAD.ddim`` and ``CCAD.denoise`` (sampling.py) call
these two; ``denoise`` and ``sample`` run them with chapter 2's small UNet (ddpm.py), and
reconstruction.py noises an image part of the way and denoises it back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor

from ccad_tutorial.ddpm import to_image


def ddim_timesteps(
    scheduler: DDPMScheduler,
    t_start: int,
    n_steps: int,
    to_zero: bool = True,
    clip_sample: bool | None = None,
) -> tuple[DDIMScheduler, Tensor]:
    """A DDIM scheduler and at most ``n_steps`` timesteps t_start, t_start - s, ...

    The one DDIM schedule of the package: chapter 2's sampler and ``CCAD.ddim``.
    diffusers' ``DDIMScheduler.step`` goes from t to t - T // num_inference_steps,
    so we pick num_inference_steps to give the stride s we want and then set the
    timesteps ourselves, starting exactly at t_start. ``to_zero`` picks the ending:

    * True (chapter 2): the timesteps run down to the last one >= 0. Its step
      lands below 0, where ``set_alpha_to_one`` makes alpha-bar 1: the output
      is the model's estimate of x_0.
    * False (CCAD): the timesteps stop at the last one > 0, so step 0 is never
      denoised from (none at all for t_start = 0). The last step lands at
      alpha-bar_0 (``alphas_cumprod[0]``, what ``set_alpha_to_one=False`` uses
      below 0): the output is x at the noise level of timestep 0.

    The stride is the smallest that fits the timesteps into ``n_steps`` (rounded up
    to one that ``step`` can take), so with the same t_start and n_steps the two
    endings can differ in stride as well: 400 in 10 steps goes 400, 359, ..., 31 to
    0 and 400, 360, ..., 40 truncated.

    ``clip_sample``: clip the x_0 estimate of every step to [-1, 1]; None keeps
    the setting of ``scheduler``'s config (``DDPMScheduler``'s default: True).
    """
    T = scheduler.config.num_train_timesteps
    if not 0 <= t_start < T:
        raise ValueError(f"t_start must lie in [0, {T - 1}], got {t_start}.")
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}.")
    stop = -1 if to_zero else 0  # the (excluded) end of the timesteps
    clip = {} if clip_sample is None else {"clip_sample": clip_sample}
    ddim = DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=to_zero, **clip)
    ddim.set_timesteps(T // max(1, math.ceil((t_start - stop) / n_steps)))
    stride = T // ddim.num_inference_steps  # the stride step() will use
    ddim.timesteps = torch.arange(t_start, stop, -stride)
    return ddim, ddim.timesteps


def ddim_loop(
    predict_noise: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    scheduler: DDIMScheduler,
    timesteps: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDIM from x (B, C, h, w) at timesteps[0], one ``step`` per timestep.

    ``predict_noise(x_t, t)`` returns eps (B, C, h, w) for x_t at timesteps t (B,)
    long: a UNet's noise, or CCAD's guided one. ``scheduler`` and ``timesteps``
    come from ``ddim_timesteps``, whose ending decides where the walk stops.
    eta = 0 is deterministic; eta > 0 adds fresh noise in every step, drawn from
    ``generator`` (the global generator when None).
    """
    for t in timesteps:
        t_batch = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
        eps = predict_noise(x, t_batch)
        step = scheduler.step(eps, int(t), x, eta=eta, generator=generator)
        x = step.prev_sample
    return x


@torch.no_grad()
def denoise(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    x_t: Tensor,
    t_start: int,
    n_steps: int = 10,
) -> Tensor:
    """Run DDIM (eta = 0) from x_t (B, 3, H, W) at timestep t_start down to x_0
    (model space): ``ddim_timesteps`` to 0, then ``ddim_loop`` with the UNet."""
    ddim, timesteps = ddim_timesteps(scheduler, t_start, n_steps)
    return ddim_loop(lambda x, t: unet(x, t).sample, x_t, ddim, timesteps)


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
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, 3, size, size), generator=generator)
    t_last = scheduler.config.num_train_timesteps - 1
    return to_image(denoise(unet, scheduler, noise.to(device), t_last, n_steps)).cpu()
