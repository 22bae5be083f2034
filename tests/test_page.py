"""ccad_tutorial.page: what a chapter prints besides figures."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from ccad_tutorial import page


def test_glue_stores_plain_python_numbers_that_myst_nb_can_format(monkeypatch):
    stored = {}
    monkeypatch.setattr("myst_nb.glue", lambda name, value, display: stored.update({name: value}))
    assert page.glue("a", np.float64(0.25)) == 0.25
    page.glue("b", torch.tensor(3))
    page.glue("c", np.int64(7))
    page.glue("d", "brick")
    assert stored == {"a": 0.25, "b": 3, "c": 7, "d": "brick"}
    assert [type(v) for v in stored.values()] == [float, int, int, str]
    # myst-nb reads the text/plain repr back with literal_eval: numpy's is not a literal
    assert repr(stored["a"]) == "0.25"


def test_glue_refuses_what_is_not_a_number_or_a_string():
    with pytest.raises(TypeError, match="number or a string"):
        page.glue("x", [1, 2])
    with pytest.raises(TypeError, match="number or a string"):
        page.glue("x", np.zeros(3))


def test_markdown_table_formats_floats_and_escapes_pipes():
    text = page.markdown_table(["a", "b"], [[1, 0.12345], ["x|y", 2.0]], digits=2)
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.12 |", "| x\\|y | 2.00 |"]
    with pytest.raises(ValueError, match="row 0 has 1 cells, the header 2"):
        page.markdown_table(["a", "b"], [[1]])


def test_show_table_displays_the_markdown_table(monkeypatch):
    shown = []
    monkeypatch.setattr(page, "display", lambda obj: shown.append(obj.data))
    page.show_table(["a", "b"], [[1, 0.5]], digits=1)
    assert shown == [page.markdown_table(["a", "b"], [[1, 0.5]], digits=1)]


def test_markdown_table_needs_no_ipython():
    # the command line prints tables where the book tools (and IPython) may be missing
    code = (
        "import sys; sys.modules['IPython'] = None\n"
        "from ccad_tutorial.page import markdown_table\n"
        "print(markdown_table(['a'], [[0.5]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["| a |", "|---|", "| 0.500 |"]


def test_show_code_displays_the_dedented_source(monkeypatch):
    shown = []
    monkeypatch.setattr(page, "display", lambda obj: shown.append(obj.data))
    page.show_code(page.markdown_table)
    assert shown[0].startswith("```python\ndef markdown_table(")
    assert shown[0].rstrip().endswith("```")


def _too_wide():
    return "x" * 100  # a line the book's column cannot hold, even once the indentation is gone


def test_show_code_refuses_code_wider_than_the_column(monkeypatch):
    monkeypatch.setattr(page, "display", lambda obj: None)
    with pytest.raises(ValueError, match=r"_too_wide: line 2 of the shown code is \d+ char"):
        page.show_code(_too_wide)
