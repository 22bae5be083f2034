"""Every chapter executes in full mode, on the CPU, against offline stand-ins of its downloads.

Full mode is what an instructor runs in Colab: SD v1.5 weights, pretrained backbones,
MVTec-AD. None of it can be downloaded here, so ``ccad_tutorial.standins`` writes each in the
real layout (random weights, MiniTex-AD images under MVTec-AD names) and the chapters read
them through the variables a user sets: ``CCAD_MODE=full``, ``CCAD_SD_WEIGHTS``,
``CCAD_BACKBONE_WEIGHTS`` and the ``DATA_ROOT`` / ``DEVICE`` parameters. The parameters below
only shrink sizes and budgets; every full-only branch of every chapter runs. The numbers are
meaningless (random weights): the checks are that each chapter ran in full mode and read the
stand-ins.
"""

import ast
import json
import os
from pathlib import Path

import nbformat
import pytest

from ccad_tutorial.standins import make_standins

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Small sizes and budgets, through each chapter's own parameters cell.
FULL_PARAMETERS = {
    "01_anomaly_detection_and_data": dict(IMAGE_SIZE=64),
    "02_diffusion_basics": dict(
        IMAGE_SIZE=64,
        TRAIN_STEPS=4,
        BATCH_SIZE=2,
        VAE_STEPS=4,
        N_TEST=2,
        DDIM_STEPS=2,
        T_STARTS=[0, 400],
    ),
    "03_global_features_and_coreset": dict(IMAGE_SIZE=64),
    "04_fine_compression_module": dict(
        IMAGE_SIZE=64, PROBE_STEPS=5, PROBE_SEEDS=1, K_VALUES=[1, 4]
    ),
    "05_gcb_conditioning": dict(TRAIN_STEPS=2, IMAGE_SIZE=64, BATCH_SIZE=2),
    "06_ccad_end_to_end": dict(
        CATEGORY="tile", OTHER_CATEGORY="metal_nut", STEPS=3, IMAGE_SIZE=64, VAE_STEPS=3
    ),
    "07_mvtec_on_a_gpu": dict(STEPS=2, IMAGE_SIZE=64, BATCH_SIZE=2),
    "08_evaluation_and_ablations": dict(N_DETECTORS=50),
}


def test_every_chapter_has_full_parameters():
    assert sorted(FULL_PARAMETERS) == [c.stem for c in CHAPTERS]
    for chapter in CHAPTERS:
        nb = nbformat.read(chapter, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        declared = {t.id for n in ast.parse(cell.source).body for t in getattr(n, "targets", [])}
        unknown = set(FULL_PARAMETERS[chapter.stem]) - declared
        assert not unknown, f"{chapter.name} has no parameter(s) {unknown}"


def full_only_lines(source: str) -> int:
    """Lines of a cell that run only in full mode: the else of ``if chapter.fast``, the body of
    ``if not chapter.fast`` and the full side of ``x if chapter.fast else y``."""

    def mentions_fast(node) -> bool:
        return any(isinstance(n, ast.Attribute) and n.attr == "fast" for n in ast.walk(node))

    def lines(nodes) -> set[int]:
        return {i for n in nodes for i in range(n.lineno, n.end_lineno + 1)}

    found: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.If) and mentions_fast(node.test):
            negated = isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
            found |= lines(node.body if negated else node.orelse)
        elif isinstance(node, ast.IfExp) and mentions_fast(node.test):
            found |= lines([node.orelse])
    return len(found)


def test_full_only_lines_are_counted():
    source = (
        "if chapter.fast:\n    a = 1\nelse:\n    b = 2\n    c = 3\nd = 4 if chapter.fast else 5\n"
    )
    assert full_only_lines(source) == 3
    total = sum(
        full_only_lines(c.source)
        for chapter in CHAPTERS
        for c in nbformat.read(chapter, as_version=4).cells
        if c.cell_type == "code"
    )
    print(f"full-only lines in the chapters: {total}")
    assert total > 0


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    """The stand-ins, and the environment a full-mode user would set, for this module only."""
    env = make_standins(tmp_path_factory.mktemp("standins"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CCAD_MODE", "full")  # `make test` exports CCAD_MODE=fast
        patch.setenv("CCAD_SD_WEIGHTS", env["CCAD_SD_WEIGHTS"])
        patch.setenv("CCAD_BACKBONE_WEIGHTS", env["CCAD_BACKBONE_WEIGHTS"])
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.delenv("CCAD_DATA_ROOT", raising=False)  # passed as DATA_ROOT below
        yield env


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem[:2])
def test_chapter_runs_in_full_mode(chapter, standins, tmp_path):
    import papermill

    results = tmp_path / "results.json"
    parameters = dict(
        MODE="full",
        DEVICE="cpu",
        DATA_ROOT=standins["CCAD_DATA_ROOT"],
        RESULTS_PATH=str(results),
        **FULL_PARAMETERS[chapter.stem],
    )
    if chapter.stem.startswith("07"):  # its run folders: not runs/ in the repository
        parameters["OUT_DIR"] = str(tmp_path / "runs")
    out = tmp_path / chapter.name
    papermill.execute_notebook(
        str(chapter),
        str(out),
        parameters=parameters,
        cwd=str(ROOT),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=600,
    )
    recorded = json.loads(results.read_text())
    assert recorded["mode"] == "full" and recorded["device"] == "cpu"
    printed = "".join(
        o.get("text", "")
        for c in nbformat.read(out, as_version=4).cells
        for o in c.get("outputs", [])
    )
    assert "mode=full" in printed
    if chapter.stem.startswith(("05", "07")):  # the SD v1.5 stand-in, not the hub
        assert os.environ["CCAD_SD_WEIGHTS"] in printed
