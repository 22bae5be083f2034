"""The MVTec-AD reproduction recipe, end to end on a tiny MiniTex-AD in the MVTec layout.

The GPU recipe (sd15 preset, 15 categories) cannot run here, so its code path runs with the
tiny preset at 32 px for two steps per model, in both settings (one multi-class model, one
model per category); full mode runs once on the CPU against the offline stand-ins of every
download (``ccad_tutorial.standins``); the shell script is checked against the command line
parser it calls.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_settings import FAST as TINY

from ccad_tutorial import cli, modes, reproduce
from ccad_tutorial.datasets import DataError
from ccad_tutorial.detectors import train_run
from ccad_tutorial.download import MVTEC_CATEGORIES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "mvtec_gpu.sh"
FAST = {**TINY, "ddim_steps": 2}
TWO = ["brick", "grass"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: these tensors are tiny, and on a busy 2-core machine two threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_tiny(data, out, categories=TWO, steps=2, **kw):
    kw = {"progress": False, **FAST, **kw}
    return reproduce.reproduce(data, out, categories, preset="tiny", steps=steps, **kw)


@pytest.fixture(scope="module")
def done(minitex_root, tmp_path_factory):
    """Two categories, one multi-class model trained and evaluated once, shared by the tests
    that read them."""
    out = tmp_path_factory.mktemp("reproduce") / "tiny"
    return out, run_tiny(minitex_root, out)


@pytest.fixture(scope="module")
def done_per_category(minitex_root, tmp_path_factory):
    """The same two categories with one model each."""
    out = tmp_path_factory.mktemp("reproduce") / "per-category"
    return out, run_tiny(minitex_root, out, per_category=True)


def test_by_default_one_model_is_trained_for_all_categories_and_each_is_evaluated(done):
    out, results = done
    model = out / reproduce.MULTICLASS
    assert {"config.json", "model.safetensors", "bank.safetensors"} <= {
        p.name for p in model.iterdir()
    }
    config = json.loads((model / "config.json").read_text())
    assert list(config["extra"]["train_counts"]) == TWO  # one bank over both categories
    assert results["setting"]["training"] == "multi-class" and results["setting"]["models"] == 1
    assert list(results["categories"]) == TWO
    for category, metrics in results["categories"].items():
        for key in reproduce.METRICS:
            assert 0.0 <= metrics[key] <= 1.0
        assert metrics["steps"] == 2 and metrics["train_s"] > 0
        assert {p.name for p in (out / category).iterdir()} == {"metrics.json", "examples.png"}
        written = json.loads((out / category / "metrics.json").read_text())
        assert written["setting"] == "multi-class" and written["run"] == str(model)
    assert json.loads((out / "results.json").read_text()) == results


def test_the_summary_is_the_mean_over_categories_and_says_it_is_not_the_papers():
    metrics = dict.fromkeys(reproduce.METRICS, 0.5)
    per_category = {"tile": {**metrics, "image_auroc": 0.2}, "wood": {**metrics, "steps": 3}}
    setting = {"preset": "tiny", "training": "multi-class"}
    results = reproduce.summarise(per_category, setting)
    assert results["mean"]["image_auroc"] == pytest.approx(0.35)
    assert results["mean"]["pixel_auroc"] == pytest.approx(0.5)
    assert results["categories"]["wood"]["steps"] == 3
    assert not results["comparable_with_paper"] and "'tiny' preset" in results["note"]


def test_per_category_trains_and_evaluates_one_model_per_category(done_per_category):
    out, results = done_per_category
    assert results["setting"]["training"] == "per category" and results["setting"]["models"] == 2
    assert not (out / reproduce.MULTICLASS).exists()
    for category, metrics in results["categories"].items():
        assert metrics["steps"] == 2
        run = out / category
        assert {"config.json", "model.safetensors", "metrics.json", "examples.png"} <= {
            p.name for p in run.iterdir()
        }
        assert json.loads((run / "metrics.json").read_text())["setting"] == "per category"
    assert "| brick | per category |" in (out / "results.md").read_text()


def test_table_says_the_setting_of_every_number_next_to_the_papers(done):
    out, results = done
    table = (out / "results.md").read_text()
    assert "| brick | multi-class |" in table and "| grass | multi-class |" in table
    assert "| **mean of 2 (ours)** | multi-class |" in table
    assert "| CCAD (paper) | not stated | 0.962 | 0.966 |" in table
    assert "| DiAD (multi-class) | multi-class | 0.972 | 0.968 | 0.907 |" in table
    assert "| PatchCore | per category | 0.991 | 0.981 |" in table
    assert "arXiv 2512.21459" in table
    assert not results["comparable_with_paper"]
    assert "NOT comparable" in table and "'tiny' preset" in results["note"]


def test_a_second_call_skips_the_evaluated_categories(done, minitex_root, monkeypatch, capsys):
    out, first = done

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished category was trained or evaluated again")

    monkeypatch.setattr(reproduce, "train_run", must_not_run)
    monkeypatch.setattr(reproduce, "evaluate_run", must_not_run)
    again = run_tiny(minitex_root, out)
    assert again == first
    assert capsys.readouterr().out.count("already evaluated") == 2


def test_the_cli_prints_the_table_of_a_finished_reproduction(done, minitex_root, capsys):
    out, _ = done
    argv = ["reproduce", "--data", str(minitex_root), "--categories", "brick,grass"]
    code = cli.main([*argv, "--preset", "tiny", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| CCAD (paper) | not stated | 0.962 | 0.966 |" in printed and "results.json" in printed


def test_results_of_another_setting_are_never_mixed_in(done, minitex_root):
    out, _ = done
    with pytest.raises(ValueError, match="setting 'multi-class'.*choose another --out"):
        run_tiny(minitex_root, out, per_category=True)


def test_an_interrupted_category_resumes_at_its_checkpoint(minitex_root, tmp_path, capsys):
    run = tmp_path / "out" / "brick"
    train_run(minitex_root, "brick", run, preset="tiny", steps=2, progress=False, **FAST)
    # with progress output on (the CLI's default), the resumed run says so
    results = run_tiny(
        minitex_root, tmp_path / "out", ["brick"], steps=4, progress=True, per_category=True
    )
    assert f"Resumed from {run} at step 2" in capsys.readouterr().out
    assert results["categories"]["brick"]["steps"] == 4
    logged = (run / "loss_log.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in logged] == [1, 2, 3, 4]


def test_an_interrupted_multiclass_model_resumes_and_every_category_is_evaluated_after(
    minitex_root, tmp_path, capsys
):
    out = tmp_path / "out"
    run = out / reproduce.MULTICLASS
    train_run(minitex_root, "brick+grass", run, preset="tiny", steps=2, progress=False, **FAST)
    results = run_tiny(minitex_root, out, steps=4, progress=True)
    assert f"Resumed from {run} at step 2" in capsys.readouterr().out
    assert [m["steps"] for m in results["categories"].values()] == [4, 4]


def test_a_category_evaluated_before_the_model_trained_on_is_evaluated_again(
    done, minitex_root, tmp_path, capsys
):
    out, _ = done
    shutil.copytree(out, tmp_path / "out")
    (tmp_path / "out" / "grass" / "metrics.json").unlink()  # interrupted before grass
    results = run_tiny(minitex_root, tmp_path / "out", steps=3)
    assert capsys.readouterr().out.count("already evaluated") == 0  # brick's was of step 2
    assert [m["steps"] for m in results["categories"].values()] == [3, 3]


def test_a_model_of_other_categories_is_refused(done, minitex_root):
    out, _ = done
    (out / "grass" / "metrics.json").rename(out / "grass" / "kept.json")
    try:
        with pytest.raises(ValueError, match="trained on brick\\+grass, not grass.*--out"):
            run_tiny(minitex_root, out, categories=["grass"])
    finally:
        (out / "grass" / "kept.json").rename(out / "grass" / "metrics.json")


def test_a_category_stopped_before_its_first_checkpoint_starts_over(minitex_root, tmp_path):
    run = tmp_path / "out" / "brick"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")  # what an interrupted bank / VAE stage leaves
    results = run_tiny(minitex_root, tmp_path / "out", categories=["brick"], per_category=True)
    assert results["categories"]["brick"]["steps"] == 2
    assert json.loads((run / "config.json").read_text())["preset"] == "tiny"


def test_an_unknown_category_is_named_with_the_known_ones(minitex_root, tmp_path):
    with pytest.raises(DataError, match=r"\['wood'\].*brick, grass"):
        run_tiny(minitex_root, tmp_path / "out", categories=["brick", "wood"])
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_a_missing_data_folder_is_a_clear_cli_error(tmp_path, capsys):
    argv = ["reproduce", "--data", str(tmp_path / "nowhere"), "--preset", "tiny"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nowhere" in err and "does not exist" in err


def test_results_of_another_preset_are_never_mixed_in(done, minitex_root):
    out, _ = done
    with pytest.raises(ValueError, match="preset 'tiny'.*choose another --out"):
        with pytest.warns(UserWarning, match="random weights"):  # sd15 without --pretrained
            reproduce.reproduce(minitex_root, out, TWO, preset="sd15", progress=False)


def test_only_sd15_with_weights_on_all_15_categories_compares_with_the_paper():
    metrics = {c: dict.fromkeys(reproduce.METRICS, 0.9) for c in MVTEC_CATEGORIES}
    setting = {"preset": "sd15", "variant": "F", "pretrained": "sd", "training": "multi-class"}
    same = reproduce.summarise(metrics, setting)
    assert same["comparable_with_paper"] and "setting as DiAD" in same["note"]
    easier = reproduce.summarise(metrics, {**setting, "training": "per category"})
    assert easier["comparable_with_paper"] and "easier setting" in easier["note"]
    no_weights = reproduce.summarise(metrics, {**setting, "pretrained": None})
    assert not no_weights["comparable_with_paper"] and "random-init" in no_weights["note"]
    fewer = reproduce.summarise({"bottle": metrics["bottle"]}, setting)
    assert not fewer["comparable_with_paper"] and "1 categories" in fewer["note"]


def test_the_sd15_budget_is_diads_200_epochs_for_one_model_or_spread_over_15():
    mvtec_train = reproduce.MVTEC_TRAIN_IMAGES
    assert list(mvtec_train) == list(MVTEC_CATEGORIES) and sum(mvtec_train.values()) == 3629
    assert reproduce.budget("sd15", 3629) == math.ceil(200 * 3629 / 48)  # one multi-class model
    steps = [reproduce.budget("sd15", n) for n in mvtec_train.values()]
    assert steps[0] == math.ceil(200 * 209 / 48)
    assert 15_000 <= sum(steps) <= 15_200  # DiAD: ~15k steps for all 15 categories
    assert reproduce.budget("sd15", 209, steps=7) == 7
    assert reproduce.budget("tiny", 120) == 800  # the tiny preset keeps its own budget


def test_full_mode_without_cuda_falls_back_to_fast_unless_the_cpu_is_asked_for(monkeypatch):
    monkeypatch.delenv("CCAD_MODE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="falling back to fast mode"):
        assert reproduce.resolve_gpu_mode("full") == "fast"
    with pytest.warns(UserWarning, match="on the CPU, as asked"):
        assert reproduce.resolve_gpu_mode("full", device="cpu") == "full"
    assert reproduce.resolve_gpu_mode("auto", device="cpu") == "fast"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert reproduce.resolve_gpu_mode("full") == "full"


def test_full_mode_reads_the_data_root_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CCAD_DATA_ROOT", str(tmp_path))
    assert reproduce.resolve_data("full") == str(tmp_path)  # no download
    assert reproduce.resolve_data("full", "elsewhere") == "elsewhere"


# ------------------------------------------------------------------ full mode, offline
@pytest.mark.slow
def test_full_mode_runs_end_to_end_on_the_cpu_against_the_offline_standins(
    tmp_path, monkeypatch, capsys
):
    """The sd15 preset with SD v1.5's layout, pretrained backbones and an MVTec-AD tree, all
    stand-ins (random weights, 2 categories), small through the CLI's own options."""
    from ccad_tutorial.standins import make_standins

    env = make_standins(tmp_path / "standins", size=64, n_train=4)
    for key in (modes.SD_WEIGHTS_ENV, "CCAD_BACKBONE_WEIGHTS"):
        monkeypatch.setenv(key, env[key])
    small = ["--steps", "2", "--image-size", "64", "--set", "batch_size=2"]
    small += ["--set", "grad_accum=1", "--set", "ddim_steps=2", "--device", "cpu"]
    base = ["reproduce", "--data", env["CCAD_DATA_ROOT"], "--preset", "sd15", *small]
    base += ["--pretrained", modes.sd_weights()]
    for setting, extra in (("multi-class", []), ("per category", ["--per-category"])):
        out = tmp_path / setting.replace(" ", "-")
        assert cli.main([*base, "--out", str(out), *extra]) == 0, capsys.readouterr().err
        results = json.loads((out / "results.json").read_text())
        assert results["setting"]["training"] == setting
        assert results["setting"]["pretrained"] == env[modes.SD_WEIGHTS_ENV]
        assert list(results["categories"]) == ["metal_nut", "tile"]
        table = (out / "results.md").read_text()
        assert f"| tile | {setting} |" in table and f"| metal_nut | {setting} |" in table
        assert "| DiAD (multi-class) | multi-class |" in table
        model = out / (reproduce.MULTICLASS if setting == "multi-class" else "tile")
        config = json.loads((model / "config.json").read_text())
        assert config["preset"] == "sd15" and config["image_size"] == 64
        assert config["pretrained_backbone"] and config["score_pretrained"]
        assert config["extra"]["unet_config"]["block_out_channels"] == [32, 64, 64, 64]
        assert config["steps"] == 2 and (out / "tile" / "examples.png").is_file()


