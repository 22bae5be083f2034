"""Figures for the book: samples, anomaly maps, training curves, and panel crops.

Static figures use matplotlib (robust in HTML, PDF and GitHub previews). Every function
returns a ``matplotlib.figure.Figure`` that is already closed in pyplot: a notebook
shows it exactly once when the call is the cell's last expression (``display(fig)``
otherwise), and ``fig.savefig(...)`` still works, in a notebook or a script.

Interactive plotly views (sliders, scatter plots, the coreset steps) and the one path
they are displayed by live in ``ccad_tutorial.interactive``. The last section here cuts
the panel columns out of a saved figure (a PNG as an array), so that the book's column
shows fewer, larger panels (:func:`panel_columns`, :func:`panels_png`).

Data objects are used by duck typing: anything with ``.images`` (and optionally
``.masks``, ``.categories``, ``.defect_types``) is a batch, anything with ``.image`` a
sample.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "show_samples",
    "show_anomaly_maps",
    "plot_curves",
    "panel_columns",
    "columns_png",
    "panels_png",
]

MASK_RGBA = (1.0, 0.0, 0.0, 0.35)  # translucent red fill over defects


# ---------------------------------------------------------------------- array helpers


def _numpy(x: Any) -> np.ndarray:
    """Tensor on any device / array / list -> NumPy array (float for float tensors)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float() if x.dtype.is_floating_point else x
        x = x.numpy()
    return np.asarray(x)


def _images_hwc(images: Any) -> np.ndarray:
    """(B, 3, H, W), (B, 1, H, W) or (B, H, W) in [0, 1] -> (B, H, W, 3) float,
    clipped."""
    x = _numpy(images).astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            "images must have shape (B, 3, H, W), (B, 1, H, W) or (B, H, W), got "
            f"{x.shape}; channel-last arrays need x.transpose(0, 3, 1, 2)."
        )
    x = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x
    return np.clip(x.transpose(0, 2, 3, 1), 0.0, 1.0)


