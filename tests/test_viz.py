"""Tests for ccad_tutorial.viz and ccad_tutorial.interactive: figure layout, panel crops,
the plotly display path, sliders.

matplotlib runs headless: tests/conftest.py sets MPLBACKEND=Agg.
"""

import base64
import io
import sys
import types
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from IPython.display import HTML
from PIL import Image

from ccad_tutorial import interactive, viz


@dataclass
class FakeBatch:  # the fields of datasets.Batch that viz reads
    images: torch.Tensor
    masks: torch.Tensor
    defect_types: list
    categories: list


@dataclass
class FakeSample:
    image: torch.Tensor
    mask: torch.Tensor
    defect_type: str
    category: str


def make_batch(b=6, size=16):
    torch.manual_seed(0)
    masks = torch.zeros(b, 1, size, size)
    masks[b // 2 :, :, 4:9, 4:9] = 1  # second half defective
    defects = ["good"] * (b // 2) + ["scratch"] * (b - b // 2)
    return FakeBatch(torch.rand(b, 3, size, size), masks, defects, ["brick"] * b)


@pytest.fixture
def captured_display(monkeypatch):
    """Record what show_plotly displays, outside Colab."""
    shown = []
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    monkeypatch.delenv(interactive.PLOTLYJS_ENV, raising=False)
    return shown


# --------------------------------------------------------------------------- matplotlib


def test_show_samples_has_one_captioned_axes_per_image():
    fig = viz.show_samples(make_batch(6), n=6, title="MiniTex")
    assert len(fig.axes) == 6  # 2 rows of 4, the 2 empty cells removed
    assert [ax.get_title() for ax in fig.axes[2:4]] == ["brick / good", "brick / scratch"]
    assert not fig.axes[0].collections  # normal image: no contour
    assert fig.axes[5].collections  # defective image: red contour drawn


def test_show_samples_accepts_samples_and_plain_tensors():
    batch = make_batch(3)
    samples = [FakeSample(i, m, d, c) for i, m, d, c in zip(*vars(batch).values(), strict=True)]
    assert len(viz.show_samples(samples).axes) == 3
    assert len(viz.show_samples(batch.images, n=2).axes) == 2


def test_show_anomaly_maps_has_a_row_per_panel_kind():
    batch = make_batch(6)
    maps = torch.rand(6, 1, 8, 8)  # coarser than the images: stretched over them
    full = viz.show_anomaly_maps(batch.images, maps, masks=batch.masks, recons=batch.images, n=4)
    assert len(full.axes) == 4 * 4
    assert [full.axes[4 * r].get_ylabel() for r in range(4)] == [
        "input",
        "reconstruction",
        "anomaly map",
        "ground truth",
    ]
    assert len(viz.show_anomaly_maps(batch.images, maps[:, 0], n=3).axes) == 2 * 3
    from_batch = viz.show_anomaly_maps(batch, maps, n=3)
    assert len(from_batch.axes) == 3 * 3  # the batch's masks give the ground-truth row
    assert from_batch.axes[0].get_title() == "brick / good"


def test_show_anomaly_maps_can_put_defective_images_first_one_row_each():
    batch = make_batch(6)  # the last three are defective
    maps, recons = torch.rand(6, 8, 8), batch.images
    fig = viz.show_anomaly_maps(
        batch, maps, recons=recons, n=4, defective_first=True, per_image="row"
    )
    assert len(fig.axes) == 4 * 4  # 4 images (rows) x 4 panels (columns)
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles == ["input", "reconstruction", "anomaly map", "ground truth"]
    labels = [fig.axes[4 * r].get_ylabel() for r in range(4)]
    assert labels == ["brick / scratch"] * 3 + ["brick / good"]
    ground_truth = fig.axes[3].images[0].get_array()
    assert ground_truth.max() == 1  # the first row is a defective image
    # without masks there is nothing to sort by: the first n, in order
    plain = viz.show_anomaly_maps(batch.images, maps, n=2, defective_first=True)
    assert len(plain.axes) == 2 * 2


def test_show_anomaly_maps_saves_a_png_outside_a_notebook(tmp_path):
    batch = make_batch(4)
    fig = viz.show_anomaly_maps(batch, torch.rand(4, 1, 16, 16), per_image="row")
    fig.savefig(tmp_path / "examples.png", dpi=40)
    assert Image.open(tmp_path / "examples.png").format == "PNG"
    with pytest.raises(ValueError, match='"column" or "row"'):
        viz.show_anomaly_maps(batch, torch.rand(4, 16, 16), per_image="grid")


def test_show_anomaly_maps_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="6 images but 2 anomaly maps"):
        viz.show_anomaly_maps(make_batch(6).images, torch.rand(2, 16, 16))


def test_plot_curves_draws_one_panel_per_key_from_records():
    records = [{"step": s, "loss": 1 / (s + 1)} for s in range(10)]
    for rec in records[::5]:
        rec["image_auroc"] = 0.7
    fig = viz.plot_curves(records, logy=["loss"])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "image_auroc"]
    assert fig.axes[0].get_yscale() == "log"
    auroc_xs = fig.axes[1].lines[0].get_xdata()
    assert list(auroc_xs) == [0, 5]  # only the steps where AUROC was measured


