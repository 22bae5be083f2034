"""CCAD's sampler: DDIM back from noise, to repaint an input or to draw from a bank.

``SamplingMixin`` holds the methods of ``model.CCAD`` that run chapter 2's DDIM
(``ddim.ddim_timesteps``, ``ddim.ddim_loop``) with the model's own noise prediction
(``CCAD.guided_noise``, model.py) and condition (``CCAD.context``, condition.py):
``reconstruct`` noises the input to ``t_start`` and repaints it as normal, ``generate``
starts from pure noise. CCAD inherits them. ``image_noise`` gives every image of a data
set its own fixed noise.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from torch import Tensor

from ccad_tutorial.ddim import ddim_loop, ddim_timesteps


def image_noise(shape: torch.Size, seed: int, first_index: int) -> Tensor:
    """Gaussian noise (B, C, h, w) where image i of the data set always gets the same draw.

    Each image's noise comes from its own generator seeded by (seed, index), so the
    reconstruction of an image does not depend on the batch it is in.
    """
    draws = [
        torch.randn(
            shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + first_index + i)
        )
        for i in range(shape[0])
    ]
    return torch.stack(draws)


class SamplingMixin:
    """The reconstruction and generation part of ``model.CCAD`` (see the module docstring)."""

    def ddim(
        self, t_start: int | None = None, steps: int | None = None
    ) -> tuple[DDIMScheduler, Tensor]:
        """Chapter 2's ``ddim.ddim_timesteps`` with the truncated ending.

        ``to_zero=False``: at most ``steps`` timesteps from ``t_start`` down to the last
        stride above 0, and the last step lands at alpha-bar_0. ``t_start`` and
        ``steps`` default to cfg's. The input is noised to the FIRST timestep (DiAD
        noises to 999 but starts DDIM at 901). The x0 estimate is clipped to [-1, 1]
        only where that is the data's range (pixels), unless cfg.clip_sample says
        otherwise.
        """
        cfg = self.cfg
        t_start = cfg.t_start if t_start is None else t_start
        steps = cfg.ddim_steps if steps is None else steps
        clip = (not cfg.latent) if cfg.clip_sample is None else cfg.clip_sample
        return ddim_timesteps(
            self.noise_scheduler,
            t_start,
            steps,
            to_zero=False,
            clip_sample=clip,
        )

    def denoise(
        self, x: Tensor, sched: DDIMScheduler, timesteps: Tensor, ctx: Tensor, control
    ) -> Tensor:
        """Chapter 2's ``ddim.ddim_loop`` from x (B, C, h, w) at timesteps[0].

        The noise is ``guided_noise`` (conditioned on ctx, guided by control); eta is
        cfg.eta.
        """

        def predict_noise(x_t: Tensor, t: Tensor) -> Tensor:
            return self.guided_noise(x_t, t, ctx, control)

        return ddim_loop(predict_noise, x, sched, timesteps, eta=self.cfg.eta)

    @torch.no_grad()
    def reconstruct(
        self,
        images: Tensor,
        noise_seed: int = 0,
        batch_size: int = 16,
        bank: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Repaint images (B, 3, H, W) in [0, 1] as normal.

        Encode, noise to t_start, DDIM (``ddim``, ``denoise``) conditioned on the bank,
        decode.

        The noise comes from ``noise_seed`` (fixed at evaluation) and does not depend on
        batch_size. Guided by ``cfg.guidance_scale`` (see ``guided_noise``). Returns
        (B, 3, H, W) in [0, 1].
        """
        from tqdm.auto import tqdm

        device = self.bank.device
        sched, timesteps = self.ddim()
        out = []
        starts = range(0, len(images), batch_size)
        for first in tqdm(starts, disable=not progress, leave=False):
            chunk = images[first : first + batch_size].to(device)
            x0 = self.encode(chunk)
            noise = image_noise(x0.shape, noise_seed, first).to(x0)
            # noise to the FIRST DDIM timestep
            x = sched.add_noise(x0, noise, timesteps[:1])
            ctx = self.context(x.shape[0], bank, self.global_features(chunk))
            out.append(self.decode(self.denoise(x, sched, timesteps, ctx, chunk)).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def generate(self, bank: Tensor, n: int, seed: int = 0, steps: int = 25) -> Tensor:
        """n images (n, 3, H, W) in [0, 1] from pure noise, conditioned on ``bank``
        (M, D).

        The positive control: the bank is the ONLY information about what to draw
        (``ddim`` from t = T - 1 in ``steps`` steps, guided by ``cfg.guidance_scale``).
        Needs no guidance copy (it would need an input image). Sample i's noise depends
        on (seed, i) only.
        """
        if self.controlnet is not None:
            raise ValueError(
                "generate() has no input for the guidance copy; use guidance='none'.",
            )
        device = self.bank.device
        h = self.cfg.image_size // self.factor
        channels = self.unet.config.in_channels
        x = image_noise(torch.Size((n, channels, h, h)), seed, 0).to(device)
        ctx = (
            self.null_context(n)
            if self.cfg.variant == "uncond"
            else self.condition(bank.to(self.bank).unsqueeze(0).expand(n, -1, -1))
        )
        sched, timesteps = self.ddim(self.cfg.num_train_timesteps - 1, steps)
        return self.decode(self.denoise(x, sched, timesteps, ctx, None)).cpu()
