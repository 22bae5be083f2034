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

Normal (train and test "good") images are crops of a fixed window of
``normal_images.CROP_WINDOW`` photo pixels, resized to ``size``, so the data set looks the
same at every size. Train and test crops come from DISJOINT regions of each photograph (the
quadrants of a 2 x 2 chessboard, see ``normal_images.REGIONS``): a test image never shows a
pixel that the model trained on.

Defective test images get one synthetic defect each (``defects.DEFECT_TYPES``): a
``scratch``, a ``hole`` with a raised rim, a soft ``stain``, or a ``cutpaste`` patch of a
foreign texture. The ground-truth mask is exact: every pixel outside it is byte-identical to
the clean image, every pixel inside differs by at least ``defects.MIN_CHANGE`` grey levels.

Where the parts are: normal_images.py renders the defect-free images (``render_normal``),
defects.py paints the defects (``apply_defect``), and this module writes the data set
(``make_minitex``), caches it (``ensure_minitex``) and makes the validation split.

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
from pathlib import Path

import numpy as np
from PIL import Image

from ccad_tutorial.defects import DEFECT_TYPES, apply_defect
from ccad_tutorial.normal_images import CATEGORIES, render_normal
from ccad_tutorial.runs import atomic_write

GENERATOR_VERSION = 1
SIZE_RANGE = (64, 256)  # valid image sizes, multiples of 8
MANIFEST = "minitex.json"
DEFAULT_COUNTS = {"n_train": 120, "n_test_good": 50, "n_test_defect_per_type": 13}


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
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
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
