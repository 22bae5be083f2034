"""Reconstruction from partial noise, and what it removed (chapter 2).

``reconstruct`` noises images to ``t_start`` and denoises them back with DDIM (ddim.py):
the idea behind reconstruction-based anomaly detection and CCAD's ``t_start``.
``add_defects`` puts a MiniTex-AD defect (defects.py) on clean images, so that each
defective image has its defect-free original, and ``reconstruction_errors`` measures a
reconstruction against both: how much of the defect is left, how much normal detail is
lost, and what a plain pixel-difference anomaly map sees. CCAD's own reconstruction is
``CCAD.reconstruct`` (sampling.py).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor

from ccad_tutorial.ddim import denoise
from ccad_tutorial.ddpm import to_image, to_model


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


def add_defects(
    images: Tensor, seed: int = 0, category: str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Put one MiniTex-AD defect on each clean image (B, 3, H, W) in [0, 1].

    Defect types cycle through ``defects.DEFECT_TYPES``. Returns (clean, defective,
    masks): clean (B, 3, H, W) quantised to 8 bits like the defective copy, defective
    (B, 3, H, W), masks (B, 1, H, W) in {0, 1}. Outside the mask, clean and defective
    are identical.
    """
    from ccad_tutorial.defects import DEFECT_TYPES, apply_defect

    rng = np.random.default_rng(seed)
    clean = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    clean = clean.permute(0, 2, 3, 1).numpy()
    pairs = [
        apply_defect(img, DEFECT_TYPES[i % len(DEFECT_TYPES)], rng, category=category)
        for i, img in enumerate(clean)
    ]
    defective = np.stack([p[0] for p in pairs])
    masks = np.stack([p[1] for p in pairs])[:, None]

    def as_float(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255

    return as_float(clean), as_float(defective), torch.from_numpy(masks).float()


def masked_mse(recons: Tensor, clean: Tensor, masks: Tensor) -> tuple[float, float]:
    """Mean squared error against the clean images, inside and outside the defect masks.

    recons, clean: (B, 3, H, W) in [0, 1]; masks: (B, 1, H, W) in {0, 1}. Pixels of
    all images are pooled. Returns (mse inside, mse outside).
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
    Returns ``inside`` / ``outside``: MSE to the defect-free original inside and
    outside the defects; ``excess``: inside - outside (what is left of the defects);
    ``contrast``: MSE to the *input* inside over outside (what an anomaly map sees);
    ``pixel_auroc`` of the plain pixel-L1 map |recon - input|; ``colour_error``: the
    largest channel difference between the mean colours of the reconstructions and
    of the originals.
    """
    from ccad_tutorial import metrics

    # against the defect-free original
    inside, outside = masked_mse(recons, clean, masks)
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
