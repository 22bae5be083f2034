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