def test_plot_curves_wraps_many_panels_into_rows():
    fig = viz.plot_curves({f"k{i}": [1.0, 0.5] for i in range(5)}, ncols=3)
    assert len(fig.axes) == 5  # the sixth cell of the 2 x 3 grid is removed
    width, height = fig.get_size_inches()
    assert width / height <= 2.0  # a grid, not a strip that shrinks to nothing in a column
    assert [ax.get_subplotspec().rowspan.start for ax in fig.axes] == [0, 0, 0, 1, 1]


def test_plot_curves_accepts_a_dict_of_series():
    fig = viz.plot_curves({"loss": [3, 2, 1], "val": ([0, 10], [0.5, 0.6])}, keys=["val"])
    assert len(fig.axes) == 1
    assert list(fig.axes[0].lines[0].get_xdata()) == [0, 10]
    with pytest.raises(ValueError, match="no data for"):
        viz.plot_curves({"loss": [1.0]}, keys=["auroc"])


def test_figures_are_closed_so_a_notebook_shows_them_once():
    before = plt.get_fignums()
    viz.show_samples(make_batch(2))
    viz.plot_curves({"loss": [1.0, 0.5]})
    assert plt.get_fignums() == before


# --------------------------------------------------------------------------- panels


def _figure():
    """White 20 x 100 image: row labels at x 0..4, then panels at 10..20, 30..45, 50..58."""
    image = np.full((20, 100, 3), 255, np.uint8)
    image[5:8, 0:4] = 0  # the label
    for a, b in ((10, 20), (30, 45), (50, 58)):
        image[2:18, a:b] = 100
    return image


def test_panel_columns_finds_the_panels_and_falls_back_to_equal_slices():
    image = _figure()
    # the label is the narrowest run: the three widest are the panels
    assert viz.panel_columns(image, 3) == [(10, 20), (30, 45), (50, 58)]
    assert viz.panel_columns(image, 2) == [(10, 20), (30, 45)]  # widest two, left to right
    assert viz.panel_columns(image, 6) == [(0, 17), (17, 33), (33, 50), (50, 67), (67, 83),
                                         (83, 100)]  # fmt: skip


def test_columns_png_keeps_the_labels_and_the_chosen_panels():
    image = _figure()
    panels = viz.panel_columns(image, 3)
    crop = np.asarray(Image.open(io.BytesIO(viz.columns_png(image, panels, first=1))))
    # labels: x < 10; then panels 1 and 2 with 3 px either side: 27 .. 61
    assert crop.shape == (20, 10 + (61 - 27), 3)
    assert (crop[:, :10] == image[:, :10]).all()
    assert (crop[:, 10:] == image[:, 27:61]).all()


