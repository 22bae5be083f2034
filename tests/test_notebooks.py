"""Every chapter executes in fast mode with papermill, and its headline numbers make sense.

Each chapter writes the numbers it claims to ``RESULTS_PATH``; the checks below assert on
them, so a chapter whose text and results drift apart fails here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 600  # papermill's per-cell limit
BUDGET_S = {  # whole-notebook limits (generous: machines are noisy; the book times them)
    "01_anomaly_detection_and_data": 300,
}


def check_01_anomaly_detection_and_data(r: dict) -> None:
    assert r["mode"] == "fast"
    assert len(r["categories"]) >= 4 and all(n >= 100 for n in r["n_test_images"].values())
    assert 0.7 < r["toy_image_auroc"] < 0.97
    assert r["toy_inverted_auroc"] == pytest.approx(1 - r["toy_image_auroc"])  # raw, not flipped
    assert r["toy_f1_max"] >= 2 / 3  # bounded below by "everything is anomalous"
    a, b = r["toy_pixel"]["A"], r["toy_pixel"]["B"]
    # The text's claim: pixel AUROC prefers the large-defects map, AUPRO the every-defect map.
    assert a["pixel_auroc"] > b["pixel_auroc"] and a["aupro"] < b["aupro"]


CHECKS = {name[len("check_") :]: fn for name, fn in globals().items() if name.startswith("check_")}


def test_every_chapter_has_a_results_check_and_a_budget():
    for path in CHAPTERS:
        assert path.stem in CHECKS and path.stem in BUDGET_S, path.name


@pytest.mark.notebook
@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes_in_fast_mode(path, tmp_path):
    results = tmp_path / "results.json"
    command = [
        sys.executable, "-m", "papermill", str(path), str(tmp_path / path.name),
        "-p", "MODE", "fast", "-p", "RESULTS_PATH", str(results),
        "--kernel", "python3", "--cwd", str(path.parent),
        "--execution-timeout", str(CELL_TIMEOUT_S), "--no-progress-bar",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=BUDGET_S[path.stem])
    assert done.returncode == 0, done.stderr[-4000:]
    CHECKS[path.stem](json.loads(results.read_text()))
