"""MiniTex-AD's synthetic defects, painted on a clean image with an exact mask.

``apply_defect`` adds one defect of a kind (``DEFECT_TYPES``: a ``scratch``, a ``hole``
with a raised rim, a soft ``stain``, a ``cutpaste`` patch of a foreign texture; the
validation split's ``smudge``, ``VALIDATION_DEFECTS``) and returns the defective image and
its mask: every pixel outside the mask is byte-identical to the clean image, every pixel
inside differs by at least ``MIN_CHANGE`` grey levels, and the mask covers
``DEFECT_AREA`` of the image. The clean images are normal_images.py's; the data set that
uses both is written by minitex.py.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import draw

from ccad_tutorial.normal_images import LIGHT, TEXTURE_CATEGORIES, _random_box, _texture_crop

DEFECT_TYPES = ("scratch", "hole", "stain", "cutpaste")
DEFECT_AREA = (0.01, 0.08)  # fraction of the image a defect mask may cover
MIN_CHANGE = 3  # grey levels by which every masked pixel differs from the clean image


def _blob(hw: tuple, centre: tuple, radius: float, rng: np.random.Generator, rough: float):
    """An irregular filled blob, (H, W) bool: a polygon whose radius wobbles with 3 harmonics."""
    theta = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    r = np.ones_like(theta)
    for k in (2, 3, 5):
        r += rough / k * rng.uniform(0.3, 1.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    squash = rng.uniform(0.7, 1.0)  # a little elongated, in a random direction
    tilt = rng.uniform(0, np.pi)
    u, v = radius * r * np.cos(theta), radius * r * squash * np.sin(theta)
    rows = centre[0] + u * np.sin(tilt) + v * np.cos(tilt)
    cols = centre[1] + u * np.cos(tilt) - v * np.sin(tilt)
    mask = np.zeros(hw, bool)
    mask[draw.polygon(rows, cols, hw)] = True  # skimage.draw.polygon clips to the image
    return mask


def _pick_centre(region: np.ndarray, radius: float, rng: np.random.Generator) -> tuple:
    """A random pixel of ``region`` at least ~0.7 radius from its edge (and the image border)."""
    inside = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    ok = np.flatnonzero(inside >= min(0.7 * radius, inside.max()))
    y, x = np.unravel_index(ok[rng.integers(len(ok))], region.shape)
    return float(y), float(x)


def _walk(region: np.ndarray, start: tuple, length: float, rng: np.random.Generator) -> np.ndarray:
    """A gently bending path of ~``length`` px inside ``region``, (K, 2) float (row, col).

    It ends at the image border, steers around the region's other edges (the nut's outline and
    hole) and stops where it cannot; apply_defect redraws a scratch that came out too short.
    """
    step, heading = 0.04 * region.shape[0], rng.uniform(0, 2 * np.pi)
    bend = rng.uniform(-0.06, 0.06)  # a steady curvature, so the scratch is an arc
    points = [np.array(start)]
    for _ in range(int(length / step)):
        heading += bend + rng.uniform(-0.08, 0.08)
        for turn in (0.0, 0.3, -0.3, 0.6, -0.6, 0.9, -0.9):
            y, x = points[-1] + step * np.array([np.sin(heading + turn), np.cos(heading + turn)])
            if not (0 <= y < region.shape[0] and 0 <= x < region.shape[1]):
                return np.array(points)  # ran off the image
            if region[int(y), int(x)]:
                heading += turn
                points.append(np.array([y, x]))
                break
        else:
            break
    return np.array(points)


def _scratch(img: np.ndarray, region: np.ndarray, rng: np.random.Generator, **_) -> tuple:
    """A thin, bending polyline, lighter or darker than the surface. Returns (candidate, shape)."""
    size = img.shape[0]
    path = _walk(region, _pick_centre(region, 0.3 * size, rng), rng.uniform(0.6, 1.0) * size, rng)
    line = np.zeros(region.shape, bool)
    for (r0, c0), (r1, c1) in zip(path[:-1].astype(int), path[1:].astype(int), strict=True):
        line[draw.line(r0, c0, r1, c1)] = True  # skimage.draw.line: Bresenham
    width = max(2, round(size / 40))  # 2 px at 64, 3 at 128, 6 at 256
    offsets = np.arange(width) - (width - 1) / 2
    pen = np.hypot(*np.meshgrid(offsets, offsets)) <= width / 2  # a round brush, (w, w) bool
    shape = ndimage.binary_dilation(line, structure=pen)
    sign = rng.choice([-1.0, 1.0])
    return img + sign * rng.uniform(55, 90), shape


def _hole(img: np.ndarray, region: np.ndarray, rng: np.random.Generator, **_) -> tuple:
    """A dark pit lit on its far wall, with a bright raised rim. Returns (candidate, shape)."""
    size = img.shape[0]
    radius = rng.uniform(0.06, 0.1) * size
    cy, cx = _pick_centre(region, radius, rng)
    pit = _blob(region.shape, (cy, cx), radius, rng, rough=0.25)
    rim = ndimage.binary_dilation(pit, iterations=max(1, size // 64)) & ~pit
    yy, xx = np.mgrid[0 : region.shape[0], 0 : region.shape[1]]
    far_wall = np.clip(-((yy - cy) * LIGHT[0] + (xx - cx) * LIGHT[1]) / radius, 0, 1)
    inner = img * rng.uniform(0.12, 0.25) + 12 + 45 * far_wall[..., None]
    candidate = np.where(pit[..., None], inner, img)
    candidate = np.where(rim[..., None], 0.5 * img + 0.5 * 235, candidate)
    return candidate, pit | rim


STAIN_COLOURS = {"oil": (-60, -55, -45), "rust": (20, -25, -55), "bleach": (50, 50, 45)}


def _stain(img: np.ndarray, region: np.ndarray, rng: np.random.Generator, **_) -> tuple:
    """A soft-edged irregular colour change (oil, rust or bleach). Returns (candidate, shape)."""
    size = img.shape[0]
    radius = rng.uniform(0.08, 0.13) * size
    blob = _blob(region.shape, _pick_centre(region, radius, rng), radius, rng, rough=0.5)
    alpha = ndimage.gaussian_filter(blob.astype(float), sigma=0.3 * radius)
    alpha = alpha / max(alpha.max(), 1e-6) * rng.uniform(0.8, 1.0)
    bright = img[blob & region].mean() > 120  # bleach would clip at 255 there: not visible
    names = [c for c in STAIN_COLOURS if c != "bleach" or not bright]
    colour = np.asarray(STAIN_COLOURS[names[rng.integers(len(names))]], dtype=float)
    return img + alpha[..., None] * colour, alpha > 0.15


def _cutpaste(
    img: np.ndarray, region: np.ndarray, rng: np.random.Generator, category: str | None = None
) -> tuple:
    """An irregular patch of ANOTHER category's photograph at the local mean brightness."""
    size = img.shape[0]
    radius = rng.uniform(0.07, 0.12) * size
    shape = _blob(region.shape, _pick_centre(region, radius, rng), radius, rng, rough=0.4)
    donors = [c for c in TEXTURE_CATEGORIES if c != category]
    donor = donors[rng.integers(len(donors))]
    patch = _texture_crop(donor, _random_box(rng, [(0, 0, 512, 512)]), size)
    patch += img[shape].mean() - patch[shape].mean()  # same mean brightness, foreign texture/hue
    return np.where(shape[..., None], patch, img), shape


