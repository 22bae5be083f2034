"""Interactive plotly figures for the book: image sliders, scatter plots, the coreset.

Every plotly figure must go through :func:`show_plotly`. A headless kernel gives plotly
figures only the ``application/vnd.plotly.v1+json`` output, which the static Jupyter
Book build drops, so outside Colab we display plain ``text/html`` instead. Figures that
must stay interactive in the published book precompute their frames (a slider, no
Python callbacks): see :func:`image_slider`. Keep these functions together: the display
path (:func:`plotly_js_mode`, :func:`plotly_html`, :func:`show_plotly`) is the one
place that decides how plotly.js reaches a page.

Static matplotlib figures (samples, anomaly maps, curves) are in ``ccad_tutorial.viz``.
"""

from __future__ import annotations

import base64
import io
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from ccad_tutorial.viz import _numpy

__all__ = [
    "show_plotly",
    "plotly_html",
    "plotly_js_mode",
    "image_slider",
    "scatter_2d",
    "coreset_steps",
]

# how plotly.js gets into the HTML: "cdn" (default), "inline", "require", or a .js file
PLOTLYJS_ENV = "CCAD_PLOTLYJS"


def plotly_js_mode() -> str | bool:
    """How plotly.js gets into the HTML: the one place that reads ``$CCAD_PLOTLYJS``.

    "cdn" (default): a <script> tag to cdn.plot.ly (small pages, need internet to
    view); "inline": the whole library embedded in every figure (offline, ~4 MB each);
    "require": loaded through require.js; a value ending in ".js": that script's
    path/URL.
    The result is plotly's ``to_html(include_plotlyjs=...)`` argument.
    """
    value = os.environ.get(PLOTLYJS_ENV, "cdn").strip()
    if value.lower() in ("cdn", "require"):
        return value.lower()
    if value.lower() == "inline":
        return True
    if value.endswith(".js"):
        return value
    raise ValueError(
        f"{PLOTLYJS_ENV}={value!r} is not understood; use 'cdn', 'inline', 'require' "
        "or a path/URL ending in '.js'."
    )


def plotly_html(fig: go.Figure, include_plotlyjs: str | bool | None = None) -> Any:
    """The figure as an ``IPython.display.HTML`` object (a ``text/html`` output).

    ``include_plotlyjs`` defaults to :func:`plotly_js_mode` (the env var). A figure with
    frames starts on its first frame and waits for the reader (plotly's default,
    ``auto_play=True``, would run every frame once on page load, long before anyone
    scrolls down to the figure).
    """
    from IPython.display import HTML  # IPython comes with Jupyter: imported when used

    mode = plotly_js_mode() if include_plotlyjs is None else include_plotlyjs
    return HTML(fig.to_html(include_plotlyjs=mode, full_html=False, auto_play=False))


def show_plotly(fig: go.Figure) -> None:
    """Display a plotly figure so that it survives into the static book.

    In Google Colab: ``fig.show()`` (Colab renders plotly natively). Elsewhere: display
    :func:`plotly_html` (``text/html``), because plotly's default headless output
    (``application/vnd.plotly.v1+json``) is dropped by the Jupyter Book build.
    """
    if "google.colab" in sys.modules:
        fig.show()
        return
    from IPython.display import display

    display(plotly_html(fig))


def _jpeg_data_uri(frame: Any, max_size: int) -> str:
    """(H, W, 3) or (H, W) float in [0, 1] or uint8 -> JPEG data URI, at most
    max_size px.

    JPEG, not PNG: noisy x_t frames barely compress losslessly (4x larger as PNG).
    """
    x = _numpy(frame)
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] != 3):
        raise ValueError(
            f"image_slider() frames must be (H, W, 3) or (H, W), got {x.shape}; "
            "convert a (3, H, W) tensor with t.permute(1, 2, 0)."
        )
    if x.dtype != np.uint8:
        x = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    step = max(1, math.ceil(max(x.shape[:2]) / max_size))
    buffer = io.BytesIO()
    Image.fromarray(x[::step, ::step]).save(
        buffer, format="JPEG", quality=90
    )  # strided: keeps noise
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return "data:image/jpeg;base64," + data


def image_slider(
    frames: Sequence[Any],
    labels: Sequence[str] | None = None,
    title: str | None = None,
    max_frames: int = 20,
    max_size: int = 128,
) -> go.Figure:
    """An image with a slider over precomputed frames (e.g. x_t for t = T ... 0).

    Args:
        frames: list of (H, W, 3) or (H, W) images, float in [0, 1] or uint8.
        labels: one slider label per frame (e.g. "t=999"); default the frame index.
        title: figure title.
        max_frames: keep at most this many frames, evenly spaced, first and last
            included.
        max_size: downsample frames to at most this many pixels per side (small HTML).

    Returns:
        plotly Figure with one ``go.Frame`` and one slider step per kept frame; it works
        without a Python kernel. Show it with :func:`show_plotly`.
    """
    labels = [str(i) for i in range(len(frames))] if labels is None else list(labels)
    if len(labels) != len(frames) or not frames:
        counts = f"{len(frames)} frames and {len(labels)} labels"
        raise ValueError(f"image_slider() got {counts}.")
    spaced = np.linspace(0, len(frames) - 1, min(max_frames, len(frames)))
    keep = np.unique(spaced.round())
    uris = [_jpeg_data_uri(frames[int(i)], max_size) for i in keep]
    names = [labels[int(i)] for i in keep]
    animate = {"mode": "immediate", "frame": {"duration": 300, "redraw": True}}
    steps = [
        {
            "method": "animate",
            "label": name,
            "args": [[str(k)], {**animate, "transition": {"duration": 0}}],
        }
        for k, name in enumerate(names)
    ]
    images = [go.Image(source=u) for u in uris]
    fig = go.Figure(
        data=[go.Image(source=uris[0])],
        frames=[go.Frame(data=[im], name=str(k)) for k, im in enumerate(images)],
    )
    play = {"label": "play", "method": "animate", "args": [None, animate]}
    menu = {"type": "buttons", "buttons": [play], "x": 0, "y": 0, "xanchor": "right"}
    fig.update_layout(
        title=title,
        sliders=[{"active": 0, "steps": steps, "currentvalue": {"prefix": ""}}],
        updatemenus=[menu],
        xaxis={"visible": False},
        yaxis={"visible": False},
        width=420,
        height=480,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
    )
    return fig


