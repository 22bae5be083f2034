"""Shared fixtures: a small MiniTex-AD tree generated once per test session."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def minitex_root(tmp_path_factory):
    """A 64 px MiniTex-AD with few images: enough for loaders, the CLI and smoke runs."""
    from ccad_tutorial.minitex import make_minitex

    return make_minitex(
        tmp_path_factory.mktemp("minitex") / "minitex-ad",
        size=64,
        seed=0,
        n_train=16,
        n_test_good=6,
        n_test_defect_per_type=2,
    )


# --------------------------------------------------------------------------- the book's tests
#
# What the chapter tests (tests/test_notebooks.py) and the browser test of the
# built book (tests/test_book.py) need from the whole session.


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "book: builds the book from the executed chapters and checks it in a browser"
    )


def pytest_collection_modifyitems(config, items):
    """Run the book's tests last (a stable sort: the rest keep their order).

    pytest runs files alphabetically, so tests/test_book.py would run before
    tests/test_notebooks.py; but the book is built from the chapters that the notebook
    tests executed (``_build/executed/``), so it must come after them.
    """
    items.sort(key=lambda item: item.get_closest_marker("book") is not None)


@pytest.fixture(autouse=True)
def _kernels_draw_figures_inline(request, monkeypatch):
    """A kernel started by a notebook test must not inherit MPLBACKEND=Agg (set above).

    ipykernel selects its inline backend only when MPLBACKEND is unset; under Agg every
    matplotlib figure of a chapter is stored as the text "<Figure size ... with N Axes>"
    instead of an image, and the book would show that text.
    """
    if request.node.get_closest_marker("notebook"):
        monkeypatch.delenv("MPLBACKEND", raising=False)