def _maps_hw(maps: Any, name: str) -> np.ndarray:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W) float."""
    x = _numpy(maps).astype(np.float32)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        shapes = "(B, H, W) or (B, 1, H, W)"
        raise ValueError(f"{name} must have shape {shapes}, got {x.shape}.")
    return x


def _fields(data: Any) -> tuple[Any, Any, list[str]]:
    """A Batch-like, a list of Sample-like, or plain images -> (images, masks or None,
    captions "category / defect type"), not yet converted: pick items with _take."""
    if isinstance(data, Sequence) and data and hasattr(data[0], "image"):
        images = [s.image for s in data]
        masks = [s.mask for s in data] if hasattr(data[0], "mask") else None
        cats = [getattr(s, "category", "") for s in data]
        defects = [getattr(s, "defect_type", "") for s in data]
    elif hasattr(data, "images"):
        images, masks = data.images, getattr(data, "masks", None)
        blank = [""] * len(images)
        cats = list(getattr(data, "categories", None) or blank)
        defects = list(getattr(data, "defect_types", None) or blank)
    else:
        images, masks, cats, defects = data, None, [], []
    pairs = zip(cats, defects, strict=True)
    captions = [" / ".join(p for p in pair if p) for pair in pairs]
    return images, masks, captions


def _take(x: Any, index: list[int]) -> Any:
    """The items ``index`` of a tensor or array (B, ...), or of a list of them."""
    if isinstance(x, (list, tuple)):
        return _numpy_stack([x[i] for i in index])
    return x[index]


def _defective_first(masks: Any, count: int) -> list[int]:
    """0 .. count - 1: the images with a ground-truth pixel > 0 first, each group in
    its order."""
    masks = _maps_hw(_take(masks, list(range(count))), "masks")
    bad = masks.reshape(count, -1).max(axis=1) > 0
    return [i for i in range(count) if bad[i]] + [i for i in range(count) if not bad[i]]


def _numpy_stack(items: list) -> np.ndarray:
    return np.stack([_numpy(i) for i in items])


def _grid(n_rows: int, n_cols: int, cell: float = 2.2) -> tuple[Figure, np.ndarray]:
    """A closed (not auto-shown) figure with an (n_rows, n_cols) array of bare axes."""
    size = (cell * n_cols, cell * n_rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=size, squeeze=False)
    plt.close(fig)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _draw_mask(ax: Any, mask: np.ndarray) -> None:
    """Red translucent fill plus a red contour where mask > 0.5 (nothing for normal
    images)."""
    if not (mask > 0.5).any():
        return
    fill = np.zeros((*mask.shape, 4), dtype=np.float32)
    fill[mask > 0.5] = MASK_RGBA
    ax.imshow(fill)
    ax.contour(mask, levels=[0.5], colors="red", linewidths=1.0)


# ---------------------------------------------------------------------- static figures


def show_samples(
    batch_or_samples: Any, n: int = 8, overlay: bool = True, title: str | None = None
) -> Figure:
    """A grid of the first ``n`` images with their defects outlined in red.

    Args:
        batch_or_samples: a Batch-like object (``.images`` (B, 3, H, W), ``.masks``
            (B, 1, H, W), ``.categories``, ``.defect_types``), a list of Sample-like
            objects (``.image`` (3, H, W), ``.mask`` (1, H, W), ...), or plain images
            (B, 3, H, W).
        n: number of images shown (at most 4 per row).
        overlay: draw the ground-truth mask as a red fill and contour.
        title: figure title.

    Returns:
        Figure with one axes per shown image, captioned "category / defect type".
    """
    images, masks, captions = _fields(batch_or_samples)
    shown = list(range(min(n, len(images))))
    images, captions = _images_hwc(_take(images, shown)), captions[: len(shown)]
    masks = None if masks is None else _maps_hw(_take(masks, shown), "masks")
    n = len(images)
    if n < 1:
        raise ValueError("show_samples() got no images to show.")
    n_cols = min(n, 4)
    fig, axes = _grid(math.ceil(n / n_cols), n_cols)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.remove()  # empty cells of the last row
            continue
        ax.imshow(images[i])
        if overlay and masks is not None:
            _draw_mask(ax, masks[i])
        if captions:
            ax.set_title(captions[i], fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_anomaly_maps(
    images: Any,
    maps: Any,
    masks: Any = None,
    recons: Any = None,
    n: int = 6,
    defective_first: bool = False,
    per_image: str = "column",
) -> Figure:
    """Input, reconstruction, anomaly map and ground truth of ``n`` images.

    Args:
        images: (B, 3, H, W) in [0, 1], or a Batch-like object (its masks are used when
            ``masks`` is None, its "category / defect type" as captions).
        maps: (B, H, W) or (B, 1, H, W) anomaly maps; any resolution (stretched over the
            image). One colour scale is shared by all shown maps, so images compare.
        masks: (B, 1, H, W) or (B, H, W) ground truth, or None (panel left out).
        recons: (B, 3, H, W) reconstructions (the diffusion model's "normal"
            repaint), or None (panel left out).
        n: number of images shown: the first ``n``.
        defective_first: the defective images (a ground-truth pixel > 0) before the
            normal ones, each group in its order (needs masks).
        per_image: "column": one column per image, the panels as labelled rows (a strip
            for the book's column); "row": one row per image, the panels as titled
            columns (the grid saved next to a run's results).

    Returns:
        Figure with (2 + recons given + masks given) * n axes, closed in pyplot: a
        notebook shows it, ``fig.savefig(path)`` writes it anywhere.
    """
    count = len(getattr(images, "images", images))
    if len(maps) != count:
        raise ValueError(f"Got {count} images but {len(maps)} anomaly maps.")
    if per_image not in ("column", "row"):
        raise ValueError(f'per_image is "column" or "row", not {per_image!r}.')
    images, batch_masks, captions = _fields(images)
    masks = batch_masks if masks is None else masks
    order = list(range(count))
    if defective_first and masks is not None:
        order = _defective_first(masks, count)
    shown = order[:n]
    images = _images_hwc(_take(images, shown))
    captions = [captions[i] for i in shown] if captions else []
    masks = None if masks is None else _maps_hw(_take(masks, shown), "masks")
    maps = _maps_hw(_take(maps, shown), "maps")
    recons = None if recons is None else _images_hwc(_take(recons, shown))
    panels = ["input"] + (["reconstruction"] if recons is not None else [])
    panels += ["anomaly map"] + (["ground truth"] if masks is not None else [])
    vmin, vmax = float(maps.min()), float(maps.max())
    by_row = per_image == "row"
    if by_row:
        fig, axes = _grid(len(shown), len(panels))
    else:
        fig, axes = _grid(len(panels), len(shown))
        axes = axes.T  # axes[image, panel]
    for j in range(len(shown)):
        h, w = images[j].shape[:2]
        for ax, panel in zip(axes[j], panels, strict=True):
            if panel == "input":
                ax.imshow(images[j])
            elif panel == "reconstruction":
                ax.imshow(recons[j])
            elif panel == "anomaly map":  # a heat overlay, stretched over the image
                ax.imshow(images[j])
                heat = dict(cmap="jet", alpha=0.5, vmin=vmin, vmax=vmax)
                ax.imshow(maps[j], extent=(0, w, h, 0), **heat)
            else:
                ax.imshow(masks[j], cmap="gray", vmin=0, vmax=1)
    # the figure is shrunk to the book's column: large labels
    for ax, panel in zip(axes[0], panels, strict=True):
        (ax.set_title if by_row else ax.set_ylabel)(panel, fontsize=13)
    if captions:  # plain images have none
        for ax, caption in zip(axes[:, 0], captions, strict=True):
            (ax.set_ylabel if by_row else ax.set_title)(caption, fontsize=12)
    scale = f"anomaly map colour scale: {vmin:.3g} (blue) to {vmax:.3g} (red)"
    fig.suptitle(scale, fontsize=14)
    fig.tight_layout()
    return fig


def _curves_from(history: Any, x: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Records [{x: .., key: ..}, ...] or {key: ys | (xs, ys)} -> {key: (xs, ys)}."""
    if isinstance(history, Mapping):
        out = {}
        for key, value in history.items():
            if isinstance(value, tuple) and len(value) == 2:
                out[key] = (_numpy(value[0]), _numpy(value[1]))
            else:
                ys = _numpy(value)
                out[key] = (np.arange(len(ys)), ys)
        return out
    keys = [k for rec in history for k in rec if k != x]
    out = {}
    for key in dict.fromkeys(keys):  # keep first-seen order
        recs = [(i, rec) for i, rec in enumerate(history) if rec.get(key) is not None]
        xs = np.array([rec.get(x, i) for i, rec in recs], dtype=float)
        out[key] = (xs, np.array([rec[key] for _, rec in recs], dtype=float))
    return out


def plot_curves(
    history: Any,
    keys: Sequence[str] | None = None,
    x: str = "step",
    title: str | None = None,
    logy: bool | Sequence[str] = False,
    ncols: int = 3,
) -> Figure:
    """Training curves, one panel per quantity (loss and AUROC live on different
    scales).

    Args:
        history: either records, e.g. ``[{"step": 0, "loss": 0.9}, {"step": 50,
            "loss": 0.4, "image_auroc": 0.71}, ...]`` (a key missing from a record is
            skipped there), or a dict ``{"loss": ys}`` / ``{"loss": (steps, ys)}``.
        keys: which quantities to plot (default: all but ``x``).
        x: the record key used as x axis.
        title: figure title.
        logy: log-scale all panels (True) or the panels named in a list.
        ncols: panels per row (more keys wrap into further rows, so the figure stays
            readable in a book's column).

    Returns:
        Figure with one axes per key; AUROC panels get a dashed chance line at 0.5.
    """
    curves = _curves_from(history, x)
    keys = list(curves) if keys is None else list(keys)
    missing = [k for k in keys if k not in curves]
    if missing or not keys:
        what = missing or "any key"
        raise ValueError(f"plot_curves(): no data for {what}; have {list(curves)}.")
    ncols = max(1, min(ncols, len(keys)))
    nrows = -(-len(keys) // ncols)
    size = (4.0 * ncols, 3.0 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    plt.close(fig)
    for ax in axes.flat[len(keys) :]:
        fig.delaxes(ax)
    for ax, key in zip(axes.flat, keys, strict=False):
        xs, ys = curves[key]
        ax.plot(xs, ys, marker="." if len(ys) < 30 else None)
        if "auroc" in key.lower():
            ax.axhline(0.5, color="gray", linestyle="--", linewidth=1, label="chance")
        if logy is True or (not isinstance(logy, bool) and key in logy):
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------- panels
# crops of a saved figure (an (H, W, 3) uint8 array), e.g. for a slider over w


def panel_columns(image: np.ndarray, n: int, white: int = 245) -> list[tuple[int, int]]:
    """x ranges ``(start, end)`` of a figure's ``n`` panel columns: its ``n`` widest
    runs of pixel columns holding ink (any value below ``white``), left to right; equal
    slices of the width if there are fewer runs."""
    ink = np.r_[0, (image < white).any(axis=(0, 2)).astype(int), 0]
    edges = np.flatnonzero(np.diff(ink))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    if len(runs) < n:
        step = image.shape[1] / n
        return [(round(i * step), round((i + 1) * step)) for i in range(n)]
    return sorted(sorted(runs, key=lambda r: r[1] - r[0])[-n:])


def columns_png(
    image: np.ndarray,
    panels: Sequence[tuple[int, int]],
    first: int,
    count: int = 2,
    margin: int = 3,
) -> bytes:
    """PNG bytes: the figure's row labels (everything left of the first panel), then
    its panel columns ``first`` .. ``first + count - 1`` (with ``margin`` pixels either
    side)."""
    from PIL import Image

    start, end = panels[first][0], panels[first + count - 1][1]
    labels = image[:, : panels[0][0]]
    crop = image[:, max(0, start - margin) : end + margin]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([labels, crop], axis=1)).save(buffer, format="png")
    return buffer.getvalue()


def panels_png(
    image: np.ndarray,
    panels: Sequence[tuple[int, int]],
    shown: Sequence[int],
    margin: int = 3,
) -> bytes:
    """PNG bytes: the figure's row labels, then only the panel columns ``shown`` (in
    that order): a narrower figure whose panels are larger in the book's column."""
    from PIL import Image

    parts = [image[:, : panels[0][0]]]
    for i in shown:
        start, end = panels[i]
        parts.append(image[:, max(0, start - margin) : end + margin])
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(parts, axis=1)).save(buffer, format="png")
    return buffer.getvalue()
