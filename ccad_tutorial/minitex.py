"""MiniTex-AD: a small, offline anomaly-detection data set in the MVTec-AD layout.

Why it exists
-------------
The book's reference benchmark, MVTec-AD, is licensed CC BY-NC-SA 4.0 and is 5 GB: we may
not ship it, and a reader without internet could not fetch it. MiniTex-AD is generated on
the reader's machine in a few seconds, from material that is already installed:

* three **texture** categories cut from the real photographs that scikit-image bundles in
  its wheel (``skimage.data.brick()``, ``grass()``, ``gravel()``, 512 x 512 grey levels,
  tinted mildly so the categories also differ in colour);
* one **object** category, ``hexnut``: a metal hex nut rendered procedurally, with random
  position and rotation (a notch in one flat makes the rotation visible), the way
  MVTec-AD contrasts textures (carpet, wood, ...) with objects (metal_nut, screw, ...).

Normal (train and test "good") images are crops of a fixed window of ``CROP_WINDOW`` photo
pixels, resized to ``size``, so the data set looks the same at every size. Train and test
crops come from DISJOINT regions of each photograph (the quadrants of a 2 x 2 chessboard,
see ``REGIONS``): a test image never shows a pixel that the model trained on.

Defective test images get one synthetic defect each (``DEFECT_TYPES``): a ``scratch``, a
``hole`` with a raised rim, a soft ``stain``, or a ``cutpaste`` patch of a foreign texture.
The ground-truth mask is exact: every pixel outside it is byte-identical to the clean
image, every pixel inside differs by at least ``MIN_CHANGE`` grey levels.

Layout on disk (the same as MVTec-AD, so ``datasets.load_dataset(root, "mvtec")`` reads it)::

    <out>/<category>/train/good/000.png
    <out>/<category>/test/good/000.png
    <out>/<category>/test/<defect>/000.png
    <out>/<category>/ground_truth/<defect>/000_mask.png      (uint8 0/255, one channel)
    <out>/minitex.json                                       (manifest, written last)

Usage::

    from ccad_tutorial.minitex import ensure_minitex
    root = ensure_minitex(size=128)      # generated once, then cached
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

GENERATOR_VERSION = 1
TEXTURE_CATEGORIES = ("brick", "grass", "gravel")
OBJECT_CATEGORIES = ("hexnut",)
CATEGORIES = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
DEFECT_TYPES = ("scratch", "hole", "stain", "cutpaste")
SIZE_RANGE = (64, 256)  # valid image sizes, multiples of 8
CROP_WINDOW = 160  # side of a texture crop in photo pixels (the photos are 512 x 512)
# (top, left, bottom, right) boxes of the photo: train and test take opposite chessboard quadrants.
REGIONS = {
    "train": ((0, 0, 256, 256), (256, 256, 512, 512)),
    "test": ((0, 256, 256, 512), (256, 0, 512, 256)),
}
# A mild colour for each grey photo: a per-channel gamma, rgb = 255 * (grey / 255) ** gamma
# (gamma < 1 lifts a channel, > 1 lowers it), so bricks turn red-brown and mortar beige.
TINTS = {"brick": (0.8, 1.3, 1.6), "grass": (1.4, 0.9, 1.9), "gravel": (0.97, 1.0, 1.06)}
DEFECT_AREA = (0.01, 0.08)  # fraction of the image a defect mask may cover
MIN_CHANGE = 3  # grey levels by which every masked pixel differs from the clean image
MANIFEST = "minitex.json"
DEFAULT_COUNTS = {"n_train": 120, "n_test_good": 50, "n_test_defect_per_type": 13}


@dataclass
class NormalImage:
    """A defect-free image and where defects may be placed on it.

    image: (H, W, 3) uint8 RGB.  region: (H, W) bool, True where a defect may go (the whole
    image for textures, the nut's metal for ``hexnut``).  source: how it was made (crop box
    ``[top, left, bottom, right]`` in photo pixels and flips, or the nut's pose).
    """

    image: np.ndarray
    region: np.ndarray
    source: dict = field(default_factory=dict)


# ---------------------------------------------------------------- normal images: textures


@cache
def _photo(name: str) -> np.ndarray:
    """The bundled skimage photograph ``name`` as (512, 512) uint8 (no download involved)."""
    return np.asarray(getattr(skdata, name)(), dtype=np.uint8)


def _texture_crop(category: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ``box`` of the category's photo, resize to (size, size), tint: (size, size, 3) float."""
    top, left, bottom, right = box
    crop = Image.fromarray(_photo(category)[top:bottom, left:right])
    grey = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)
    return 255 * (grey[..., None] / 255) ** np.asarray(TINTS[category])