def test_preset_differences_lists_what_sd15_changes():
    diff = reproduce.preset_differences("tiny", "sd15")
    assert diff["image_size"] == (128, 256) and diff["block_out_channels"][1][0] == 320
    assert "preset" not in diff and "variant" not in diff and "xi" not in diff


# ------------------------------------------------------------------ the GPU script
def test_the_gpu_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def run_script(tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run the script with a fake GPU and a recorder in place of ``ccad-tutorial``.

    The recorder parses its arguments with the CLI's own parser (exit 2 if they do not
    parse) and logs them, so the script's command lines cannot drift from the CLI.
    """
    log = tmp_path / "calls.jsonl"
    recorder = tmp_path / "ccad-recorder"
    recorder.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "from ccad_tutorial.cli import build_parser\n"
        "build_parser().parse_args(sys.argv[1:])\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake_gpu = tmp_path / "fake-nvidia-smi"
    fake_gpu.write_text("#!/bin/sh\necho 'Fake GPU, 81559 MiB, 550.00'\n")
    for tool in (recorder, fake_gpu):
        tool.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("DATA_ROOT", modes.SD_WEIGHTS_ENV)}
    base.update(CCAD=str(recorder), NVIDIA_SMI=str(fake_gpu), OUT=str(tmp_path / "out"))
    done = subprocess.run(
        ["bash", str(SCRIPT)], env={**base, **env}, capture_output=True, text=True, cwd=tmp_path
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def test_the_gpu_script_runs_sd15_on_all_15_categories_with_sd_weights(tmp_path):
    done, calls = run_script(tmp_path, DATA_ROOT=str(tmp_path / "mvtec"))
    assert done.returncode == 0, done.stderr
    assert len(calls) == 1
    args = cli.build_parser().parse_args(calls[0])
    assert args.command == "reproduce" and args.preset == "sd15" and args.device == "cuda"
    assert args.categories.split(",") == list(MVTEC_CATEGORIES)
    assert args.pretrained == modes.SD15_HUB_ID and not args.per_category  # multi-class
    assert args.data == str(tmp_path / "mvtec") and args.steps is None  # the paper's budget


def test_the_gpu_script_trains_one_model_per_category_when_asked(tmp_path):
    done, calls = run_script(tmp_path, DATA_ROOT="x", PER_CATEGORY="1", CCAD_SD_WEIGHTS="/sd")
    assert done.returncode == 0, done.stderr
    args = cli.build_parser().parse_args(calls[0])
    assert args.per_category and args.pretrained == "/sd"


def test_the_gpu_script_downloads_mvtec_when_data_root_is_unset(tmp_path):
    done, calls = run_script(tmp_path, DOWNLOAD_DIR=str(tmp_path / "dl"), STEPS="10")
    assert done.returncode == 0, done.stderr
    download, run = (cli.build_parser().parse_args(c) for c in calls)
    assert download.command == "download-mvtec" and download.out == str(tmp_path / "dl")
    assert run.data == str(tmp_path / "dl") and run.steps == 10


def test_the_gpu_script_stops_without_a_gpu(tmp_path):
    done, calls = run_script(tmp_path, NVIDIA_SMI="no-such-nvidia-smi", DATA_ROOT="x")
    assert done.returncode == 1 and calls == []
    assert "error:" in done.stderr and "NVIDIA GPU" in done.stderr
