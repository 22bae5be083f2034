"""Checking a data folder: ``check_dataset`` opens every file once and counts what is there.

It finds the categories and the records of each split as loading does (roots.py), checks
that every image is complete and every mask the size of its image, and returns a
``DatasetReport`` (one ``CategoryReport`` per category) that prints as a table
(``report.format()``; ``ccad-tutorial check-data`` on the command line). Reading the
pixels is datasets.py's job.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from ccad_tutorial.datasets import _size_mismatch, _unreadable
from ccad_tutorial.roots import index, resolve_categories


@dataclass
class CategoryReport:
    """Counts of one category, as found on disk."""

    name: str
    train_good: int
    test: dict[str, int]  # defect type -> images ("good" included)
    masks: int  # anomalous test images with a mask (files or DAGM ellipse)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # distinct (W, H)

    @property
    def test_good(self) -> int:
        return self.test.get("good", 0)

    @property
    def test_defect(self) -> int:
        return sum(n for t, n in self.test.items() if t != "good")


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found; ``format()`` prints it as a table."""

    root: str
    layout: str
    categories: list[CategoryReport]

    def totals(self) -> dict[str, int]:
        cats = self.categories
        return {
            "train_good": sum(c.train_good for c in cats),
            "test_good": sum(c.test_good for c in cats),
            "test_defect": sum(c.test_defect for c in cats),
            "masks": sum(c.masks for c in cats),
        }

    def to_dict(self) -> dict:
        """Plain JSON-ready dictionary of the report."""
        categories = {
            c.name: {
                "train_good": c.train_good,
                "test_good": c.test_good,
                "test_defect": c.test_defect,
                "test": dict(c.test),
                "masks": c.masks,
                "image_sizes": [list(s) for s in c.image_sizes],
            }
            for c in self.categories
        }
        return {
            "root": self.root,
            "layout": self.layout,
            "categories": categories,
            "totals": self.totals(),
        }

    def table(self) -> tuple[list[str], list[list]]:
        """(header, rows): one row per category (counts, image size, defect types), then
        the totals; what :meth:`format` aligns and a chapter shows as a table."""
        header = ["category", "train good", "test good", "test defect", "masks", "image size"]
        rows = [
            [c.name, c.train_good, c.test_good, c.test_defect, c.masks, _sizes_text(c)]
            + [", ".join(f"{t} {n}" for t, n in c.test.items() if t != "good")]
            for c in self.categories
        ]
        t = self.totals()
        rows.append(
            ["total", t["train_good"], t["test_good"], t["test_defect"], t["masks"], "", ""]
        )
        return header + ["defect types (test images)"], rows

    def summary(self) -> str:
        """One sentence: the root, its layout, and what the check verified."""
        n = len(self.categories)
        return (
            f"{self.root} ({self.layout} layout): {n} categor{'y' if n == 1 else 'ies'}, "
            "every image and mask readable, every mask the size of its image."
        )

    def format(self) -> str:
        """A readable, aligned table: one row per category, then the totals."""
        header, rows = self.table()
        rows[-1] = rows[-1][:-1]  # the totals have no defect types
        return self.summary() + "\n" + _table(header, rows)


def _sizes_text(report: CategoryReport) -> str:
    if len(report.image_sizes) == 1:
        return "{}x{}".format(*report.image_sizes[0])
    return f"{len(report.image_sizes)} sizes"


def _table(header: list[str], rows: list[list]) -> str:
    """Left-align text, right-align numbers; the last column is left ragged."""
    cells = [header] + [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(header))]
    numeric = [all(isinstance(r[i], int) for r in rows if i < len(r)) for i in range(len(header))]
    lines = []
    for row in cells:
        parts = []
        for i, text in enumerate(row):
            last = i == len(header) - 1
            aligned = text.rjust(widths[i]) if numeric[i] else text.ljust(widths[i])
            parts.append(text if last else aligned)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _verify_file(path: Path) -> tuple[int, int]:
    """``(W, H)`` of an image file, checking that it is complete without a full decode."""
    try:
        with Image.open(path) as img:
            size = img.size
            if img.format == "JPEG":  # decode at 1/8 scale (DCT scaling): cheap, catches truncation
                img.draft(img.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
                img.load()
            else:  # PNG: checks every chunk's CRC, so a truncated file fails
                img.verify()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise _unreadable(path, err) from err
    return size


def _check_category(
    root: Path, layout: str, category: str, split_csv: str | Path | None
) -> CategoryReport:
    train = index(root, layout, category, "train", split_csv)
    test = index(root, layout, category, "test", split_csv)
    sizes = set()
    for record in tqdm(train + test, desc=f"checking {category}", leave=False, disable=None):
        size = _verify_file(record.image)
        for mask in record.masks:
            mask_size = _verify_file(mask)
            if mask_size != size:
                raise _size_mismatch(record.image, size, mask, mask_size)
        sizes.add(size)
    masks = sum(1 for r in test if r.label == 1 and (r.masks or r.ellipse is not None))
    return CategoryReport(
        name=category,
        train_good=len(train),
        test=dict(Counter(r.defect_type for r in test)),
        masks=masks,
        image_sizes=sorted(sizes),
    )


def check_dataset(
    root: str | Path, layout: str = "mvtec", *, split_csv: str | Path | None = None
) -> DatasetReport:
    """Validate a data folder and count what is in it; raises DataError on the first problem.

    Opens the header of every image and mask (PNGs are CRC-checked, JPEGs decoded at 1/8 scale,
    so truncated files are caught), checks that every defect image has a mask of the same size,
    and explains a root that is one level too high or too low. ``report.format()`` is a table.
    """
    root = Path(root).expanduser()
    categories = resolve_categories(root, layout, None)
    reports = [_check_category(root, layout, c, split_csv) for c in categories]
    return DatasetReport(root=str(root), layout=layout, categories=reports)
