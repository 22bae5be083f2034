"""The command line: each sub-command runs, and user mistakes end in one clear line, exit 1."""

import json
import subprocess
import sys

import pytest

from ccad_tutorial import cli


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m ccad_tutorial`` as a user would (a fresh process)."""
    return subprocess.run(
        [sys.executable, "-m", "ccad_tutorial", *args], capture_output=True, text=True
    )


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("make-data", "check-data", "patchcore", "train", "evaluate"):
        assert command in out.stdout


def test_make_data_then_check_data_prints_counts(tmp_path):
    root = tmp_path / "minitex"
    made = run_cli("make-data", "--out", str(root), "--size", "64", "--seed", "1")
    assert made.returncode == 0, made.stderr
    checked = run_cli("check-data", "--data", str(root), "--layout", "mvtec")
    assert checked.returncode == 0, checked.stderr
    assert "brick" in checked.stdout and "scratch" in checked.stdout


def test_check_data_on_missing_root_is_one_line_without_traceback(tmp_path):
    out = run_cli("check-data", "--data", str(tmp_path / "nowhere"))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "nowhere" in out.stderr and out.stderr.startswith("error:")


def test_check_data_pointed_inside_a_category_says_go_up(minitex_root):
    out = run_cli("check-data", "--data", str(minitex_root / "brick"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert str(minitex_root) in out.stderr


def test_main_returns_1_on_value_errors(capsys, tmp_path):
    code = cli.main(["check-data", "--data", str(tmp_path / "missing")])
    assert code == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_patchcore_writes_metrics_json(minitex_root, tmp_path):
    out_json = tmp_path / "pc.json"
    out = run_cli(
        "patchcore",
        "--data",
        str(minitex_root),
        "--category",
        "brick",
        "--image-size",
        "64",
        "--json",
        str(out_json),
    )
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out_json.read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= metrics[key] <= 1.0


def test_evaluate_on_a_folder_that_is_not_a_run_says_how_to_make_one(minitex_root, tmp_path):
    out = run_cli(
        "evaluate", "--run", str(tmp_path), "--data", str(minitex_root), "--category", "brick"
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "not a CCAD run" in out.stderr and "ccad-tutorial train" in out.stderr


def test_train_on_a_missing_category_is_a_clear_error(minitex_root, tmp_path):
    out = run_cli(
        "train", "--data", str(minitex_root), "--category", "carpet", "--out", str(tmp_path / "r")
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "carpet" in out.stderr
    assert not (tmp_path / "r").exists()  # nothing written


def test_set_overrides_config_fields_as_json_or_text():
    got = cli.parse_overrides(["bank_mode=retrieved", "xi=0.5", "feature_layers=[1, 2]"])
    assert got == {"bank_mode": "retrieved", "xi": 0.5, "feature_layers": (1, 2)}
    with pytest.raises(ValueError, match="CCADConfig field"):
        cli.parse_overrides(["bankmode=retrieved"])
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        cli.parse_overrides(["xi"])


def test_train_with_an_unknown_set_field_writes_nothing(minitex_root, tmp_path, capsys):
    args = [
        "train",
        "--data",
        str(minitex_root),
        "--category",
        "brick",
        "--out",
        str(tmp_path / "r"),
    ]
    assert cli.main([*args, "--set", "bankmode=retrieved"]) == 1
    assert "bankmode" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert cli.main([*args, "--resume", "--set", "xi=0.5"]) == 1
    assert "resumed run keeps" in capsys.readouterr().err