def _random_box(rng: np.random.Generator, regions: Iterable[tuple[int, ...]]) -> tuple:
    """A CROP_WINDOW square box lying entirely inside one of ``regions`` (picked at random)."""
    regions = list(regions)
    top, left, bottom, right = regions[rng.integers(len(regions))]
    y = int(rng.integers(top, bottom - CROP_WINDOW + 1))
    x = int(rng.integers(left, right - CROP_WINDOW + 1))
    return (y, x, y + CROP_WINDOW, x + CROP_WINDOW)


def _texture_image(category: str, split: str, size: int, rng: np.random.Generator) -> NormalImage:
    """A normal texture crop from the ``split`` region, with flips and a small brightness jitter."""
    box = _random_box(rng, REGIONS[split])
    hflip, vflip = (bool(f) for f in rng.integers(0, 2, size=2))
    gain = rng.uniform(0.95, 1.05)
    image = _texture_crop(category, box, size) * gain
    image = image[:, ::-1] if hflip else image
    image = image[::-1] if vflip else image
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    source = {"box": list(box), "hflip": hflip, "vflip": vflip, "gain": round(gain, 4)}
    return NormalImage(image, np.ones((size, size), bool), source)


# ---------------------------------------------------------------- normal images: the hex nut

LIGHT = (-0.6, -0.8)  # (y, x) direction the light comes from: top left


