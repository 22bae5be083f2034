"""The reading page states the presets' settings: these checks fail when a preset changes
and the page does not (the page is prose, so it cannot glue them)."""

import re
from pathlib import Path

import pytest

from ccad_tutorial.presets import MULTICLASS_DEFAULTS, make_config

ROOT = Path(__file__).resolve().parents[1]
READING = (ROOT / "book" / "reading.md").read_text()
TINY, SD15 = make_config("tiny", "F"), make_config("sd15", "F")


def row(number: str) -> str:
    """The text of one row of the decisions table, by its number."""
    match = re.search(rf"^\* - {re.escape(number)}\n((?:  - .*\n?)+)", READING, flags=re.M)
    assert match, f"book/reading.md has no row {number} in its decisions table"
    return match.group(1)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("1", [TINY.backbone, SD15.backbone]),
        ("3", [f"K = {TINY.num_queries}"]),
        ("7", [f"{SD15.lr:.0e}".replace("e-0", "e-"), f"{TINY.lr:.0e}".replace("e-0", "e-")]),
        ("7", [f"{TINY.beta_start:g} to {TINY.beta_end:g}", f"{TINY.num_train_timesteps} steps"]),
        ("8", [f"{TINY.t_start} in `tiny`", f"{SD15.t_start} in `sd15`"]),
        ("8", [f"{TINY.ddim_steps} steps and eta {TINY.eta:g}"]),
        ("8b", [f"{MULTICLASS_DEFAULTS['cond_dropout']:.0%}".replace("%", " %")]),
    ],
)
def test_reading_page_states_the_presets_settings(number, expected):
    text = row(number)
    for value in expected:
        assert value in text, f"book/reading.md row {number} should state {value!r}: {text[:200]}"


def test_reading_page_names_the_default_anomaly_map():
    assert TINY.score_mode == SD15.score_mode == "feature"
    text = row("9")
    assert "default of both presets" in text
    assert "fast-mode default" not in READING  # the pixel-L1 map is an alternative only


def test_the_uncond_control_is_the_learned_null_token_everywhere():
    assert "learned null token" in READING
    for chapter in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert "fixed zero token" not in chapter.read_text(), chapter.name
