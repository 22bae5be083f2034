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


MAX_LINE = 88  # the book's code column: longer lines are cut off in the HTML
MAX_CELL_LINES = 30  # a visible cell reads at a glance; longer logic belongs in the package
PRIVATE_WORDS = re.compile(r"\b(brief|first prototype|prototype measured)\b", re.I)


def _visible_code_cells(path: Path):
    for cell in load(path)["cells"]:
        tags = set(cell["metadata"].get("tags", []))
        if cell["cell_type"] == "code" and not {"remove-cell", "remove-input"} & tags:
            yield "".join(cell["source"])


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_code_fits_the_column(path):
    long_lines, long_cells = [], []
    for source in _visible_code_cells(path):
        lines = source.splitlines()
        long_lines += [line for line in lines if len(line) > MAX_LINE]
        if len(lines) > MAX_CELL_LINES:
            long_cells.append(f"{lines[0][:60]}... ({len(lines)} lines)")
    assert not long_lines, (
        f"{path.name}: {len(long_lines)} code lines over {MAX_LINE} characters (cut off in the "
        "book): " + " / ".join(line[:70] for line in long_lines[:5])
    )
    assert not long_cells, (
        f"{path.name}: cells over {MAX_CELL_LINES} lines (move the logic into the package): "
        f"{long_cells}"
    )


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_speaks_to_its_reader_only(path):
    """The reader has the book and the package: no internal documents named."""
    text = "".join("".join(c["source"]) for c in load(path)["cells"])
    assert not PRIVATE_WORDS.search(text), PRIVATE_WORDS.search(text).group(0)


# Numbers of the literature a chapter may type: the paper's and DiAD's MVTec-AD results and
# Stable Diffusion's latent scaling factor. Any other number with three or more decimals in
# the prose is a measurement, and a measurement is glued from the cell that made it.
LITERATURE = {"0.962", "0.966", "0.972", "0.968", "0.907", "0.18215"}
MEASURED = re.compile(r"(?<![\w.])\d+\.\d{3,}(?![\w.])")


def _prose(cell_source: str) -> str:
    """Markdown without what cannot be a typed measurement: glue roles, code, math."""
    text = re.sub(r"\{glue:[a-z]*\}`[^`]*`", " ", cell_source)
    text = re.sub(r"\$\$.*?\$\$|\$[^$\n]*\$", " ", text, flags=re.S)
    return re.sub(r"`[^`\n]*`", " ", text)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_prose_glues_its_measurements(path):
    typed = [
        number
        for cell in load(path)["cells"]
        if cell["cell_type"] == "markdown"
        for number in MEASURED.findall(_prose("".join(cell["source"])))
        if number not in LITERATURE
    ]
    assert not typed, (
        f"{path.name}: numbers typed into the prose: {typed}. Glue them from the cell that "
        "computes them (ccad_tutorial.page.glue and {glue:text}`name:.3f`)."
    )
