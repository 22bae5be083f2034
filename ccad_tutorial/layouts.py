"""Where the files are: one indexer per published data-set layout.

An indexer walks one category of one split and returns :class:`Record` s: paths and labels,
no pixels (``datasets.py`` turns records into tensors). Every indexer has the signature
``_index_<layout>(root, category, split) -> list[Record]``; ``roots.index`` dispatches to
them (``INDEXERS``), after finding the categories of the root.

Layouts (``<root>`` is what the user passes as ``--data`` / ``DATA_ROOT``):

- ``mvtec`` / ``minitex``: ``<root>/<cat>/train/good/*.png``, ``<root>/<cat>/test/<defect>/*.png``,
  masks ``<root>/<cat>/ground_truth/<defect>/<stem>_mask.png``.
- ``visa``: ``<root>/<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, masks
  ``<root>/<cat>/Data/Masks/Anomaly/<stem>.png``; the split comes from the official 1-class split
  file ``<root>/split_csv/1cls.csv`` (columns ``object,split,label,image,mask``).
- ``loco``: like mvtec with ``test/{good,logical_anomalies,structural_anomalies}``; every test
  image has a folder of masks ``ground_truth/<type>/<stem>/000.png, 001.png, ...`` (their union
  is the image's mask).
- ``mvtec3d`` (RGB only): ``<cat>/train/good/rgb/*.png``, ``<cat>/test/<type>/rgb/*.png``, masks
  ``<cat>/test/<type>/gt/<stem>.png``; the ``xyz`` point clouds are ignored.
- ``mtd`` (magnetic tile, one category called ``magnetic_tile``): ``<root>/Train/good``,
  ``<root>/Test/{good,anomal}``, masks ``<root>/Ground_Truth/anomal/<stem>.png``.
- ``dagm``: two variants, detected per class folder.
  (a) re-organised (as in the CCAD code): ``<root>/<Class1_defect|...>/{train/good, test/good,
  test/anomal, ground_truth/anomal/<stem>.<png|jpg|bmp>}``; masks are JPEGs, so a pixel is defect
  when its value is >= 128 (``> 0`` would turn JPEG ringing into defects).
  (b) original DAGM 2007: ``<root>/Class1..Class10/{Train,Test}/NNNN.PNG`` with
  ``{Train,Test}/Label/Labels.txt``. Its first line is a header; each row reads
  ``index flag filename semi-major semi-minor rotation(rad) x y``. Flag 1 marks a defective image
  whose weak label is that ellipse (rasterised by ``datasets.ellipse_mask``). "train" holds the
  Train images that are *not* defective (the unsupervised setting), "test" all Test images.
  A row ``index 1 filename 0 NNNN_label.PNG`` (the variant with label images) is accepted too.
"""

from __future__ import annotations

import csv
import glob
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LAYOUTS = ("mvtec", "visa", "loco", "mvtec3d", "mtd", "dagm", "minitex")
SPLITS = ("train", "test")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MTD_CATEGORY = "magnetic_tile"
VISA_SPLIT_CSV = Path("split_csv") / "1cls.csv"

_MVTEC_TEXT = (
    "<root>/<category>/train/good/*.png, <root>/<category>/test/<defect>/*.png and "
    "<root>/<category>/ground_truth/<defect>/<stem>_mask.png"
)
EXPECTED = {  # quoted in every error message, so the reader sees what the loader looks for
    "mvtec": _MVTEC_TEXT,
    "minitex": _MVTEC_TEXT,
    "visa": "<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG, masks "
    "<root>/<category>/Data/Masks/Anomaly/<stem>.png and the split file <root>/split_csv/1cls.csv",
    "loco": "<root>/<category>/train/good/*.png, <root>/<category>/test/<type>/*.png and masks "
    "<root>/<category>/ground_truth/<type>/<stem>/000.png",
    "mvtec3d": "<root>/<category>/train/good/rgb/*.png, <root>/<category>/test/<type>/rgb/*.png "
    "and masks <root>/<category>/test/<type>/gt/<stem>.png",
    "mtd": "<root>/Train/good/*, <root>/Test/{good,anomal}/* and "
    "<root>/Ground_Truth/anomal/<stem>.png",
    "dagm": "<root>/<class>/{train/good, test/good, test/anomal, ground_truth/anomal/<stem>.png} "
    "(re-organised) or <root>/Class1..Class10/{Train,Test}/*.PNG with "
    "{Train,Test}/Label/Labels.txt (original DAGM 2007)",
}


class DataError(ValueError):
    """Bad data on disk. The message names the file, the expected layout and the fix."""


@dataclass(frozen=True)
class Ellipse:
    """A DAGM 2007 weak label: semi-axes and centre in pixels, rotation in radians."""

    semi_major: float
    semi_minor: float
    rotation: float
    x: float
    y: float


@dataclass(frozen=True)
class Record:
    """One image of a split, before loading: where it is and what it is."""

    image: Path
    label: int  # 0 normal, 1 anomalous
    defect_type: str  # "good" for normal images
    category: str
    masks: tuple[Path, ...] = ()  # several for loco (their union is the mask)
    mask_threshold: int = 1  # a mask pixel is defect when its value >= this
    ellipse: Ellipse | None = None  # original DAGM weak label instead of mask files


