"""Anomaly maps: compare an input with its normal-looking reconstruction.

CCAD (like DiAD) scores an image by how much the diffusion model had to change it:

    mode="feature":  for each layer l of a frozen ResNet-50 (layers 1-3),
                     d_l = 1 - cos(f_l(input), f_l(recon))   per position, over channels,
                     upsampled (bilinear) to the image size;  map = sum_l d_l
    mode="l1":       map = mean over RGB of |input - recon|   per pixel

then a Gaussian blur with sigma = 4 px at 256 px (scaled with the image size), and the
image score is the maximum of the smoothed map. Feature maps are DiAD's and CCAD's choice
and the default of both presets: pretrained ResNet-50 in full mode; in fast mode a random-init
ResNet-50 whose BatchNorm statistics are re-estimated on the normals (``calibrate``; without
it, random residual blocks are near-identity and the maps react to any high-frequency
residual). Measured on MiniTex-AD, the calibrated random features beat the pixel-L1 map
(``benchmarks/results/minitex_table.json`` holds both for every cell).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from ccad_tutorial.features import FeatureExtractor

MODES = ("feature", "l1")


def smoothing_sigma(height: int, sigma_at_256: float = 4.0) -> float:
    """Blur width for an image of ``height`` pixels: sigma_at_256 * height / 256."""
    return sigma_at_256 * height / 256


def gaussian_smooth(maps: Tensor, sigma: float) -> Tensor:
    """Blur maps (B, 1, H, W) with a Gaussian of std ``sigma`` pixels (kernel 2*ceil(3 sigma)+1).

    Mirrors ``scipy.ndimage.gaussian_filter`` as used by PatchCore / DiAD; sigma <= 0 is a no-op.
    """
    if sigma <= 0:
        return maps
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur(maps, kernel_size=[size, size], sigma=[sigma, sigma])


class AnomalyScorer(nn.Module):
    """Anomaly maps (B, 1, H, W) and image scores (B,) from inputs vs reconstructions.

    Args:
        backbone: timm model name for ``mode="feature"`` (DiAD: ResNet-50).
        layers: feature levels compared (timm ``out_indices``; 1-3 = ResNet layer1-layer3).
        pretrained: load timm's ImageNet weights (needs a download, or the local cache).
        weights: path to a local weight file for the backbone (works offline).
        mode: "feature" (1 - cosine of backbone features) or "l1" (pixel difference).
        sigma_at_256: Gaussian blur std in pixels for a 256 px image, scaled with the size.

    The backbone is a frozen ``features.FeatureExtractor`` (same loading, offline errors,
    ImageNet normalisation and BatchNorm calibration as the bank's encoder); only its raw
    per-layer maps are used here, not its pooling.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        layers: Sequence[int] = (1, 2, 3),
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        mode: str = "feature",
        sigma_at_256: float = 4.0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"AnomalyScorer: mode={mode!r} is unknown; use one of {MODES}.")
        self.mode, self.sigma_at_256 = mode, sigma_at_256
        self.extractor = (
            FeatureExtractor(backbone, layers, pretrained=pretrained, weights=weights)
            if mode == "feature"
            else None
        )

    def calibrate(self, images: Tensor, batch_size: int = 32) -> AnomalyScorer:
        """Re-estimate the backbone's BatchNorm statistics on normal images (N, 3, H, W) in
        [0, 1] (``FeatureExtractor.calibrate``). Needed for a random-init backbone; a no-op
        in ``mode="l1"``."""
        if self.extractor is not None:
            self.extractor.calibrate(images, batch_size)
        return self

    def forward(self, inputs: Tensor, recons: Tensor) -> Tensor:
        """inputs, recons (B, 3, H, W) in [0, 1] -> smoothed anomaly maps (B, 1, H, W)."""
        if inputs.shape != recons.shape or inputs.dim() != 4 or inputs.shape[1] != 3:
            raise ValueError(
                "AnomalyScorer expects inputs and reconstructions of the same shape "
                f"(B, 3, H, W), got {tuple(inputs.shape)} and {tuple(recons.shape)}; "
                "decode latents to images first."
            )
        if self.mode == "l1":
            maps = (inputs - recons).abs().mean(dim=1, keepdim=True)
        else:
            maps = self._feature_distance(inputs, recons)
        return gaussian_smooth(maps, smoothing_sigma(inputs.shape[-2], self.sigma_at_256))

    @staticmethod
    def image_scores(maps: Tensor) -> Tensor:
        """Image anomaly score = maximum of the map: (B, 1, H, W) -> (B,)."""
        return maps.flatten(1).amax(dim=1)

    def _feature_distance(self, inputs: Tensor, recons: Tensor) -> Tensor:
        """Sum over layers of upsampled 1 - cosine similarity.

        inputs, recons (B, 3, H, W) -> maps (B, 1, H, W).
        """
        both = self.extractor.normalize(torch.cat([inputs, recons]))  # one pass for both
        maps = torch.zeros_like(inputs[:, :1])
        for f in self.extractor.backbone(both):  # f: (2B, C_l, h_l, w_l)
            f_in, f_rec = f.chunk(2)
            d = 1 - F.cosine_similarity(f_in, f_rec, dim=1).unsqueeze(1)  # (B, 1, h_l, w_l)
            maps = maps + F.interpolate(
                d, size=inputs.shape[-2:], mode="bilinear", align_corners=False
            )
        return maps
