"""Chapters are stored clean: no outputs, no widget state, python3 kernel, one parameters cell."""

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_chapters():
    assert CHAPTERS, "notebooks/ holds no chapter"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_stored_without_outputs_or_widget_state(path):
    nb = load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert "widgets" not in nb["metadata"]
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_one_parameters_cell_of_literals(path):
    cells = [c for c in load(path)["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1
    source = "".join(cells[0]["source"])
    names = re.findall(r"^([A-Z_][A-Z0-9_]*)\s*=", source, flags=re.M)
    for required in ("MODE", "DATA_ROOT", "DEVICE", "SEED", "RESULTS_PATH"):
        assert required in names
    for line in source.splitlines():  # literals only: papermill does not re-run derived values
        code = line.split("#")[0].strip()
        if code:
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*\s*=\s*[-\w.\"' ()\[\],]+", code), line


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_colab_badge_and_colab_only_install(path):
    cells = load(path)["cells"]
    assert "colab.research.google.com" in "".join(cells[0]["source"])
    install = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    assert '"google.colab" in sys.modules' in install
    assert "torch" not in install.replace("torch comes with Colab", "")  # never reinstalled
    assert " -U" not in install and "--upgrade" not in install


def test_every_chapter_is_in_the_table_of_contents_and_urls_agree():
    toc = (ROOT / "_toc.yml").read_text()
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"]
    for path in CHAPTERS:
        assert f"notebooks/{path.stem}" in toc
        text = path.read_text()
        assert repo in text, f"{path.name}: install cell must use {repo}"
        assert repo.replace("https://github.com/", "github/") in text, "Colab badge URL"
