"""A data root: which categories it holds, and the records of one split.

``index`` is the way in: it checks the layout (``check_layout``) and the category
(``resolve_categories``: every category of the root when none is given) and hands each
category to its layout's indexer (layouts.py, where every layout's file tree is
documented). ``find_categories`` lists the category folders of a root, and when there are
none ``layout_error`` explains why: a root one level too high or too low, or another
layout. ``datasets.py`` turns the records into tensors.
"""

from __future__ import annotations

from pathlib import Path

from ccad_tutorial.layouts import (
    EXPECTED,
    INDEXERS,
    LAYOUTS,
    MTD_CATEGORY,
    SPLITS,
    DataError,
    Record,
    _index_visa,
    _name_key,
    natural_key,
)


def is_category(folder: Path, layout: str) -> bool:
    """Does ``folder`` look like one category of ``layout`` (checks folder names only)?"""
    if layout == "visa":
        return (folder / "Data" / "Images").is_dir()
    if layout == "mtd":
        return (folder / "Train").is_dir() and (folder / "Test").is_dir()
    if layout == "dagm":  # re-organised (train/good) or original (Train, Test)
        reorganised = (folder / "train" / "good").is_dir() and (folder / "test").is_dir()
        return reorganised or ((folder / "Train").is_dir() and (folder / "Test").is_dir())
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def find_categories(root: Path, layout: str) -> list[str]:
    """Category folders of ``root`` in natural order; ``[]`` when there are none (never raises)."""
    if not root.is_dir():
        return []
    if layout == "mtd":
        return [MTD_CATEGORY] if is_category(root, "mtd") else []
    children = (d for d in root.iterdir() if d.is_dir() and is_category(d, layout))
    return sorted((d.name for d in children), key=natural_key)


def layout_error(root: Path, layout: str) -> DataError:
    """Explain why ``root`` holds no category of ``layout``: too high, too low or elsewhere."""
    if not root.exists():
        return DataError(
            f"The data folder {root} does not exist. Point --data (or DATA_ROOT) at the folder "
            f"that holds the {layout} data set: {EXPECTED[layout]}."
        )
    if not root.is_dir():
        return DataError(f"The data path {root} is a file, not a folder; point --data at a folder.")
    if is_category(root.parent if layout == "mtd" else root, layout):
        what = "a folder inside the data set" if layout == "mtd" else "a single category folder"
        choose = "" if layout == "mtd" else f" and choose the category {root.name!r}"
        return DataError(
            f"{root} looks like {what}, not the data set root (one level too low): point "
            f"--data at its parent {root.parent}{choose}. Expected the {layout} layout: "
            f"{EXPECTED[layout]}."
        )
    for child in sorted((d for d in root.iterdir() if d.is_dir()), key=_name_key):
        if find_categories(child, layout):
            return DataError(
                f"{root} holds the data set one level down (one level too high): point --data "
                f"at {child}. Expected the {layout} layout: {EXPECTED[layout]}."
            )
    entries = sorted(p.name for p in root.iterdir())
    shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") or "nothing"
    return DataError(
        f"{root} does not look like the {layout} layout: expected {EXPECTED[layout]}, but it "
        f"holds {shown}. Check --layout, or point --data at the folder that holds the categories."
    )


def resolve_categories(root: Path, layout: str, category: str | None) -> list[str]:
    """``[category]`` after checking it exists, or every category when ``category`` is None."""
    check_layout(layout)
    available = find_categories(root, layout)
    if not available:
        raise layout_error(root, layout)
    if category is None:
        return available
    if category not in available:
        raise DataError(
            f"The category {category!r} is not in {root} ({layout} layout); the categories "
            f"there are: {', '.join(available)}."
        )
    return [category]


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")


def index(
    root: str | Path,
    layout: str = "mvtec",
    category: str | None = None,
    split: str = "train",
    split_csv: str | Path | None = None,
) -> list[Record]:
    """Records of one split of one category (or of all categories when ``category`` is None)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose 'train' or 'test'.")
    root = Path(root).expanduser()
    records = []
    for name in resolve_categories(root, layout, category):
        if layout == "visa":
            found = _index_visa(root, name, split, split_csv)
        else:
            found = INDEXERS[layout](root, name, split)
        if not found:
            raise DataError(
                f"The {split} split of category {name!r} in {root} has no images. Expected the "
                f"{layout} layout: {EXPECTED[layout]}."
            )
        records.extend(found)
    return records