def natural_key(name: str) -> tuple[list, str]:
    """Sort key that puts ``Class2`` before ``Class10`` (ties broken by the exact name)."""
    parts = re.split(r"(\d+)", name)
    return [int(p) if p.isdigit() else p.lower() for p in parts], name


def is_image(path: Path) -> bool:
    """True for a visible file with an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def _images(folder: Path, layout: str, required: bool = False) -> list[Path]:
    """Image files directly inside ``folder``, in natural order."""
    if not folder.is_dir():
        raise DataError(
            f"The folder {folder} is missing. Expected the {layout} layout: {EXPECTED[layout]}."
        )
    found = sorted((p for p in folder.iterdir() if p.is_file() and is_image(p)), key=_name_key)
    if required and not found:
        raise DataError(
            f"The folder {folder} holds no images ({' '.join(IMAGE_EXTS)}). Expected the "
            f"{layout} layout: {EXPECTED[layout]}. Copy the images there or fix --data."
        )
    return found


def _name_key(path: Path) -> tuple[list, str]:
    return natural_key(path.name)


def _subdirs(folder: Path, layout: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(
            f"The folder {folder} is missing. Expected the {layout} layout: {EXPECTED[layout]}."
        )
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=_name_key)


def missing_mask(image: Path, expected: Path, layout: str) -> DataError:
    return DataError(
        f"The defect image {image} has no mask: expected {expected}. Expected the {layout} "
        f"layout: {EXPECTED[layout]}. Restore the mask (re-extract the data set) or remove the image."
    )


def _mask_file(folder: Path, names: tuple[str, ...], image: Path, layout: str) -> Path:
    """The mask ``folder/<name>.png`` for the first name that exists (any image extension)."""
    for name in names:
        if (folder / f"{name}.png").is_file():
            return folder / f"{name}.png"
        for candidate in sorted(folder.glob(glob.escape(name) + ".*"), key=_name_key):
            if is_image(candidate):
                return candidate
    raise missing_mask(image, folder / f"{names[0]}.png", layout)


# (defect type, image path) -> the mask files of that image
MaskFinder = Callable[[str, Path], tuple[Path, ...]]


def _index_tree(
    category: str,
    train_dir: Path,
    test_dir: Path,
    split: str,
    find_masks: MaskFinder,
    layout: str,
    image_sub: str = "",
    threshold: int = 1,
) -> list[Record]:
    """The shared walk of the folder-per-defect-type layouts (mvtec, loco, mvtec3d, mtd, dagm)."""
    if split == "train":
        images = _images(train_dir / image_sub, layout, required=True)
        return [Record(p, 0, "good", category) for p in images]
    records = []
    for type_dir in _subdirs(test_dir, layout):
        for p in _images(type_dir / image_sub, layout):
            if type_dir.name == "good":
                records.append(Record(p, 0, "good", category))
            else:
                masks = find_masks(type_dir.name, p)
                records.append(Record(p, 1, type_dir.name, category, masks, threshold))
    return records


def _index_mvtec(root: Path, category: str, split: str) -> list[Record]:
    cat = root / category

    def masks(defect: str, image: Path) -> tuple[Path, ...]:
        return (_mask_file(cat / "ground_truth" / defect, (f"{image.stem}_mask",), image, "mvtec"),)

    return _index_tree(category, cat / "train" / "good", cat / "test", split, masks, "mvtec")


def _index_loco(root: Path, category: str, split: str) -> list[Record]:
    cat = root / category

    def masks(defect: str, image: Path) -> tuple[Path, ...]:
        folder = cat / "ground_truth" / defect / image.stem
        found = _images(folder, "loco") if folder.is_dir() else []
        if not found:
            raise missing_mask(image, folder / "000.png", "loco")
        return tuple(found)

    return _index_tree(category, cat / "train" / "good", cat / "test", split, masks, "loco")


def _index_mvtec3d(root: Path, category: str, split: str) -> list[Record]:
    cat = root / category

    def masks(defect: str, image: Path) -> tuple[Path, ...]:
        return (_mask_file(cat / "test" / defect / "gt", (image.stem,), image, "mvtec3d"),)

    train, test = cat / "train" / "good", cat / "test"
    return _index_tree(category, train, test, split, masks, "mvtec3d", image_sub="rgb")


def _index_mtd(root: Path, category: str, split: str) -> list[Record]:
    def masks(defect: str, image: Path) -> tuple[Path, ...]:
        names = (image.stem, f"{image.stem}_mask")
        return (_mask_file(root / "Ground_Truth" / defect, names, image, "mtd"),)

    return _index_tree(category, root / "Train" / "good", root / "Test", split, masks, "mtd")


def _index_dagm(root: Path, category: str, split: str) -> list[Record]:
    cat = root / category
    if not (cat / "train" / "good").is_dir():
        return _index_dagm_original(cat, category, split)

    def masks(defect: str, image: Path) -> tuple[Path, ...]:
        names = (image.stem, f"{image.stem}_mask")
        return (_mask_file(cat / "ground_truth" / defect, names, image, "dagm"),)

    # JPEG masks: threshold at 128, not > 0 (compression ringing is not a defect)
    train, test = cat / "train" / "good", cat / "test"
    return _index_tree(category, train, test, split, masks, "dagm", threshold=128)


def _index_dagm_original(cat: Path, category: str, split: str) -> list[Record]:
    """Original DAGM 2007: train = non-defective Train images, test = all Test images."""
    folder = cat / ("Train" if split == "train" else "Test")
    weak = read_dagm_labels(folder / "Label" / "Labels.txt")
    records = []
    for image in _images(folder, "dagm", required=True):
        label = weak.get(image.name.lower())
        if label is None:
            records.append(Record(image, 0, "good", category))
        elif split == "test" and isinstance(label, Ellipse):
            records.append(Record(image, 1, "anomal", category, ellipse=label))
        elif split == "test":
            if not label.is_file():
                raise missing_mask(image, label, "dagm")
            records.append(Record(image, 1, "anomal", category, (label,)))
    return records


def read_dagm_labels(path: Path) -> dict[str, Ellipse | Path]:
    """Parse an original DAGM ``Labels.txt``: lower-cased file name -> weak label of each defect.

    Rows: ``index flag filename semi-major semi-minor rotation(rad) x y`` (line 1 is a header).
    Rows with flag 0 are normal images and are left out of the result.
    """
    if not path.is_file():
        raise DataError(
            f"The DAGM label file {path} is missing. The original DAGM 2007 layout keeps one "
            f"Label/Labels.txt in every Train/ and Test/ folder: {EXPECTED['dagm']}."
        )
    weak: dict[str, Ellipse | Path] = {}
    for number, line in enumerate(path.read_text().splitlines()[1:], start=2):
        parts = line.split()
        if len(parts) < 3 or parts[1] != "1":
            continue
        try:
            if len(parts) >= 8:
                weak[parts[2].lower()] = Ellipse(*(float(v) for v in parts[3:8]))
                continue
        except ValueError:
            pass
        if len(parts) >= 5 and is_image(Path(parts[4])):
            weak[parts[2].lower()] = path.parent / parts[4]
            continue
        raise DataError(
            f"{path}, line {number}: {parts[2]} is flagged defective but the row is not "
            "'index flag filename semi-major semi-minor rotation x y'. Fix or restore the file."
        )
    return weak


def _index_visa(
    root: Path, category: str, split: str, split_csv: str | Path | None = None
) -> list[Record]:
    """VisA: which image is train/test and normal/anomaly comes from the split CSV."""
    csv_path = Path(split_csv) if split_csv is not None else root / VISA_SPLIT_CSV
    records = []
    for row in read_visa_split(csv_path):
        if row["object"] != category or row["split"] != split:
            continue
        image = root / row["image"]
        if not image.is_file():
            raise DataError(
                f"The split file {csv_path} lists {image}, which does not exist. Point --data at "
                f"the VisA root (the folder that holds split_csv/ and the category folders)."
            )
        if row["label"] == "normal":
            records.append(Record(image, 0, "good", category))
            continue
        default_mask = root / category / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
        mask = root / row["mask"] if row.get("mask") else default_mask
        if not mask.is_file():
            raise missing_mask(image, mask, "visa")
        records.append(Record(image, 1, "anomaly", category, (mask,)))
    return sorted(records, key=lambda r: natural_key(str(r.image)))


def read_visa_split(csv_path: Path) -> list[dict[str, str]]:
    """Rows of the VisA split file (columns ``object,split,label,image,mask``)."""
    if not csv_path.is_file():
        raise DataError(
            f"The VisA split file {csv_path} is missing. It ships with the VisA download and the "
            "VisA repository (github.com/amazon-science/spot-diff, split_csv/1cls.csv): copy it "
            f"to <root>/{VISA_SPLIT_CSV.as_posix()} or pass split_csv=<path>."
        )
    with csv_path.open(newline="") as handle:
        rows = [
            {k.strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)
        ]
    missing = {"object", "split", "label", "image", "mask"} - set(rows[0] if rows else {})
    if missing:
        raise DataError(
            f"The VisA split file {csv_path} lacks the columns {sorted(missing)}; expected the "
            "official header 'object,split,label,image,mask'."
        )
    bad = sorted({r["label"] for r in rows} - {"normal", "anomaly"})
    if bad:
        raise DataError(f"{csv_path} has labels {bad}; expected 'normal' or 'anomaly'.")
    return rows


INDEXERS: dict[str, Callable[[Path, str, str], list[Record]]] = {
    "mvtec": _index_mvtec,
    "minitex": _index_mvtec,
    "visa": _index_visa,
    "loco": _index_loco,
    "mvtec3d": _index_mvtec3d,
    "mtd": _index_mtd,
    "dagm": _index_dagm,
}
