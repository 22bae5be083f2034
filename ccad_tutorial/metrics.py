"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO, F1-max and average precision.

The vocabulary is the field's (anomalib, the MVTec AD evaluation code):

- **image level**: one score per test image, label 0 (normal) or 1 (anomalous);
- **pixel level**: one anomaly map per test image, compared with the ground-truth mask;
  pixels of all images of a category are *pooled* into one big binary problem;
- **AUPRO** (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021): like pixel
  AUROC but every connected defect region counts equally, however small, and the FPR axis
  is cut at ``fpr_limit`` (0.3) where a detector is still useful.

All values are returned **raw**. An AUROC below 0.5 is never "flipped" to ``1 - AUROC``: the
DiAD evaluation code does that, and it turns a model whose scores are inverted (a sign bug,
a swapped label) into one that looks fine. Here such a model reads 0.2, and you go and fix it.

Inputs may be NumPy arrays, lists or torch tensors on any device (they are detached and
copied to the CPU). ROC and PR curves come from scikit-learn; only AUPRO is written by hand,
because the book explains it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "aupro",
    "pro_curve",
    "f1_max",
    "average_precision",
    "evaluate",
]


# --------------------------------------------------------------------------- input checks


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Any array-like (NumPy, list, torch tensor on any device) -> a float64 NumPy array."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.float()  # bfloat16/float16 have no NumPy equivalent
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array or tensor, got {type(x).__name__}.")
    return arr.astype(np.float64, copy=False)


def _check_scores(scores: np.ndarray, name: str) -> None:
    if not np.all(np.isfinite(scores)):
        bad = int(np.size(scores) - np.isfinite(scores).sum())
        raise ValueError(
            f"{name} contains {bad} NaN or infinite value(s); metrics need finite scores. "
            "Look for a division by zero or an empty batch in the scoring code."
        )


def _labels_and_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate image-level inputs: labels (N,) in {0, 1}, scores (N,) finite."""
    y = _to_numpy(labels, "labels").reshape(-1)
    s = _to_numpy(scores, "scores").reshape(-1)
    if y.shape != s.shape:
        raise ValueError(
            f"labels has {y.size} entries but scores has {s.size}; pass one score per image."
        )
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("labels must be 0 (normal) or 1 (anomalous), one per image.")
    _check_scores(s, "scores")
    return y.astype(np.int64), s


def _masks_and_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate pixel-level inputs; return binary masks (N, H, W) bool and maps (N, H, W)."""
    m = _squeeze_channel(_to_numpy(masks, "masks"), "masks")
    a = _squeeze_channel(_to_numpy(maps, "maps"), "maps")
    if m.shape != a.shape:
        raise ValueError(
            f"masks have shape {m.shape} but maps have shape {a.shape}; resize the anomaly "
            "maps to the mask resolution first (e.g. torch.nn.functional.interpolate)."
        )
    _check_scores(a, "maps")
    return m > 0.5, a  # {0, 1} float masks and 0/255 PNG masks both binarise correctly


