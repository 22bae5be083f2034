"""Data: anomaly-detection data sets on disk -> tensors.

Seven folder layouts are understood (``LAYOUTS``); where the files of each one are is the job of
:mod:`ccad_tutorial.layouts` (one small indexer per layout, documented there). This module turns
the indexed files into tensors the same way for all of them:

- images: PIL -> float32 ``(3, H, W)`` in [0, 1]. Grayscale is repeated to 3 channels; RGBA
  (and LA, PA) lose their alpha channel (``Image.convert("RGB")`` keeps the colour values as they
  are, rather than compositing on black, because industrial images carry no meaningful
  transparency); 16-bit PNGs (``I;16``, ``I``) are divided by 65535, not clipped to 8 bits.
  Resized bilinear with antialiasing to ``image_size x image_size``.
- masks: ``(1, H, W)`` float32 in {0, 1}; a pixel is defect when its value is > 0 (>= 128 for the
  JPEG masks of re-organised DAGM); several masks of one image (MVTec LOCO) are united;
  nearest-neighbour resize so that values stay in {0, 1}. Normal images get all-zero masks.

Every problem with the files raises :class:`DataError` naming the file, the expected layout and
the fix. ``checks.check_dataset`` opens every file once and prints what it found; which
categories a root holds and the records of a split come from ``roots.index``.

Typical use::

    train = load_dataset("data/mvtec", "mvtec", "bottle", "train", image_size=128)
    loader = DataLoader(train, batch_size=16, collate_fn=collate_samples)
    test = load_split("data/mvtec", "mvtec", "bottle", "test")  # a Batch, whole split in memory
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.draw
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ccad_tutorial.layouts import LAYOUTS, DataError, Ellipse, Record
from ccad_tutorial.roots import index, resolve_categories

__all__ = [
    "LAYOUTS",
    "ADDataset",
    "Batch",
    "DataError",
    "Sample",
    "collate_samples",
    "ellipse_mask",
    "first_of_each_type",
    "list_categories",
    "load_dataset",
    "load_split",
    "read_image",
    "read_mask",
]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


@dataclass
class Sample:
    """One image of a split, ready for a model."""

    image: torch.Tensor  # (3, H, W) float32 in [0, 1]
    mask: torch.Tensor  # (1, H, W) float32 in {0., 1.}; zeros for normal images
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # "good" for normal images
    path: str
    category: str


@dataclass
class Batch:
    """Samples stacked along a first batch dimension (what :func:`collate_samples` returns)."""

    images: torch.Tensor  # (B, 3, H, W)
    masks: torch.Tensor  # (B, 1, H, W)
    labels: torch.Tensor  # (B,) long
    defect_types: list[str]
    paths: list[str]
    categories: list[str]

    def __len__(self) -> int:
        return len(self.paths)


# ---------------------------------------------------------------- pixels


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image; truncated or non-image files raise DataError."""
    try:
        with Image.open(path) as img:
            img.load()  # truncated PNGs/JPEGs only fail here, not in Image.open
            return img
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _unreadable(path, err) from err


def _unreadable(path: Path, err: Exception) -> DataError:
    return DataError(
        f"Cannot read the image {path} ({err}). The file is truncated or not an image: "
        "re-extract or re-download the data set, or delete the file."
    )


def read_image(path: str | Path) -> torch.Tensor:
    """Load an image file as a float32 ``(3, H, W)`` tensor in [0, 1] at its original size."""
    img = _open(Path(path))
    if img.mode in _SIXTEEN_BIT:  # 16-bit grayscale: full range is 0..65535
        gray = np.asarray(img).astype(np.float32) / 65535.0
        array = np.repeat(gray[..., None], 3, axis=2)
    elif img.mode == "F":  # 32-bit float images are taken as already in [0, 1]
        array = np.repeat(np.asarray(img, dtype=np.float32)[..., None], 3, axis=2)
    else:  # L, P, 1, RGB, RGBA, LA, CMYK, ...: RGBA -> RGB drops alpha, L -> 3 equal channels
        array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).clamp(0.0, 1.0)


def read_mask(path: str | Path, threshold: int = 1) -> np.ndarray:
    """Load a mask file as a boolean ``(H, W)`` array: defect where value >= ``threshold``.

    Palette images are read by palette index (index 0 = background); colour masks by their
    brightest channel; 0/1 and 0/255 masks both work with the default threshold of 1.
    """
    img = _open(Path(path))
    if img.mode in ("P", "L", "1", "F") or img.mode in _SIXTEEN_BIT:
        values = np.asarray(img)
    else:
        values = np.asarray(img.convert("RGB")).max(axis=2)
    return values >= threshold


def ellipse_mask(shape: tuple[int, int], ellipse: Ellipse) -> np.ndarray:
    """Rasterise a DAGM 2007 weak label into a boolean ``(H, W)`` mask.

    Convention (uses ``skimage.draw.ellipse``, whose ``rotation`` turns the ellipse
    counter-clockwise *as the image is displayed*, rows growing downwards): at rotation 0 the
    semi-major axis lies along x (the columns), so ``r_radius=semi_minor, c_radius=semi_major``;
    a rotation of +pi/4 points the major axis from bottom-left to top-right on screen, which is
    the usual mathematical angle with the y axis pointing up. The centre (x, y) is taken as
    0-based pixel coordinates. The DAGM files do not state the sign of the angle; if the labels
    look mirrored on real data, negate ``rotation`` here. Weak labels are coarse anyway.
    """
    mask = np.zeros(shape, dtype=bool)
    rows, cols = skimage.draw.ellipse(
        ellipse.y,
        ellipse.x,
        max(ellipse.semi_minor, 0.5),
        max(ellipse.semi_major, 0.5),
        shape=shape,
        rotation=ellipse.rotation,
    )
    mask[rows, cols] = True
    return mask