def scatter_2d(
    points: Any,
    labels: Sequence[Any] | None = None,
    title: str | None = None,
    hover: Sequence[str] | None = None,
    marker_size: int = 6,
) -> go.Figure:
    """Interactive 2-D scatter, one colour (and legend entry) per label.

    Args:
        points: (N, 2), e.g. a PCA/t-SNE of features, or features with the coreset
            marked.
        labels: (N,) group of each point (str or int), e.g. "train", "coreset",
            "defect".
        title: figure title.
        hover: (N,) text shown on hover (e.g. file names).
        marker_size: marker diameter in px.

    Returns:
        plotly Figure; show it with :func:`show_plotly`.
    """
    xy = _numpy(points).astype(float)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"scatter_2d() needs points of shape (N, 2), got {xy.shape}.")
    groups = np.array(["all"] * len(xy) if labels is None else [str(g) for g in labels])
    texts = None if hover is None else np.asarray(hover, dtype=str)
    if len(groups) != len(xy) or (texts is not None and len(texts) != len(xy)):
        raise ValueError("scatter_2d(): labels and hover need one entry per point.")
    fig = go.Figure()
    for group in dict.fromkeys(groups):  # first-seen order
        sel = groups == group
        fig.add_trace(
            go.Scatter(  # SVG, not WebGL: browsers cap WebGL contexts per page
                x=xy[sel, 0],
                y=xy[sel, 1],
                mode="markers",
                name=group,
                marker={"size": marker_size},
                text=None if texts is None else texts[sel],
            )
        )
    fig.update_layout(title=title, showlegend=labels is not None, width=560, height=460)
    return fig


def coreset_steps(
    points: Any,
    indices: Any,
    steps: Sequence[int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Greedy k-center, step by step: a plotly figure with one slider frame per step.

    Args:
        points: (N, 2) points (a toy set, or a 2-D view of features).
        indices: (M,) the coreset in selection order (``greedy_coreset`` output).
        steps: the numbers of centres to show (default: 1..min(M, 20)).
        title: figure title.

    Each frame colours every point by its distance to the nearest chosen centre, marks
    the centres, and circles the farthest point: the one the next step adds. Precomputed
    frames, so the figure works in the static book. Show it with :func:`show_plotly`.
    """
    xy = _numpy(points).astype(float)
    order = _numpy(indices).astype(int)
    steps = list(range(1, min(len(order), 20) + 1)) if steps is None else list(steps)
    frames = []
    for m in steps:
        centres = xy[order[:m]]
        dist = np.sqrt(((xy[:, None, :] - centres[None]) ** 2).sum(-1)).min(1)  # (N,)
        far = int(dist.argmax())
        frames.append(
            go.Frame(
                name=str(m),
                data=[
                    go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers",
                               marker={"size": 6, "color": dist,
                                       "colorscale": "Viridis", "cmin": 0,
                                       "cmax": float(dist.max()) or 1.0},
                               name="points"),
                    go.Scatter(x=centres[:, 0], y=centres[:, 1], mode="markers",
                               marker={"size": 11, "color": "red", "symbol": "x"},
                               name="centres"),
                    go.Scatter(x=[xy[far, 0]], y=[xy[far, 1]], mode="markers",
                               marker={"size": 16, "color": "rgba(0,0,0,0)",
                                       "line": {"color": "red", "width": 2}},
                               name="next (farthest)"),
                ],
                layout={"title": f"{title or 'greedy k-center'}: {m} centres, "
                                 f"covering radius {dist.max():.2f}"},
            )
        )  # fmt: skip
    animate = {"mode": "immediate", "frame": {"duration": 400, "redraw": True}}
    slider_steps = [
        {"method": "animate", "label": str(m), "args": [[str(m)], animate]}
        for m in steps
    ]  # fmt: skip
    play = {"label": "play", "method": "animate", "args": [None, animate]}
    fig = go.Figure(data=frames[0].data, frames=frames, layout=frames[0].layout)
    fig.update_layout(
        sliders=[{"active": 0, "steps": slider_steps,
                  "currentvalue": {"prefix": "centres: "}}],
        updatemenus=[{"type": "buttons", "x": 0, "y": 0, "xanchor": "right",
                      "buttons": [play]}],
        width=560, height=520, xaxis={"scaleanchor": "y"},
    )  # fmt: skip
    return fig
