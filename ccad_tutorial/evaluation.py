"""Evaluation: one detector, one test split, the book's metrics.

    row = evaluate(detector, split)    # any detectors.Detector, a datasets.Batch

Every number of the book's tables comes through ``evaluate``: the CLI's ``evaluate``
(``evaluate_run``), ``reproduce``, the cached cells of ``experiments``, the diagnostics and
the benchmarks. A reconstruction detector repaints the split ONCE and scores it with each of
its scorers: the row's metrics come from its main map, the ``l1_<metric>`` keys from the
pixel-L1 map of the same reconstructions.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import Tensor

from ccad_tutorial import runs
from ccad_tutorial.metrics import evaluate as metrics_of
from ccad_tutorial.metrics import per_defect_type

METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


def map_metrics(split, scores: Tensor, maps: Tensor, prefix: str = "") -> dict:
    """``{prefix + metric: value}`` of image scores (N,) and maps (N, 1, H, W) against the
    split's labels and masks, with ``{prefix}per_defect``: image and pixel AUROC per defect
    type (``metrics.per_defect_type``)."""
    result = metrics_of(split.labels, scores, split.masks, maps)
    row = {f"{prefix}{k}": float(v) for k, v in result.items()}
    row[f"{prefix}per_defect"] = per_defect_type(
        split.labels, scores, split.defect_types, split.masks, maps
    )
    return row


@torch.no_grad()
def evaluate(detector, split, outputs: dict | None = None) -> dict:
    """The metrics of ``detector`` on ``split`` (a Batch: images, labels, masks,
    defect_types) and the inference time per image (reconstruction and main map).

    ``outputs`` (a dict, filled when given): ``scores`` and ``maps`` of the main map, and
    for a reconstruction detector its ``recons``.
    """
    start = time.perf_counter()
    if hasattr(detector, "reconstruct"):
        recons = detector.reconstruct(split.images)
        scores, maps = detector.score(split.images, recons)
        infer_s = time.perf_counter() - start
        row = map_metrics(split, scores, maps)
        for which in detector.scorers:
            if which:
                row.update(map_metrics(split, *detector.score(split.images, recons, which), which))
    else:
        recons = None
        scores, maps = detector.predict(split.images)
        infer_s = time.perf_counter() - start
        row = map_metrics(split, scores, maps)
    if outputs is not None:
        outputs.update(scores=scores, maps=maps, recons=recons)
    n = len(split.labels)
    row.update(infer_s_per_image=round(infer_s / n, 4), eval_s=round(infer_s, 2), n_test=n)
    return row


def save_examples(path: str | os.PathLike, split, outputs: dict, n: int = 6) -> Path:
    """PNG of ``n`` test images, the defective first, one row each: input /
    reconstruction / anomaly map / ground truth (``viz.show_anomaly_maps``), atomically."""
    from ccad_tutorial.viz import show_anomaly_maps

    fig = show_anomaly_maps(
        split.images, outputs["maps"], split.masks, recons=outputs.get("recons"), n=n,
        defective_first=True, per_image="row",
    )  # fmt: skip
    return runs.atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=80))


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
    """``ccad-tutorial evaluate``: the trained CCAD of ``run`` on ``category``'s test split.

    The scorers are calibrated on the normals the model was trained on (for a multi-class
    run, all its categories), as ``CCADDetector.fit`` calibrates them. ``inference`` overrides fields read at inference
    (``presets.INFERENCE_FIELDS``, e.g. guidance_scale=2) for this evaluation only.
    Returns {"image_auroc", "pixel_auroc", "aupro", "f1_max", ..., "per_defect", "eval_s",
    "n_test"}.
    """
    from ccad_tutorial.datasets import list_categories, load_split
    from ccad_tutorial.detectors import CCADDetector, check_category, split_categories
    from ccad_tutorial.presets import set_inference_fields

    detector = CCADDetector.from_pretrained(
        run, device=device, noise_seed=noise_seed, progress=progress
    )
    cfg = detector.cfg
    set_inference_fields(cfg, inference)
    check_category(data, layout, category)
    trained_on = split_categories(cfg.extra.get("train_args", {}).get("category", category))
    if not set(trained_on) <= set(list_categories(data, layout)):
        trained_on = [category]  # evaluated on other data: its own normals
    parts = [load_split(data, layout, c, "train", cfg.image_size).images for c in trained_on]
    detector.fit_scorers(cfg, torch.cat(parts))
    test = load_split(data, layout, category, "test", cfg.image_size)
    outputs: dict = {}
    result = evaluate(detector, test, outputs)
    result.update(variant=cfg.variant, preset=cfg.preset, category=category, steps=cfg.steps)
    if json_out is not None:
        runs.write_json(json_out, result)
    if grid_png is not None:
        save_examples(grid_png, test, outputs)
    return result