def _size_mismatch(image: Path, image_size: tuple, mask: Path, mask_size: tuple) -> DataError:
    return DataError(
        f"The mask {mask} is {mask_size[0]}x{mask_size[1]} pixels but its image {image} is "
        f"{image_size[0]}x{image_size[1]}; a mask must have the size of its image. "
        "Re-extract the data set, or resize/replace the mask."
    )


def _record_mask(record: Record, height: int, width: int) -> np.ndarray:
    """The boolean ``(H, W)`` mask of a record at its original image size."""
    if record.ellipse is not None:
        return ellipse_mask((height, width), record.ellipse)
    mask = np.zeros((height, width), dtype=bool)
    for path in record.masks:
        part = read_mask(path, record.mask_threshold)
        if part.shape != mask.shape:
            raise _size_mismatch(record.image, (width, height), path, part.shape[::-1])
        mask |= part
    return mask


def _resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(3, H, W) -> (3, size, size)``; mirrors ``torchvision...resize(antialias=True)``."""
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)
    return out[0].clamp(0.0, 1.0)


def _resize_mask(mask: np.ndarray, size: int) -> torch.Tensor:
    """``(H, W)`` bool -> ``(1, size, size)`` float in {0, 1}, nearest neighbour (as PIL NEAREST)."""
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    return F.interpolate(tensor, size=(size, size), mode="nearest-exact")[0]


def load_sample(record: Record, image_size: int = 128) -> Sample:
    """Read one record's image and mask and resize both to ``image_size x image_size``."""
    image = read_image(record.image)
    mask = _record_mask(record, image.shape[1], image.shape[2])
    return Sample(
        image=_resize_image(image, image_size),
        mask=_resize_mask(mask, image_size),
        label=record.label,
        defect_type=record.defect_type,
        path=str(record.image),
        category=record.category,
    )


# ---------------------------------------------------------------- data sets


class ADDataset(Dataset):
    """A split of an anomaly-detection data set; ``dataset[i]`` is a :class:`Sample`.

    Build it with :func:`load_dataset`. Files are read lazily, one sample at a time.
    """

    def __init__(self, records: list[Record], image_size: int = 128):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
        self.records = list(records)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        return load_sample(self.records[i], self.image_size)

    @property
    def labels(self) -> list[int]:
        """``(N,)`` image labels (0 normal, 1 anomalous) without reading any pixel."""
        return [r.label for r in self.records]

    @property
    def categories(self) -> list[str]:
        return sorted({r.category for r in self.records})

    def __repr__(self) -> str:
        counts = Counter(r.defect_type for r in self.records)
        return f"ADDataset({len(self)} images, {self.image_size} px, {dict(counts)})"


def load_dataset(
    root: str | Path,
    layout: str = "mvtec",
    category: str | None = None,
    split: str = "train",
    image_size: int = 128,
    *,
    split_csv: str | Path | None = None,
) -> ADDataset:
    """A torch ``Dataset`` of :class:`Sample` s for one split.

    ``layout`` is one of ``LAYOUTS``; the folder tree of each is documented in
    :mod:`ccad_tutorial.layouts` (for ``dagm`` both the re-organised 4-class layout with JPEG
    masks and the original 10-class DAGM 2007 with elliptical weak labels, detected per class).
    ``category=None`` takes every category of the data set (the multi-class setting);
    ``split_csv`` overrides where the VisA split file is read (default
    ``<root>/split_csv/1cls.csv``). The file tree is indexed now (missing masks and bad folders
    fail here); pixels are read when a sample is requested.
    """
    return ADDataset(index(root, layout, category, split, split_csv), image_size)


def collate_samples(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (use as ``DataLoader(collate_fn=collate_samples)``)."""
    if not samples:
        raise ValueError("collate_samples needs at least one sample.")
    return Batch(
        images=torch.stack([s.image for s in samples]),
        masks=torch.stack([s.mask for s in samples]),
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        defect_types=[s.defect_type for s in samples],
        paths=[s.path for s in samples],
        categories=[s.category for s in samples],
    )


def first_of_each_type(batch, normal: int, defective: int):
    """A smaller ``datasets.Batch``: the first ``normal`` good images and the first
    ``defective`` images of each defect type, in the batch's order."""
    seen, keep = Counter(), []
    for i, kind in enumerate(batch.defect_types):
        seen[kind] += 1
        if seen[kind] <= (normal if kind == "good" else defective):
            keep.append(i)
    return Batch(
        batch.images[keep],
        batch.masks[keep],
        batch.labels[keep],
        *([getattr(batch, f)[i] for i in keep] for f in ("defect_types", "paths", "categories")),
    )


def load_split(
    root: str | Path,
    layout: str = "mvtec",
    category: str | None = None,
    split: str = "train",
    image_size: int = 128,
    *,
    split_csv: str | Path | None = None,
) -> Batch:
    """The whole split in memory as one :class:`Batch`: images ``(N, 3, S, S)``, masks ``(N, 1, S, S)``."""
    dataset = load_dataset(root, layout, category, split, image_size, split_csv=split_csv)
    return collate_samples([dataset[i] for i in range(len(dataset))])


def list_categories(root: str | Path, layout: str = "mvtec") -> list[str]:
    """Category names under ``root`` in natural order (``["magnetic_tile"]`` for mtd).

    Raises DataError when there are none, saying whether ``root`` is one level too high or too
    low, or what was expected instead.
    """
    return resolve_categories(Path(root).expanduser(), layout, None)
