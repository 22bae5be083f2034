"""Tests for ccad_tutorial.metrics: agreement with scikit-learn and with a slow AUPRO reference."""

from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label as sk_label
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from ccad_tutorial import metrics


def random_image_scores(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = (0, 1)  # both classes present
    scores = rng.normal(size=n) + 0.8 * labels
    return labels, scores


def smooth_maps_with_regions(n=8, size=48, seed=0):
    """Masks (n, size, size) with several rectangular regions; maps correlated with them."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size))
    for i in range(n // 2, n):  # first half normal images, second half 1-3 defects each
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 12, 2)
            h, w = rng.integers(2, 12, 2)
            masks[i, y : y + h, x : x + w] = 1
    noise = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 2, 2))
    maps = noise + 0.15 * ndimage.gaussian_filter(masks, (0, 1, 1))
    return masks, maps


def slow_reference_aupro(masks, maps, thresholds, fpr_limit=0.3):
    """Obviously-correct AUPRO: loop over thresholds, measure every region directly."""
    masks = masks > 0.5
    regions = [sk_label(m, connectivity=2) for m in masks]  # 8-connectivity, via skimage
    region_masks = [lab == k for lab in regions for k in range(1, lab.max() + 1)]
    region_maps = [maps[i] for i, lab in enumerate(regions) for _ in range(lab.max())]
    normal = ~masks
    fprs, pros = [0.0], [0.0]  # threshold above every score
    for t in sorted(thresholds, reverse=True):
        predicted = maps >= t
        fprs.append((predicted & normal).sum() / normal.sum())
        overlaps = [(p[r] >= t).mean() for p, r in zip(region_maps, region_masks, strict=True)]
        pros.append(np.mean(overlaps))
    area = 0.0
    for (x0, y0), (x1, y1) in pairwise(zip(fprs, pros, strict=True)):
        if x1 <= fpr_limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        elif x0 < fpr_limit:  # interpolate the curve AT the limit
            y_lim = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_lim) * (fpr_limit - x0)
            break
    return area / fpr_limit


# --------------------------------------------------------------------------- image level


def test_image_auroc_and_ap_match_sklearn():
    labels, scores = random_image_scores()
    assert metrics.image_auroc(labels, scores) == pytest.approx(
        roc_auc_score(labels, scores), abs=1e-9
    )
    assert metrics.average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-9
    )


def test_f1_max_matches_brute_force_over_thresholds():
    labels, scores = random_image_scores(seed=3)
    scores = np.round(scores, 1)  # ties too
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert metrics.f1_max(labels, scores) == pytest.approx(brute, abs=1e-9)


def test_torch_inputs_give_the_same_values_as_numpy():
    labels, scores = random_image_scores()
    expected = metrics.image_auroc(labels, scores)
    got = metrics.image_auroc(torch.tensor(labels), torch.tensor(scores, requires_grad=True))
    assert got == pytest.approx(expected, abs=1e-9)


def test_auroc_below_half_is_returned_raw_not_flipped():
    labels = np.array([0, 0, 1, 1])
    assert metrics.image_auroc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    masks = np.zeros((2, 4, 4))
    masks[1, :2] = 1
    assert metrics.pixel_auroc(masks, -masks) == 0.0


def test_perfect_scores_give_one_everywhere():
    masks, _ = smooth_maps_with_regions()
    labels = masks.reshape(len(masks), -1).max(1)
    result = metrics.evaluate(labels, labels * 2.0, masks[:, None], masks[:, None])
    assert set(result) == {
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "f1_max",
        "image_ap",
        "pixel_ap",
        "pixel_f1_max",
    }
    assert all(v == pytest.approx(1.0) for v in result.values()), result


# --------------------------------------------------------------------------- pixel level


def test_pixel_auroc_pools_all_pixels_and_accepts_channel_axis():
    masks, maps = smooth_maps_with_regions()
    expected = roc_auc_score(masks.reshape(-1), maps.reshape(-1))
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)
    assert metrics.pixel_auroc(
        torch.tensor(masks[:, None]), torch.tensor(maps[:, None])
    ) == pytest.approx(expected, abs=1e-9)


def test_aupro_matches_slow_reference_on_smooth_maps():
    masks, maps = smooth_maps_with_regions()
    thresholds = np.quantile(maps, np.linspace(0, 1, 400))
    expected = slow_reference_aupro(masks, maps, thresholds)
    assert 0.2 < expected < 0.99  # a non-trivial case
    assert metrics.aupro(masks, maps) == pytest.approx(expected, abs=1e-3)


def test_aupro_is_exact_with_ties_at_every_distinct_threshold():
    masks, maps = smooth_maps_with_regions(seed=1)
    maps = np.round(maps * 20) / 20  # few distinct values: many ties between pixels
    expected = slow_reference_aupro(masks, maps, np.unique(maps))
    assert metrics.aupro(masks, maps) == pytest.approx(expected, abs=1e-9)
    for limit in (0.05, 1.0):
        expected = slow_reference_aupro(masks, maps, np.unique(maps), fpr_limit=limit)
        assert metrics.aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_weights_small_regions_like_large_ones():
    masks = np.zeros((2, 20, 20))
    masks[1, :10, :10] = 1  # 100 pixels, found
    masks[1, 15, 15] = 1  # 1 pixel, missed
    maps = masks.copy()
    maps[1, 15, 15] = -1  # scored below every normal pixel
    # Pixel-wise 100 of 101 anomalous pixels are found, but only 1 of 2 regions.
    assert metrics.pixel_auroc(masks, maps) > 0.99
    assert metrics.aupro(masks, maps) == pytest.approx(0.5, abs=0.01)


def test_aupro_joins_diagonal_neighbours_into_one_region():
    masks = np.zeros((2, 6, 6))
    masks[1, 1:3, 1:3] = 1  # a 2x2 block ...
    masks[1, 3, 3] = 1  # ... and a pixel touching it only at a corner
    maps = masks.copy()
    maps[1, 3, 3] = 0  # the block is found, the corner pixel is not
    fpr, pro = metrics.pro_curve(masks, maps)
    # 8-connectivity (MVTec): one region of 5 pixels, 4 found -> PRO 0.8 at FPR 0.
    # (4-connectivity would see two regions, one found -> PRO 0.5.)
    assert (fpr[1], pro[1]) == (0.0, pytest.approx(0.8))


def test_pro_curve_runs_from_origin_to_one_one():
    masks, maps = smooth_maps_with_regions()
    fpr, pro = metrics.pro_curve(masks, maps)
    assert (fpr[0], pro[0]) == (0.0, 0.0)
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert len(fpr) == len(np.unique(maps)) + 1


# --------------------------------------------------------------------------- errors


def test_single_class_raises_an_actionable_error():
    with pytest.raises(ValueError, match="needs both normal and anomalous samples"):
        metrics.image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="needs both normal and anomalous samples"):
        metrics.pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="AUPRO needs both"):
        metrics.aupro(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))


def test_mismatched_lengths_and_shapes_raise():
    with pytest.raises(ValueError, match="labels has 3 entries but scores has 2"):
        metrics.image_auroc([0, 1, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="resize the anomaly maps"):
        metrics.pixel_auroc(np.zeros((2, 8, 8)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, 1, H, W\)"):
        metrics.aupro(np.zeros((8, 8)), np.zeros((8, 8)))


def test_nan_scores_raise():
    with pytest.raises(ValueError, match="NaN"):
        metrics.image_auroc([0, 1], [0.1, float("nan")])
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = np.nan
    masks = np.zeros((2, 4, 4))
    masks[1, 0, 0] = 1
    with pytest.raises(ValueError, match="maps contains 1 NaN"):
        metrics.aupro(masks, maps)