def _squeeze_channel(x: np.ndarray, name: str) -> np.ndarray:
    """(N, 1, H, W) -> (N, H, W); (N, H, W) unchanged; anything else is an error."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(
            f"{name} must have shape (N, H, W) or (N, 1, H, W), got {x.shape}; "
            "for a single image add the batch axis with x[None]."
        )
    return x


def _need_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "anomalous" if n_pos else "normal"
        raise ValueError(
            f"{what} is undefined: it needs both normal and anomalous samples, "
            f"but all {y.size} are {only}. Evaluate on the whole test split (good + defects)."
        )


def _need_positives(y: np.ndarray, what: str) -> None:
    if y.sum() == 0:
        raise ValueError(
            f"{what} is undefined without anomalous samples; all {y.size} are normal. "
            "Evaluate on the whole test split (good + defects)."
        )


# --------------------------------------------------------------------------- image level


def image_auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve of image scores (raw, never flipped).

    Args:
        labels: (N,) 0 normal / 1 anomalous.
        scores: (N,) anomaly scores, higher = more anomalous.

    Returns:
        AUROC in [0, 1]; 0.5 is chance, below 0.5 means the scores are inverted
        (we keep it, see the module docstring). Mirrors ``sklearn.metrics.roc_auc_score``.
    """
    y, s = _labels_and_scores(labels, scores)
    _need_both_classes(y, "AUROC")
    return float(roc_auc_score(y, s))


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision (area under the precision-recall curve, step-wise).

    labels (N,), scores (N,); ``sklearn.metrics.average_precision_score``.
    """
    y, s = _labels_and_scores(labels, scores)
    _need_positives(y, "Average precision")
    return float(average_precision_score(y, s))


def f1_max(labels: Any, scores: Any) -> float:
    """Best F1 score over all thresholds: max over the PR curve of 2PR / (P + R).

    labels (N,), scores (N,). Points with P = R = 0 count as F1 = 0 (not NaN).
    """
    y, s = _labels_and_scores(labels, scores)
    _need_positives(y, "F1-max")
    precision, recall, _ = precision_recall_curve(y, s)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


# --------------------------------------------------------------------------- pixel level


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Pixel AUROC with the pixels of all images pooled (raw, never flipped).

    Args:
        masks: (N, H, W) or (N, 1, H, W) ground truth, anomalous where > 0.5.
        maps: same shape, anomaly map values.
    """
    m, a = _masks_and_maps(masks, maps)
    y = m.reshape(-1)
    _need_both_classes(y, "Pixel AUROC")
    return float(roc_auc_score(y, a.reshape(-1)))


def pro_curve(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: (FPR, PRO) at every distinct threshold.

    Args:
        masks: (N, H, W) or (N, 1, H, W) ground truth.
        maps: same shape, anomaly maps.

    Returns:
        fpr, pro: (T + 1,) each, starting at (0, 0) (threshold above every score) and
        ending at (1, 1) (threshold at the lowest score); FPR is non-decreasing.

    For a threshold t, a pixel is "predicted anomalous" when its score >= t; then
    ``PRO(t)`` = mean over all ground-truth regions of the fraction of the region predicted
    anomalous, and ``FPR(t)`` = fraction of normal pixels (pooled) predicted anomalous.
    Exact and vectorised like the MVTec AD reference ``compute_pro``: sort every pixel by
    score once, then cumulative sums give, at every cut of that order, the count of normal
    pixels above it (FPR) and the summed region weights 1 / (region size * regions) (PRO);
    O(P log P) for P pixels, no loop over thresholds.
    """
    m, a = _masks_and_maps(masks, maps)
    regions, n_regions = _label_regions(m)
    n_normal = int((~m).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError(
            "AUPRO needs both normal and anomalous pixels: the masks have "
            f"{n_regions} defect region(s) and {n_normal} normal pixel(s)."
        )
    sizes = np.bincount(regions, minlength=n_regions + 1)  # sizes[0]: normal pixels
    # Weight of one pixel of region k in PRO: 1 / (size_k * n_regions); normal pixels: 0.
    pro_weight = np.concatenate(([0.0], 1.0 / (sizes[1:] * n_regions)))

    scores = a.reshape(-1)
    order = np.argsort(-scores)  # highest score first; ties are grouped below
    scores, regions = scores[order], regions[order]
    fpr = np.cumsum(regions == 0) / n_normal
    pro = np.cumsum(pro_weight[regions])
    # Ties: a threshold includes all pixels with an equal score, so keep only the last
    # cumulative value of each run of equal scores.
    last_of_run = np.append(scores[1:] != scores[:-1], True)
    fpr, pro = np.minimum(fpr[last_of_run], 1.0), np.minimum(pro[last_of_run], 1.0)
    return np.concatenate(([0.0], fpr)), np.concatenate(([0.0], pro))


def _label_regions(m: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected defect regions of every mask -> flat labels (N*H*W,), 0 = normal.

    8-connectivity, as the MVTec AD reference code: ``scipy.ndimage.label`` with the
    structuring element ``np.ones((3, 3))`` (= ``skimage.measure.label(connectivity=2)``).
    Labels are offset per image, so regions of different images never merge.
    """
    labels = np.zeros(m.shape, dtype=np.int32)
    total = 0
    structure = np.ones((3, 3), dtype=int)
    for i, mask in enumerate(m):
        if mask.any():
            lab, n = ndimage.label(mask, structure=structure)
            labels[i] = np.where(lab > 0, lab + total, 0)
            total += n
    return labels.reshape(-1), total


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) for x in [0, x_max], y interpolated linearly AT x_max.

    x (T,) non-decreasing with x[0] <= x_max <= x[-1]. Mirrors the MVTec AD reference
    ``trapezoid(x, y, x_max)``; vertical steps (equal x) add no area.
    """
    k = int(np.searchsorted(x, x_max, side="right"))  # points x[:k] lie at or before x_max
    xs, ys = x[:k], y[:k]
    if xs[-1] < x_max:  # cut the next segment at x_max: x[k-1] < x_max < x[k]
        t = (x_max - x[k - 1]) / (x[k] - x[k - 1])
        xs = np.append(xs, x_max)
        ys = np.append(ys, y[k - 1] + t * (y[k] - y[k - 1]))
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))


def aupro(masks: Any, maps: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD, IJCV 2021).

    Args:
        masks: (N, H, W) or (N, 1, H, W) ground truth, anomalous where > 0.5.
        maps: same shape, anomaly maps.
        fpr_limit: integrate over FPR in [0, fpr_limit] (0.3 in the literature).

    Returns:
        Area / fpr_limit, in [0, 1]: 1.0 for maps that separate every region from all
        normal pixels. See :func:`pro_curve` for the curve itself.
    """
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}.")
    fpr, pro = pro_curve(masks, maps)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- all at once


