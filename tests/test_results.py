"""Published benchmark results: where the chapters find them, and that every one is there."""

import json

import pytest

from ccad_tutorial.results import NAMES, load_benchmark, load_result_file


def test_every_published_result_is_in_the_repository_with_its_key():
    for name in NAMES:
        payload = load_benchmark(name)
        assert isinstance(payload, dict) and payload, name
    work = load_benchmark("condition_at_work")
    for key in ("generation_png", "guidance_png"):  # figures named by a payload sit beside it
        assert load_result_file(work[key]).startswith(b"\x89PNG")


def test_ccad_results_overrides_the_published_folder(tmp_path, monkeypatch):
    (tmp_path / "convergence.json").write_text(json.dumps({"convergence": {"mine": 1}}))
    monkeypatch.setenv("CCAD_RESULTS", str(tmp_path))
    assert load_benchmark("convergence") == {"mine": 1}
    assert load_benchmark("xi_ablation")  # the rest still come from the repository
    (tmp_path / "a.png").write_bytes(b"\x89PNG data")
    assert load_result_file("a.png") == b"\x89PNG data"


def test_unknown_names_and_paths_are_refused_with_the_fix(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="published ones are"):
        load_benchmark("nope")
    with pytest.raises(ValueError, match="plain file name"):
        load_result_file("../README.md")
    monkeypatch.setenv("CCAD_RESULTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_result_file("missing.png")
