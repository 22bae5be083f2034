"""Does the model use its condition? The condition-swap diagnostic.

A conditioned model that ignores its condition behaves the same whatever bank it is given.
So we evaluate one trained CCAD several times, each time with a different bank:

* ``real``: the run's own Coarse Feature Bank;
* ``shuffled``: the same numbers with rows AND feature dimensions permuted, so it is no
  longer the same set of vectors (a row permutation alone changes nothing: attention
  without positional encodings is order-blind);
* ``zeros``: an all-zero bank;
* any bank passed in ``alternative_banks`` (e.g. another category's CFB).

For each we report the test metrics, the held-out denoising loss on the test split's
normal images (fixed timesteps and noise, so only the bank changes), and how far the
reconstructions move from those with the real bank. If nothing changes, the condition is
ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ccad_tutorial.model import CCAD


def swapped_banks(bank: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """The control banks built from ``bank`` (M, D): shuffled (rows and dims) and zeros."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(bank.shape[0], generator=gen)
    dims = torch.randperm(bank.shape[1], generator=gen)
    return {"shuffled": bank[rows][:, dims], "zeros": torch.zeros_like(bank)}


@torch.no_grad()
def heldout_loss(
    model: CCAD, images: Tensor, bank: Tensor | None = None, seed: int = 0, repeats: int = 4
) -> float:
    """Mean denoising loss on images (N, 3, H, W) with fixed timesteps and noise per repeat."""
    model.eval()
    device = model.bank.device
    x0 = torch.cat([model.encode(x.to(device)) for x in images.split(16)])
    losses = []
    for r in range(repeats):
        gen = torch.Generator().manual_seed(seed * 1000 + r)
        query = model.global_features(images.to(device))
        losses.append(model.loss(x0, images.to(device), gen, bank=bank, query=query).item())
    return sum(losses) / len(losses)


@torch.no_grad()
def condition_swap(
    model: CCAD,
    test_batch,
    alternative_banks: dict[str, Tensor] | None = None,
    noise_seed: int = 0,
    controls: bool = True,
) -> dict[str, dict]:
    """Evaluate ``model`` on ``test_batch`` (datasets.Batch) under each bank.

    ``controls=False`` skips the shuffled and zero banks (only ``real`` and the
    ``alternative_banks`` are evaluated: one reconstruction of the test split each).

    Returns {bank name: {"image_auroc", "pixel_auroc", ..., "heldout_loss", "recon_change"}},
    where recon_change is the mean absolute pixel difference from the real-bank
    reconstructions (0 for "real").
    """
    from ccad_tutorial.metrics import evaluate

    banks = {
        "real": model.bank,
        **(swapped_banks(model.bank.cpu(), noise_seed) if controls else {}),
        **(alternative_banks or {}),
    }
    images, labels = test_batch.images, test_batch.labels
    good = images[labels == 0]
    both_classes = 0 < int(labels.sum()) < len(labels)
    results, reference = {}, None
    for name, bank in banks.items():
        recons = model.reconstruct(images, noise_seed=noise_seed, bank=bank)
        reference = recons if reference is None else reference
        maps, scores = model.anomaly_maps(images, recons)
        metrics = evaluate(labels, scores, test_batch.masks, maps) if both_classes else {}
        metrics = {k: float(v) for k, v in metrics.items()}
        metrics["heldout_loss"] = (
            heldout_loss(model, good, bank, noise_seed) if len(good) else float("nan")
        )
        metrics["recon_change"] = float((recons - reference).abs().mean())
        results[name] = metrics
    return results