def _smudge(img: np.ndarray, region: np.ndarray, rng: np.random.Generator, **_) -> tuple:
    """A blurred, lightened or darkened blob: the VALIDATION family (never in the test set)."""
    size = img.shape[0]
    radius = rng.uniform(0.08, 0.12) * size
    shape = _blob(region.shape, _pick_centre(region, radius, rng), radius, rng, rough=0.4)
    blurred = ndimage.gaussian_filter(img, sigma=(0.15 * radius, 0.15 * radius, 0))
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(25, 45)
    return np.where(shape[..., None], blurred + shift, img), shape


DEFECTS = {"scratch": _scratch, "hole": _hole, "stain": _stain, "cutpaste": _cutpaste}
# Defect families of the validation split only: choices made on them never saw the test set.
VALIDATION_DEFECTS = {"smudge": _smudge}


def _commit(image: np.ndarray, candidate: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Quantise the defect to uint8 so that the mask ``shape`` is pixel-exact.

    Outside ``shape`` the clean bytes are kept. Inside, a pixel the defect left (nearly) unchanged
    (e.g. a black pixel under a dark stain) is nudged by MIN_CHANGE levels towards mid-grey.
    """
    out = np.clip(np.rint(candidate), 0, 255)
    weak = shape & (np.abs(out - image).max(-1) < MIN_CHANGE)
    towards_mid = np.where(image[weak] < 128, MIN_CHANGE, -MIN_CHANGE)
    out[weak] = image[weak] + towards_mid
    return np.where(shape[..., None], out, image).astype(np.uint8)


def apply_defect(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    region: np.ndarray | None = None,
    category: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add one defect of ``kind`` (one of DEFECT_TYPES) to a clean image.

    image: (H, W, 3) uint8, not modified.
    region: (H, W) bool where the defect may lie (default: everywhere).
    category: the image's own category, never used as the cutpaste donor.
    Returns (defective image (H, W, 3) uint8, mask (H, W) bool): pixels outside
    the mask are identical to ``image``, pixels inside differ by >= MIN_CHANGE
    levels in some channel, and the mask covers DEFECT_AREA (1-8 %) of the
    image (shapes are redrawn until it does).
    """
    families = {**DEFECTS, **VALIDATION_DEFECTS}
    if kind not in families:
        valid = ", ".join(families)
        raise ValueError(f"Unknown defect type {kind!r}; valid ones are {valid}.")
    region = np.ones(image.shape[:2], bool) if region is None else region
    clean = image.astype(np.float64)
    for _ in range(100):
        candidate, shape = families[kind](clean, region, rng, category=category)
        shape &= region
        if DEFECT_AREA[0] <= shape.mean() <= DEFECT_AREA[1]:
            return _commit(image, candidate, shape), shape
    low, high = DEFECT_AREA
    raise RuntimeError(
        f"Could not place a {kind} covering {low:.0%}-{high:.0%} of the image "
        "inside `region` in 100 tries; pass a larger region (or none)."
    )
