"""Experiment cells: cached, resumable, checkpointed; the summaries' arithmetic."""

import json
import statistics

import pytest
from tiny_settings import FAST

from ccad_tutorial.experiments import (
    category_means,
    cell_name,
    checkpoint_rows,
    format_table,
    run_cell,
    summarise,
)


def test_cell_names_carry_every_setting_in_a_stable_order():
    assert cell_name("F", "brick", 0) == "F_brick_s0"
    a = cell_name("F", "brick", 1, {"xi": 0.5, "block_out_channels": (16, 32)})
    assert a == "F_brick_s1_block_out_channels=16-32_xi=0.5"
    assert a == cell_name("F", "brick", 1, {"block_out_channels": (16, 32), "xi": 0.5})


def test_a_cell_is_trained_once_checkpointed_and_then_read_back(minitex_root, tmp_path):
    row = run_cell(minitex_root, "brick", "F", 0, tmp_path, steps=4, checkpoints=[2], **FAST)
    assert 0 <= row["image_auroc"] <= 1 and row["steps"] == 4 and row["bank_size"] >= 8
    assert row["infer_s_per_image"] > 0 and row["n_test"] == 14
    name = cell_name("F", "brick", 0, {**FAST, "steps": 4})
    rows = checkpoint_rows(tmp_path, "F", "brick", 0, **FAST, steps=4)
    assert [r["step"] for r in rows] == [2, 4]
    # the stage-1 VAE went to the shared cache, for the other variants of the same data
    assert len(list((tmp_path / "_vae_cache").glob("vae-brick-*.safetensors"))) == 1
    # a second call reads the cached row: change the file to prove nothing was recomputed
    path = tmp_path / name / "row.json"
    path.write_text(json.dumps({**row, "image_auroc": -1.0}))
    assert run_cell(minitex_root, "brick", "F", 0, tmp_path, steps=4, **FAST)["image_auroc"] == -1


def test_eval_settings_reuse_the_weights_and_reject_training_fields(minitex_root, tmp_path):
    base = run_cell(minitex_root, "brick", "C", 0, tmp_path, steps=2, **FAST)
    other = run_cell(
        minitex_root, "brick", "C", 0, tmp_path, steps=2, eval_settings={"t_start": 100}, **FAST
    )
    assert other["t_start"] == 100 and other["train_s"] == base["train_s"]  # no new training
    assert (
        other["image_auroc"] != base["image_auroc"] or other["pixel_auroc"] != base["pixel_auroc"]
    )
    with pytest.raises(ValueError, match="eval_settings"):
        run_cell(
            minitex_root, "brick", "C", 0, tmp_path, steps=2, eval_settings={"xi": 0.5}, **FAST
        )


def test_unknown_methods_are_named():
    with pytest.raises(ValueError, match="method must be one of"):
        run_cell("nowhere", "brick", "VAE", 0)


def _rows():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for category, base in (("a", 0.5), ("b", 0.7)):
            metrics = {k: base + shift for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")}
            times = {"train_s": 10.0, "fit_s": 12.0, "infer_s_per_image": 0.1}
            rows.append({"method": "F", "category": category, "seed": seed, **metrics, **times})
    return rows


def test_summaries_are_means_and_sample_spreads_over_seeds():
    per_category = {e["category"]: e for e in summarise(_rows())}
    assert per_category["a"]["image_auroc"] == pytest.approx(0.55)
    assert per_category["a"]["image_auroc_std"] == pytest.approx(statistics.stdev([0.5, 0.6]))
    assert per_category["b"]["n_seeds"] == 2
    (mean,) = category_means(_rows())
    assert mean["image_auroc"] == pytest.approx(0.65)  # seeds' means 0.6 and 0.7
    assert mean["image_auroc_std"] == pytest.approx(statistics.stdev([0.6, 0.7]))
    text = format_table([mean], ("method",))
    assert "0.650 +- 0.071" in text and text.splitlines()[0].startswith("| method")


def test_rows_carry_both_anomaly_maps_of_one_reconstruction(minitex_root, tmp_path):
    row = run_cell(minitex_root, "brick", "uncond", 0, tmp_path, steps=2, **FAST)
    assert row["score"] == "feature"
    for metric in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0 <= row[f"l1_{metric}"] <= 1
    assert row["pixel_auroc"] != row["l1_pixel_auroc"]  # two different maps


def test_a_unified_cell_trains_once_and_is_evaluated_per_category(minitex_root, tmp_path):
    joined = "brick+grass"
    kw = dict(steps=2, bank_mode="retrieved", **FAST)
    grass = run_cell(minitex_root, joined, "F", 0, tmp_path, test_category="grass", **kw)
    folder = tmp_path / cell_name("F", joined, 0, {**FAST, "bank_mode": "retrieved", "steps": 2})
    weights = (folder / "model.safetensors").stat().st_mtime_ns
    brick = run_cell(minitex_root, joined, "F", 0, tmp_path, test_category="brick", **kw)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights  # not retrained
    assert (grass["category"], brick["category"]) == ("grass", "brick")
    assert grass["trained_on"] == brick["trained_on"] == joined
    assert {p.name for p in folder.glob("row*.json")} == {
        "row_test=grass.json",
        "row_test=brick.json",
    }
    with pytest.raises(ValueError, match="fits one category"):
        run_cell(minitex_root, "brick", "patchcore", 0, tmp_path, test_category="brick")


def test_the_no_model_control_scores_the_mean_normal_image(minitex_root, tmp_path):
    row = run_cell(minitex_root, "brick", "mean-normal", 0, tmp_path, image_size=32)
    assert row["train_s"] == 0.0 and row["n_test"] == 14 and row["score"] == "feature"
    assert 0 <= row["image_auroc"] <= 1 and 0 <= row["l1_image_auroc"] <= 1
    assert row["pixel_auroc"] != row["l1_pixel_auroc"]  # two maps of the same "reconstruction"
