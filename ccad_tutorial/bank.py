"""The Coarse Feature Bank (CFB): built from a run's training normals, saved, loaded.

    images --frozen FeatureExtractor--> global features (N, D) --greedy coreset--> CFB (M, D)

``build_bank`` is the whole first stage of CCAD; ``coreset.py`` holds the greedy k-center
selection it runs. With several categories (one multi-class model) ``entry_labels`` says which
category each entry came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ccad_tutorial.coreset import _check_features, coreset_size, greedy_coreset_with_radius
from ccad_tutorial.features import FeatureExtractor
from ccad_tutorial.runs import read_config, write_safetensors

BANK_FORMAT = "ccad_tutorial.CoarseFeatureBank/1"


@dataclass
class CoarseFeatureBank:
    """The Coarse Feature Bank (CFB): the coreset's ORIGINAL feature vectors.

    features: (M, D) the kept normal feature vectors (not projected).
    indices: (M,) long, their rows in the (N, D) features the bank was built from.
    xi: M / N, the compression ratio actually reached.
    radius: covering radius of the selection (projected space, see ``CoresetResult``).
    source_count: N, the number of feature vectors the bank was built from.
    """

    features: torch.Tensor
    indices: torch.Tensor
    xi: float
    radius: float
    source_count: int

    def __len__(self) -> int:
        return self.features.shape[0]

    @classmethod
    def build(
        cls,
        features: torch.Tensor,
        ratio: float | None = 0.1,
        n: int | None = None,
        min_size: int = 8,
        projection_dim: int | None = 128,
        seed: int = 0,
    ) -> CoarseFeatureBank:
        """Select the bank from (N, D) features: M = n, or round(ratio * N) but >= min_size.

        Passing ``n`` overrides ``ratio``. The bank never has more than N entries.
        """
        _check_features(features)
        num = features.shape[0]
        size = coreset_size(num, n=n) if n is not None else coreset_size(num, ratio=ratio)
        size = max(size, min(min_size, num))
        result = greedy_coreset_with_radius(
            features, n=size, projection_dim=projection_dim, seed=seed
        )
        kept = features[result.indices].detach().clone()
        return cls(kept, result.indices.cpu(), size / num, result.radius, num)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bank to a .safetensors file (atomically, ``runs.atomic_write``)."""
        tensors = {
            "features": self.features.detach().cpu().contiguous(),
            "indices": self.indices.detach().cpu().long().contiguous(),
        }
        metadata = {
            "format": BANK_FORMAT,
            "xi": repr(float(self.xi)),
            "radius": repr(float(self.radius)),
            "source_count": str(int(self.source_count)),
        }
        return write_safetensors(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> CoarseFeatureBank:
        """Read a bank written by ``save`` (safetensors only: no pickle is ever executed)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Coarse Feature Bank file {path} does not exist. Build one with "
                "CoarseFeatureBank.build(features) and save it with bank.save(path)."
            )
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as handle:
                metadata = handle.metadata() or {}
                features = handle.get_tensor("features")
                indices = handle.get_tensor("indices")
            return cls(
                features,
                indices,
                float(metadata["xi"]),
                float(metadata["radius"]),
                int(metadata["source_count"]),
            )
        except Exception as error:  # safetensors raises its own error type for corrupt files
            raise ValueError(
                f"{path} is not a valid Coarse Feature Bank (.safetensors with tensors 'features', "
                f"'indices' and metadata xi, radius, source_count): {error}. Rebuild it with "
                "CoarseFeatureBank.build(features).save(path)."
            ) from error


def build_bank(
    train_images: torch.Tensor, cfg, groups: list[int] | None = None
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
