"""MiniTex-AD's defect-free images: crops of real photographs and a rendered hex nut.

The three texture categories (``TEXTURE_CATEGORIES``) are crops of a fixed window of
``CROP_WINDOW`` pixels of the photographs scikit-image bundles (``brick``, ``grass``,
``gravel``), resized and mildly tinted (``TINTS``); train and test crops come from
disjoint quadrants of each photograph (``REGIONS``). The object category ``hexnut`` is a
metal nut rendered procedurally at a random position and rotation. ``render_normal`` makes
one image of any category (a ``NormalImage``: the image and where a defect may go). The
defects painted on these images are defects.py's; writing the data set is minitex.py's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, lru_cache

import numpy as np
from PIL import Image
from skimage import data as skdata

TEXTURE_CATEGORIES = ("brick", "grass", "gravel")
OBJECT_CATEGORIES = ("hexnut",)
CATEGORIES = TEXTURE_CATEGORIES + OBJECT_CATEGORIES
CROP_WINDOW = 160  # side of a texture crop in photo pixels (the photos are 512 x 512)
# (top, left, bottom, right) boxes of the photo: train and test take opposite chessboard quadrants.
REGIONS = {
    "train": ((0, 0, 256, 256), (256, 256, 512, 512)),
    "test": ((0, 256, 256, 512), (256, 0, 512, 256)),
}
# A mild colour for each grey photo: a per-channel gamma, rgb = 255 * (grey / 255) ** gamma
# (gamma < 1 lifts a channel, > 1 lowers it), so bricks turn red-brown and mortar beige.
TINTS = {"brick": (0.8, 1.3, 1.6), "grass": (1.4, 0.9, 1.9), "gravel": (0.97, 1.0, 1.06)}


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