def test_panels_png_keeps_the_labels_and_only_the_panels_shown():
    image = _figure()
    panels = viz.panel_columns(image, 3)
    crop = np.asarray(Image.open(io.BytesIO(viz.panels_png(image, panels, [2, 0], margin=0))))
    assert crop.shape == (20, 10 + 8 + 10, 3)  # labels, panel 2 (50..58), panel 0 (10..20)
    assert (crop[:, 10:18] == image[:, 50:58]).all() and (crop[:, 18:] == image[:, 10:20]).all()


# --------------------------------------------------------------------------- plotly


def test_show_plotly_displays_text_html_outside_colab(captured_display):
    interactive.show_plotly(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])))
    assert len(captured_display) == 1
    html = captured_display[0]
    assert isinstance(html, HTML)
    assert "plotly" in html.data and "cdn.plot.ly" in html.data
    assert "<html>" not in html.data  # a fragment, not a full page


def test_show_plotly_uses_fig_show_in_colab(captured_display, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    fig = go.Figure()
    calls = []
    monkeypatch.setattr(fig, "show", lambda: calls.append(True), raising=False)
    interactive.show_plotly(fig)
    assert calls == [True] and captured_display == []


def test_plotly_js_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv(interactive.PLOTLYJS_ENV, raising=False)
    assert interactive.plotly_js_mode() == "cdn"
    for value, expected in [("inline", True), ("require", "require"), ("js/plotly.js", None)]:
        monkeypatch.setenv(interactive.PLOTLYJS_ENV, value)
        assert interactive.plotly_js_mode() == (value if expected is None else expected)
    html = interactive.plotly_html(go.Figure()).data
    assert 'src="js/plotly.js"' in html
    monkeypatch.setenv(interactive.PLOTLYJS_ENV, "embedded")
    with pytest.raises(ValueError, match="CCAD_PLOTLYJS='embedded'"):
        interactive.plotly_js_mode()


def test_image_slider_keeps_at_most_max_frames_with_ends():
    frames = [np.full((32, 32, 3), t / 49) for t in range(50)]
    fig = interactive.image_slider(
        frames, [f"t={t}" for t in range(50)], title="x_t", max_frames=20
    )
    steps = fig.layout.sliders[0].steps
    assert len(fig.frames) == len(steps) == 20
    assert (steps[0].label, steps[-1].label) == ("t=0", "t=49")
    assert len(interactive.image_slider(frames[:5]).frames) == 5


def test_image_slider_downsamples_frames():
    fig = interactive.image_slider([np.zeros((256, 256), dtype=np.uint8)], max_size=64)
    jpeg = base64.b64decode(fig.frames[0].data[0].source.split(",", 1)[1])
    assert Image.open(io.BytesIO(jpeg)).size == (64, 64)


def test_image_slider_rejects_channel_first_frames():
    with pytest.raises(ValueError, match=r"permute\(1, 2, 0\)"):
        interactive.image_slider([torch.rand(3, 8, 8)])


def test_scatter_2d_has_one_trace_per_label():
    points = torch.randn(30, 2)
    labels = ["train"] * 20 + ["coreset"] * 10
    fig = interactive.scatter_2d(points, labels, hover=[f"img{i}" for i in range(30)])
    assert [t.name for t in fig.data] == ["train", "coreset"]
    assert len(fig.data[1].x) == 10
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        interactive.scatter_2d(np.zeros((5, 3)))


def test_coreset_steps_has_one_frame_per_step_and_marks_the_centres():
    from ccad_tutorial.coreset import greedy_coreset
    from ccad_tutorial.interactive import coreset_steps

    points = torch.randn(60, 2, generator=torch.Generator().manual_seed(0))
    order = greedy_coreset(points, n=8, projection_dim=None)
    fig = coreset_steps(points, order, steps=[1, 4, 8])
    assert [f.name for f in fig.frames] == ["1", "4", "8"]
    assert len(fig.frames[2].data[1].x) == 8  # eight centres in the last frame
    assert len(fig.layout.sliders[0].steps) == 3