def _coverage(signed_distance: np.ndarray, n: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the shape ``signed_distance < 0`` on an n x n canvas."""
    return np.clip(0.5 - signed_distance * n, 0.0, 1.0)


@lru_cache(maxsize=4)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of an (n, n) canvas as fractions of its side: (yy, xx) float32."""
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n
    return yy, xx


def _hexagon_distance(dy: np.ndarray, dx: np.ndarray, angle: float) -> np.ndarray:
    """(n, n) distance-like map of a hexagon: max over its 3 flat normals of |p . normal|."""
    out = np.zeros_like(dy)
    for a in (angle, angle + np.pi / 3, angle + 2 * np.pi / 3):
        np.maximum(out, np.abs(dy * float(np.sin(a)) + dx * float(np.cos(a))), out=out)
    return out


def _tray(n: int, dy: np.ndarray, dx: np.ndarray, angle: float, rng: np.random.Generator):
    """The (n, n) float background: a dark tray with slow blotches, grain and the nut's shadow."""
    blotch = Image.fromarray(rng.standard_normal((8, 8), dtype=np.float32), mode="F")
    blotch = np.asarray(blotch.resize((n, n), Image.Resampling.BICUBIC))
    tray = 62 + 3 * blotch + 1.5 * rng.standard_normal((n, n), dtype=np.float32)
    # a soft shadow: the hexagon moved away from the light, with a 0.03-wide penumbra
    far = _hexagon_distance(dy + 0.02, dx + 0.025, angle)
    return tray * (1 - 0.5 * np.clip((R_FLAT + 0.03 - far) / 0.06, 0, 1))


R_FLAT, R_THREAD, R_BORE = 0.28, 0.12, 0.085  # nut's flat-to-centre, thread and bore radii


def _hexnut_canvas(n: int, centre: np.ndarray, angle: float, rng: np.random.Generator) -> tuple:
    """Render the nut on an (n, n) canvas; return ((n, n, 3) float RGB, (n, n) float metal mask).

    All lengths are fractions of the image side, so the nut looks the same at every size.
    Flat ``angle`` faces the notch, which makes the rotation visible.
    """
    yy, xx = _grid(n)
    dy, dx = yy - float(centre[0]), xx - float(centre[1])  # python floats keep float32
    rho = np.hypot(dy, dx)
    notch_y, notch_x = R_FLAT * np.sin(angle), R_FLAT * np.cos(angle)  # middle of one flat
    notch = 1 - _coverage(np.hypot(dy - float(notch_y), dx - float(notch_x)) - 0.05, n)
    hexagon = _coverage(_hexagon_distance(dy, dx, angle) - R_FLAT, n)
    metal = hexagon * notch * (1 - _coverage(rho - R_BORE, n))
    radial = (dy * LIGHT[0] + dx * LIGHT[1]) / np.maximum(rho, 1e-6)  # +1 on the lit side
    face = 150 + 18 * radial * rho / R_FLAT + 4 * np.sin(2 * np.pi * rho / 0.02)  # turned face
    face = np.where(rho > 0.93 * R_FLAT, 145 + 55 * radial, face)  # outer chamfer, a cone
    face = np.where(rho < R_THREAD + 0.015, 120 - 60 * radial, face)  # hole chamfer, inwards
    threads = 45 + 25 * np.sin(np.pi * rho / 0.02) ** 2 - 40 * radial * (rho / R_THREAD)
    face = np.where(rho < R_THREAD, threads, face)
    tray = _tray(n, dy, dx, angle, rng)
    tray[rho < R_BORE] *= 0.45  # the tray seen through the bore lies in the nut's shadow
    rgb = (tray * (1 - metal))[..., None] * np.array([0.86, 0.93, 1.0], np.float32)
    rgb = rgb + (face * metal)[..., None] * np.array([1.0, 0.99, 0.95], np.float32)
    return rgb, metal * (rho > R_THREAD + 0.02)


def _hexnut_image(size: int, rng: np.random.Generator) -> NormalImage:
    """A normal hex nut: random centre (+-0.07 of the side) and rotation, rendered at 2x size.

    Returns image (size, size, 3) uint8 and region (size, size) bool = the nut's metal, outside
    the threaded hole (where defects go).
    """
    n = 2 * size  # supersampled canvas, downsampled with Lanczos (anti-aliasing)
    centre = 0.5 + rng.uniform(-0.07, 0.07, size=2)
    angle = float(rng.uniform(0, 2 * np.pi))
    rgb, metal = _hexnut_canvas(n, centre, angle, rng)
    rgb = np.clip(rgb * rng.uniform(0.96, 1.04), 0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS))
    metal_img = Image.fromarray((metal * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BOX
    )
    region = np.asarray(metal_img) >= 250  # pixels fully on the metal
    source = {
        "centre": [round(float(c), 4) for c in centre],
        "angle_deg": round(np.degrees(angle), 2),
    }
    return NormalImage(image.copy(), region, source)


def render_normal(category: str, split: str, size: int, rng: np.random.Generator) -> NormalImage:
    """One defect-free image of ``category`` for ``split`` ("train" or "test"); see NormalImage."""
    if category in TEXTURE_CATEGORIES:
        return _texture_image(category, split, size, rng)
    if category == "hexnut":
        return _hexnut_image(size, rng)
    raise ValueError(
        f"Unknown category {category!r}; valid categories are {', '.join(CATEGORIES)}."
    )


# ---------------------------------------------------------------- defects


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


# ---------------------------------------------------------------- writing the data set


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_args(size: int, seed: int, counts: dict, categories) -> tuple[str, ...]:
    """Validate make_minitex's arguments (ValueError with the valid range) -> category tuple."""
    lo, hi = SIZE_RANGE
    if not _is_int(size) or not lo <= size <= hi or size % 8:
        raise ValueError(
            f"size must be a multiple of 8 between {lo} and {hi} pixels; got {size!r}."
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")
    for name, value in counts.items():
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    cats = CATEGORIES if categories is None else categories
    cats = (cats,) if isinstance(cats, str) else tuple(dict.fromkeys(cats))
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown or not cats:
        raise ValueError(
            f"categories must name at least one of MiniTex-AD's categories, got {list(cats)}; "
            f"valid categories are {', '.join(CATEGORIES)}."
        )
    return cats


def _rng(seed: int, *names: str) -> np.random.Generator:
    """An independent, reproducible stream per (seed, category, split) (crc32: stable names)."""
    return np.random.default_rng([seed, *(zlib.crc32(s.encode()) for s in names)])


def _save(array: np.ndarray, path: Path) -> None:
    """Write (H, W, 3) RGB or (H, W) bool (as 0/255 L) to a PNG; bytes depend only on the array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(path, compress_level=1)  # fast zlib; smaller on noisy textures


def _write_category(out: Path, cat: str, size: int, seed: int, counts: dict) -> dict:
    """Write one category's train/test/ground_truth folders; return {relative path: source}."""
    sources = {}
    for split, folder, n in (
        ("train", "train/good", counts["n_train"]),
        ("test", "test/good", counts["n_test_good"]),
    ):
        rng = _rng(seed, cat, folder)
        for i in range(n):
            normal = render_normal(cat, split, size, rng)
            _save(normal.image, out / cat / folder / f"{i:03d}.png")
            sources[f"{cat}/{folder}/{i:03d}.png"] = normal.source
    for kind in DEFECT_TYPES:
        rng = _rng(seed, cat, "test", kind)
        for i in range(counts["n_test_defect_per_type"]):
            normal = render_normal(cat, "test", size, rng)
            image, mask = apply_defect(normal.image, kind, rng, normal.region, cat)
            _save(image, out / cat / "test" / kind / f"{i:03d}.png")
            _save(mask, out / cat / "ground_truth" / kind / f"{i:03d}_mask.png")
            sources[f"{cat}/test/{kind}/{i:03d}.png"] = normal.source
    return sources


def _manifest(size: int, seed: int, categories: tuple, counts: dict) -> dict:
    """The parameters that identify a generated data set (compared by ensure_minitex)."""
    return {
        "name": "MiniTex-AD",
        "generator_version": GENERATOR_VERSION,
        "size": size,
        "seed": seed,
        "categories": list(categories),
        "defect_types": list(DEFECT_TYPES),
        "counts": dict(counts),
    }


def make_minitex(
    out: str | os.PathLike,
    size: int = 128,
    seed: int = 0,
    n_train: int = 120,
    n_test_good: int = 50,
    n_test_defect_per_type: int = 13,
    categories: Iterable[str] | None = None,
) -> Path:
    """Generate MiniTex-AD under ``out`` (MVTec-AD layout, see the module docstring).

    Each category's folder ``<out>/<category>/`` is replaced; ``<out>/minitex.json`` (parameters
    and the source of every image: crop box or nut pose) is written last, atomically, so its
    presence means the generation finished. Same arguments -> byte-identical files.
    """
    counts = {"n_train": n_train, "n_test_good": n_test_good}
    counts["n_test_defect_per_type"] = n_test_defect_per_type
    cats = _check_args(size, seed, counts, categories)
    size, seed, counts = int(size), int(seed), {k: int(v) for k, v in counts.items()}
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    manifest = _manifest(size, seed, cats, counts)
    manifest["sources"] = {}
    for cat in cats:
        shutil.rmtree(out / cat, ignore_errors=True)
        manifest["sources"].update(_write_category(out, cat, size, seed, counts))
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, out / MANIFEST)
    return out


def default_cache_dir() -> Path:
    """Where generated data is cached: ``$CCAD_CACHE`` or ``~/.cache/ccad_tutorial``."""
    return Path(os.environ.get("CCAD_CACHE") or "~/.cache/ccad_tutorial").expanduser()


def _is_complete(root: Path, expected: dict) -> bool:
    """True if ``root`` holds a finished generation with exactly the ``expected`` parameters."""
    try:
        found = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    same = all(found.get(key) == value for key, value in expected.items())
    return same and all((root / cat).is_dir() for cat in expected["categories"])


def ensure_minitex(root: str | os.PathLike | None = None, size: int = 128, seed: int = 0) -> Path:
    """Return the folder of MiniTex-AD at ``size`` px, generating it only if needed.

    The folder is ``root`` if given, else ``default_cache_dir()/minitex-ad_s{size}_seed{seed}``.
    It is (re)generated with the default counts when its manifest is missing (e.g. an
    interrupted run) or records other parameters or another generator version.
    """
    _check_args(size, seed, DEFAULT_COUNTS, None)
    path = (
        Path(root).expanduser() if root else default_cache_dir() / f"minitex-ad_s{size}_seed{seed}"
    )
    if not _is_complete(path, _manifest(size, seed, CATEGORIES, DEFAULT_COUNTS)):
        make_minitex(path, size=size, seed=seed, **DEFAULT_COUNTS)
    return path


def validation_split(
    category: str, size: int = 128, seed: int = 0, n_good: int = 24, n_defect: int = 24
):  # -> datasets.Batch
    """A validation split for choices that must not see the test set (a guidance scale, a
    bank mode): normal crops from the TRAINING regions of the photograph (fresh crops, never
    the test regions) and as many with one ``smudge`` each, a defect family the test split
    does not use. Returns a ``datasets.Batch`` (defect type "good" or "smudge"), in memory.
    """
    import torch
    import torch.nn.functional as F

    from ccad_tutorial.datasets import Batch

    render = max(size, SIZE_RANGE[0])  # smaller sizes (quick runs) are rendered, then shrunk
    _check_args(render, seed, {"n_good": n_good, "n_defect": n_defect}, (category,))
    rng = _rng(seed, category, "validation")
    images, masks, kinds = [], [], []
    for i in range(n_good + n_defect):
        normal = render_normal(category, "train", render, rng)
        image, mask = normal.image, np.zeros(normal.image.shape[:2], bool)
        if i >= n_good:
            image, mask = apply_defect(normal.image, "smudge", rng, normal.region, category)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        masks.append(torch.from_numpy(mask)[None].float())
        kinds.append("good" if i < n_good else "smudge")
    images, masks = torch.stack(images), torch.stack(masks)
    if render != size:
        images = F.interpolate(images, size=(size, size), mode="area")
        masks = (F.interpolate(masks, size=(size, size), mode="area") > 0).float()
    return Batch(
        images=images,
        masks=masks,
        labels=torch.tensor([k != "good" for k in kinds], dtype=torch.long),
        defect_types=kinds,
        paths=[f"<validation {category} {i}>" for i in range(len(kinds))],
        categories=[category] * len(kinds),
    )
