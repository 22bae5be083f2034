"""Fast/full mode resolution and the chapter context every notebook starts with."""

import json

import pytest
import torch

from ccad_tutorial import modes


def test_auto_mode_is_fast_without_cuda(monkeypatch):
    monkeypatch.delenv("CCAD_MODE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert modes.resolve_mode("auto") == "fast"


def test_auto_mode_is_full_with_cuda(monkeypatch):
    monkeypatch.delenv("CCAD_MODE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert modes.resolve_mode("auto") == "full"


def test_environment_variable_overrides_the_parameter(monkeypatch):
    monkeypatch.setenv("CCAD_MODE", "fast")
    assert modes.resolve_mode("full") == "fast"


def test_unknown_mode_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("CCAD_MODE", raising=False)
    with pytest.raises(ValueError, match="MODE must be one of"):
        modes.resolve_mode("turbo")


def test_cuda_device_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        modes.resolve_device("cuda")


def test_full_mode_without_data_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("CCAD_MODE", "full")
    monkeypatch.delenv("CCAD_DATA_ROOT", raising=False)
    with pytest.raises(ValueError, match="download-mvtec"):
        modes.start_chapter(device="cpu")


def test_chapter_records_results_as_json(tmp_path, monkeypatch):
    monkeypatch.setenv("CCAD_MODE", "fast")
    out = tmp_path / "results" / "ch.json"
    chapter = modes.start_chapter(device="cpu", seed=3, data_root=tmp_path, results_path=out)
    chapter.record(auroc=torch.tensor(0.75), curve=[1, 2])
    saved = json.loads(out.read_text())
    assert saved["mode"] == "fast" and saved["seed"] == 3
    assert saved["auroc"] == pytest.approx(0.75) and saved["curve"] == [1, 2]


def test_missing_data_root_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("CCAD_MODE", "fast")
    with pytest.raises(ValueError, match="does-not-exist"):
        modes.start_chapter(device="cpu", data_root=tmp_path / "does-not-exist")


def test_sd_weights_come_from_the_argument_then_the_variable_then_the_hub(monkeypatch):
    from ccad_tutorial.modes import SD15_HUB_ID, sd_weights

    monkeypatch.delenv("CCAD_SD_WEIGHTS", raising=False)
    assert sd_weights() == SD15_HUB_ID
    monkeypatch.setenv("CCAD_SD_WEIGHTS", "/weights/sd15")
    assert sd_weights() == "/weights/sd15" and sd_weights("other/id") == "other/id"