def evaluate(
    labels: Any, image_scores: Any, masks: Any = None, maps: Any = None
) -> dict[str, float]:
    """All metrics of the book in one dict.

    Args:
        labels: (N,) 0 normal / 1 anomalous.
        image_scores: (N,) image anomaly scores.
        masks: (N, H, W) or (N, 1, H, W) ground truth, or None (image metrics only).
        maps: (N, H, W) or (N, 1, H, W) anomaly maps, or None.

    Returns:
        {"image_auroc", "image_ap", "f1_max"} and, with masks and maps,
        {"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}; raw floats.
    """
    out = {
        "image_auroc": image_auroc(labels, image_scores),
        "image_ap": average_precision(labels, image_scores),
        "f1_max": f1_max(labels, image_scores),
    }
    if (masks is None) != (maps is None):
        raise ValueError("evaluate() needs both masks and maps for pixel metrics, or neither.")
    if masks is None:
        return out
    n = _to_numpy(labels, "labels").size
    m, a = _masks_and_maps(masks, maps)
    if len(m) != n:
        raise ValueError(f"labels has {n} entries but masks/maps have {len(m)} images.")
    y, s = m.reshape(-1), a.reshape(-1)
    out["pixel_auroc"] = pixel_auroc(m, a)
    out["pixel_ap"] = average_precision(y, s)
    out["pixel_f1_max"] = f1_max(y, s)
    out["aupro"] = aupro(m, a)
    return out


def per_defect_type(
    labels: Any, image_scores: Any, defect_types: list[str], masks: Any = None, maps: Any = None
) -> dict[str, dict[str, float]]:
    """Image (and pixel) AUROC of each defect type against the normal images.

    For every type other than ``"good"``: the normal test images plus that type's images,
    scored as ``evaluate`` would (pixel AUROC pooled over those images). A detector blind to
    one kind of anomaly shows it here, however well the mean over types reads.
    Returns {defect type: {"image_auroc", "pixel_auroc" (with masks and maps), "n"}}.
    """
    y = _to_numpy(labels, "labels").reshape(-1)
    s = _to_numpy(image_scores, "image_scores").reshape(-1)
    types = np.asarray(defect_types)
    if len(types) != len(y):
        raise ValueError(f"defect_types has {len(types)} entries but labels has {len(y)}.")
    m = a = None
    if masks is not None and maps is not None:
        m, a = _masks_and_maps(masks, maps)
    out = {}
    for kind in sorted(set(types[y == 1].tolist())):
        keep = (y == 0) | (types == kind)
        entry = {"image_auroc": image_auroc(y[keep], s[keep]), "n": int((types == kind).sum())}
        if m is not None:
            entry["pixel_auroc"] = pixel_auroc(m[keep], a[keep])
        out[kind] = entry
    return out
