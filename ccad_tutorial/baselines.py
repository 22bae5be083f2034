"""PatchCore: the representation-based baseline that CCAD's coreset comes from.

PatchCore (Roth et al., CVPR 2022) needs no training at all:

1. ``fit``: extract locally aggregated patch features of every normal training image,
   (N, D, h, w) -> (N * h * w, D) points, and keep a greedy k-center coreset of them
   (10 %) as the memory bank -- exactly CCAD's Coarse Feature Bank with ``pool="patch"``.
2. ``predict``: the anomaly score of a test patch is the distance to its nearest neighbour
   in the bank; the (h, w) score grid is upsampled (bilinear) to the image size and smoothed
   with a Gaussian (sigma 4 px at 256 px, scaled with the size); the image score is the
   maximum of the map.

anomalib's ``PatchcoreModel`` runs the same steps (its extra re-weighting of the image score
by the neighbourhood of the nearest bank entry is left out here: image score = max).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ccad_tutorial.bank import CoarseFeatureBank
from ccad_tutorial.features import FAST_BACKBONE, FULL_BACKBONE, FeatureExtractor, flatten_patches
from ccad_tutorial.scoring import gaussian_smooth, smoothing_sigma


@torch.no_grad()
def nearest_distances(
    queries: torch.Tensor, bank: torch.Tensor, chunk_size: int = 4096
) -> torch.Tensor:
    """Euclidean distance of each query (Q, D) to its nearest bank row (M, D) -> (Q,).

    ``torch.cdist`` in chunks of queries, so memory stays at (chunk_size, M) (anomalib and
    faiss do the same search; at MVTec sizes an exact search is fast enough).
    """
    bank = bank.to(queries.device, queries.dtype)
    return torch.cat([torch.cdist(chunk, bank).amin(dim=1) for chunk in queries.split(chunk_size)])


class PatchCore:
    """Nearest-neighbour anomaly detection on a coreset of normal patch features.

    extractor: a ``FeatureExtractor`` with ``pool="patch"``; default: random-init resnet18
        (fast mode), calibrated on the training images in ``fit``.
    coreset_ratio: xi, the fraction of training patches kept in the memory bank.
    """

    def __init__(
        self,
        extractor: FeatureExtractor | None = None,
        coreset_ratio: float = 0.1,
        projection_dim: int | None = 128,
        seed: int = 0,
    ) -> None:
        if extractor is None:
            extractor = FeatureExtractor(FAST_BACKBONE, pool="patch", seed=seed)
        if extractor.pool != "patch":
            raise ValueError(
                f"PatchCore needs patch features: build the extractor with pool='patch' (got "
                f"pool={extractor.pool!r})."
            )
        self.extractor, self.coreset_ratio = extractor, coreset_ratio
        self.projection_dim, self.seed = projection_dim, seed
        self.bank: CoarseFeatureBank | None = None

    def fit(self, train_images: torch.Tensor, batch_size: int = 32) -> PatchCore:
        """Build the memory bank from normal training images (N, 3, H, W) in [0, 1]."""
        if not self.extractor.pretrained:  # random init: BatchNorm statistics from the normals
            self.extractor.calibrate(train_images, batch_size)
        patches = flatten_patches(self.extractor.extract(train_images, batch_size))  # (N*h*w, D)
        self.bank = CoarseFeatureBank.build(
            patches, ratio=self.coreset_ratio, projection_dim=self.projection_dim, seed=self.seed
        )
        return self

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, batch_size: int = 32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores (B,) and anomaly maps (B, 1, H, W) for images (B, 3, H, W) in [0, 1]."""
        if self.bank is None:
            raise ValueError("PatchCore.predict called before fit: call fit(train_images) first.")
        maps = torch.cat([self._patch_scores(batch) for batch in images.split(batch_size)])
        height, width = images.shape[-2:]
        maps = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False)
        maps = gaussian_smooth(maps, smoothing_sigma(height))
        return maps.amax(dim=(1, 2, 3)), maps

    def _patch_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Nearest-neighbour distance of every patch: images (B, 3, H, W) -> (B, 1, h, w)."""
        features = self.extractor(images)  # (B, D, h, w)
        batch, _, h, w = features.shape
        distances = nearest_distances(flatten_patches(features), self.bank.features)
        return distances.view(batch, 1, h, w).cpu()


def run_patchcore(
    data: str | Path,
    category: str,
    layout: str = "mvtec",
    image_size: int = 128,
    pretrained: bool = False,
    backbone: str | None = None,
    seed: int = 0,
) -> dict:
    """Fit PatchCore on a category's train split, evaluate on its test split.

    Default backbone: ``wide_resnet50_2`` with ``pretrained=True`` (full mode), random-init
    ``resnet18`` otherwise (fast mode). Returns the row of ``evaluation.evaluate``
    (image_auroc, pixel_auroc, aupro, f1_max, ...) plus what was run and how long it took.
    """
    from ccad_tutorial.datasets import load_split
    from ccad_tutorial.evaluation import evaluate

    backbone = backbone or (FULL_BACKBONE if pretrained else FAST_BACKBONE)
    start = time.perf_counter()
    train = load_split(data, layout, category, "train", image_size)
    test = load_split(data, layout, category, "test", image_size)
    extractor = FeatureExtractor(backbone, pool="patch", pretrained=pretrained, seed=seed)
    model = PatchCore(extractor, seed=seed).fit(train.images)
    fitted = time.perf_counter()
    result = evaluate(model, test)
    result.update(
        method="patchcore",
        category=category,
        backbone=backbone,
        pretrained=pretrained,
        image_size=image_size,
        seed=seed,
        n_train=len(train.labels),
        bank_size=len(model.bank),
        fit_seconds=round(fitted - start, 2),
        predict_seconds=result["eval_s"],
    )
    return result
