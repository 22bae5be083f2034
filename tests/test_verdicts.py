"""Chapter 8's rules, tables and claims on small result dicts with known answers.

ccad_tutorial.verdicts (as v), ccad_tutorial.tables and ccad_tutorial.claims; the panel
crops of a saved figure (ccad_tutorial.viz) are tested in test_viz.py.
"""

import numpy as np
import pytest

from ccad_tutorial import claims, tables
from ccad_tutorial import verdicts as v
from ccad_tutorial.metrics import image_auroc
from ccad_tutorial.page import markdown_table


# ----------------------------------------------------------------------------- the rules
def test_seed_spread_is_the_larger_std_with_a_floor():
    assert v.seed_spread(0.03, 0.02) == 0.03
    assert v.seed_spread(0.02, 0.05) == 0.05
    assert v.seed_spread(0.0, 0.0) == 0.01  # single seeds: the floor stands in
    assert v.seed_spread(0.0, 0.004) == 0.01
    assert v.seed_spread(0.0, 0.0, floor=0.02) == 0.02


def test_a_gain_counts_only_beyond_twice_the_spread():
    spread = v.seed_spread(0.02, 0.01)  # 0.02: the bar is 0.04
    assert not v.beyond_spread(0.039, spread)
    assert not v.beyond_spread(0.04, spread)  # equal is not beyond
    assert v.beyond_spread(0.041, spread)
    assert not v.beyond_spread(-0.1, spread)  # a loss is never a gain
    # a single-seed pair: the floor 0.01 makes the bar 0.02
    single = v.seed_spread(0.0, 0.0)
    assert not v.beyond_spread(0.019, single) and v.beyond_spread(0.021, single)
    assert v.beyond_spread(0.015, single, factor=1.0)


def test_plus_minus_prints_no_spread_for_a_single_run():
    one = {"image_auroc": 0.97234, "image_auroc_std": 0.0, "n_seeds": 1}
    two = {"image_auroc": 0.97234, "image_auroc_std": 0.01234, "n_seeds": 2}
    assert v.plus_minus(one, "image_auroc") == "0.972"
    assert v.plus_minus(two, "image_auroc") == "0.972 ± 0.012"


def test_seed_std_and_mean_over():
    assert v.seed_std([0.5]) == 0.0 and v.seed_std([]) == 0.0
    assert v.seed_std([0.6, 0.8]) == pytest.approx(np.sqrt(0.02))
    rows = [{"m": "a", "c": 1, "x": 1.0}, {"m": "a", "c": 2, "x": 3.0}, {"m": "b", "x": 9.0}]
    assert v.mean_over(rows, "x", m="a") == 2.0
    assert v.mean_over(rows, "x", m="a", c=2) == 3.0
    assert np.isnan(v.mean_over(rows, "x", m="z"))


# ----------------------------------------------------------------------------- pitfalls
def test_chance_auroc_std_matches_small_cases_and_simulation():
    # one image per class: the AUROC is 0 or 1 with equal probability, std 0.5
    assert v.chance_auroc_std(1, 1) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(30), np.ones(40)]
    aurocs = np.array([image_auroc(labels, rng.normal(size=70)) for _ in range(3000)])
    assert aurocs.std() == pytest.approx(v.chance_auroc_std(30, 40), rel=0.06)
    flipped = np.maximum(aurocs, 1 - aurocs).mean()
    assert flipped == pytest.approx(v.flipped_chance_auroc(30, 40), abs=0.004)
    # larger splits: closer to 0.5
    assert 0.5 < v.flipped_chance_auroc(500, 500) < v.flipped_chance_auroc(20, 20) < 0.6


def _row(variant, cat, step, auroc, seed=0):
    return {"variant": variant, "category": cat, "seed": seed, "step": step,
            "image_auroc": auroc}  # fmt: skip


def test_checkpoint_optimism_takes_the_last_step_as_the_fixed_budget():
    rows = [_row("F", "a", 200, 0.70), _row("F", "a", 100, 0.80), _row("F", "a", 400, 0.60),
            _row("F", "b", 100, 0.50), _row("F", "b", 200, 0.90),
            _row("U", "a", 100, 0.40), _row("U", "a", 200, 0.30)]  # fmt: skip
    out = v.checkpoint_optimism(rows)
    assert out["F"]["runs"] == 2 and out["U"]["runs"] == 1
    assert out["F"]["fixed"] == pytest.approx((0.60 + 0.90) / 2)  # unsorted input
    assert out["F"]["best"] == pytest.approx((0.80 + 0.90) / 2)
    assert out["F"]["optimism"] == pytest.approx(0.10)
    assert out["U"]["optimism"] == pytest.approx(0.10)


def test_checkpoint_optimism_is_zero_when_the_last_checkpoint_is_the_best():
    rows = [_row("F", "a", 300, 0.90), _row("F", "a", 100, 0.60), _row("F", "a", 200, 0.70)]
    assert v.checkpoint_optimism(rows)["F"] == {
        "fixed": pytest.approx(0.90), "best": pytest.approx(0.90), "optimism": 0.0, "runs": 1,
    }  # fmt: skip


def test_checkpoint_optimism_picks_the_best_step_of_each_seed_and_metric_separately():
    # seed 0 peaks in the middle (0.9 -> 0.7 at the end), seed 1 at the first step (0.8 -> 0.65)
    rows = [_row("F", "a", 100, 0.50), _row("F", "a", 200, 0.90), _row("F", "a", 300, 0.70),
            _row("F", "a", 100, 0.80, seed=1), _row("F", "a", 200, 0.60, seed=1),
            _row("F", "a", 300, 0.65, seed=1)]  # fmt: skip
    out = v.checkpoint_optimism(rows)["F"]
    assert out["runs"] == 2
    assert out["best"] == pytest.approx((0.90 + 0.80) / 2)
    assert out["fixed"] == pytest.approx((0.70 + 0.65) / 2)
    assert out["optimism"] == pytest.approx((0.20 + 0.15) / 2)
    # another metric: its own best step (the last one here), whatever the image AUROC did
    for row, pixel in zip(rows, (0.6, 0.7, 0.8, 0.5, 0.6, 0.9), strict=True):
        row["pixel_auroc"] = pixel
    by_pixel = v.checkpoint_optimism(rows, key="pixel_auroc")["F"]
    assert by_pixel["optimism"] == 0.0 and by_pixel["best"] == pytest.approx((0.8 + 0.9) / 2)


# ----------------------------------------------------------------------------- tables
def _xi_payload():
    def cell(factor, value, auroc, n=1):
        return {"factor": factor, "value": value, "bank_size": 12.0, "image_auroc": auroc,
                "image_auroc_std": 0.0, "pixel_auroc": 0.9, "pixel_auroc_std": 0.0,
                "aupro": 0.8, "aupro_std": 0.0, "n_seeds": n}  # fmt: skip

    return {
        "variant": "F", "categories": ["brick"], "seeds": [0],
        "defaults": {"xi": 0.1, "num_queries": 64, "pool": "image"},
        "table": [cell("xi", "0.5", 0.95), cell("xi", "0.02", 0.90), cell("pool", "patch", 0.93),
                  cell("xi", "0.1", 0.92), cell("pool", "image", 0.92)],
    }  # fmt: skip


def test_ablation_table_has_no_plus_minus_for_single_runs_and_marks_defaults():
    header, rows = tables.ablation_table(_xi_payload())
    text = markdown_table(header, rows)
    assert "±" not in text
    assert [r[1] for r in rows] == ["0.02", "0.1 (default)", "0.5", "image (default)", "patch"]
    table = {"per_category": [{"method": "F", "category": "brick", "image_auroc_std": 0.017}]}
    s = tables.ablation_summary(_xi_payload(), table, default_xi=0.1)
    assert s["max_change"] == pytest.approx(0.03)  # 0.95 against the default 0.92
    assert s["seed_std"] == 0.017 and s["small"] == 0.02 and s["category"] == "brick"


def test_coreset_comparison_quotes_the_faster_successful_default_row():
    runs = {
        "ours@50000": {"time_s": 6.0, "M": 5000, "D": 1536},
        "anomalib@50000": {"failed": "RuntimeError: can't allocate memory"},
        "anomalib_1thread@50000": {"time_s": 20.0},
        "ours-mmap@50000": {"time_s": 5.0, "M": 5000, "D": 1536},
        "anomalib-mmap@50000": {"time_s": 10.0},  # faster, but not the default allocator
        "ours@220000": {"time_s": 116.0, "M": 22000, "D": 1536},
        "anomalib@220000": {"failed": "RuntimeError"},
        "anomalib_1thread@220000": {"failed": "RuntimeError"},
        "ours-mmap64k@220000": {"time_s": 111.0, "M": 22000, "D": 1536},
        "anomalib-mmap64k@220000": {"time_s": 937.0},
    }
    c = claims.coreset_comparison(runs, 50_000)
    assert (c["ours"], c["theirs"], c["allocator"]) == ("ours@50000", "anomalib_1thread@50000", "")
    assert c["failed"] == ["anomalib@50000"]
    # no default row succeeded at 220k: the mmap rows, ours against theirs, same allocator
    c = claims.coreset_comparison(runs, 220_000)
    assert (c["ours"], c["theirs"]) == ("ours-mmap64k@220000", "anomalib-mmap64k@220000")
    assert claims.coreset_comparison(runs, 220_000, allocators=("",)) is None
    # both default rows succeed: the faster one
    runs["anomalib@50000"] = {"time_s": 15.0}
    assert claims.coreset_comparison(runs, 50_000)["theirs"] == "anomalib@50000"


# ----------------------------------------------------------------------------- verdicts
def _entry(model, w, auroc, std, n=2, pixel=0.7):
    return {"model": model, "w": w, "n_seeds": n, "image_auroc": auroc,
            "image_auroc_std": std, "pixel_auroc": pixel, "pixel_auroc_std": 0.0,
            "aupro": 0.5, "aupro_std": 0.0, "f1_max": 0.7, "f1_max_std": 0.0}  # fmt: skip


def _work(guided=0.715, twin=0.70, std=0.01, accuracy=(0.8, 0.6), control=0.65):
    """Two categories, two seeds; the chosen model unified-F-category at w = 2."""
    cats, seeds, m = ["a", "b"], [0, 1], "unified-F-category"
    table = [_entry("per-category-uncond", None, 0.78, 0.01),
             _entry("unified-uncond", None, 0.75, 0.01),
             _entry(m, 0.0, twin, std), _entry(m, 2.0, guided, std),
             _entry("mean-normal", None, control, 0.0)]  # fmt: skip
    # per-seed cutpaste AUROC (mean over categories): w=0 -> 0.60, 0.62; w=2 -> 0.70, 0.64
    cut = {(0.0, 0): 0.60, (0.0, 1): 0.62, (2.0, 0): 0.70, (2.0, 1): 0.64}
    rows = [{"model": m, "w": w, "seed": s, "category": c,
             "per_defect": {"cutpaste": {"image_auroc": cut[(w, s)]}}}
            for (w, s) in cut for c in cats]  # fmt: skip
    rows += [{"model": "unified-uncond", "w": None, "seed": s, "category": c,
              "pixel_auroc": {"a": 0.8, "b": 0.45}[c] + 0.01 * s}
             for s in seeds for c in cats]  # fmt: skip
    per_defect = [
        {
            "model": m,
            "w": w,
            "defect": "cutpaste",
            "image_auroc": np.mean([cut[(w, s)] for s in seeds]),
        }
        for w in (0.0, 2.0)
    ]
    generation = [{"model": m, "w": 2.0, "seed": s, "accuracy": a, "chance": 0.5}
                  for s, a in zip(seeds, accuracy, strict=True)]  # fmt: skip
    return {"categories": cats, "seeds": seeds, "w_sweep": [0.0, 1.0, 2.0],
            "choice": {"model": m, "guidance_scale": 2.0}, "table": table, "rows": rows,
            "per_defect": per_defect, "generation": generation,
            "models": {m: {"unified": True}, "unified-uncond": {"unified": True},
                       "per-category-uncond": {"unified": False}}}  # fmt: skip


def test_the_twin_counts_just_above_twice_the_spread_and_not_just_below():
    assert v.condition_at_work_verdict(_work(guided=0.7201))["twin_helps"]  # +0.0201 > 0.02
    assert not v.condition_at_work_verdict(_work(guided=0.7199))["twin_helps"]
    # a std of 0.03 raises the bar to 0.06
    out = v.condition_at_work_verdict(_work(guided=0.75, std=0.03))
    assert out["twin_spread"] == 0.03 and not out["twin_helps"]


def test_the_five_verdict_quantities_of_a_known_result():
    out = v.condition_at_work_verdict(_work())
    assert out["twin_gain"] == pytest.approx(0.015) and not out["twin_helps"]
    # cutpaste: gain mean(0.70, 0.64) - mean(0.60, 0.62) = 0.06; the larger seed std is that
    # of w = 2: std(0.70, 0.64) = 0.0424 -> twice it 0.0849 > 0.06
    assert out["cutpaste_gain"] == pytest.approx(0.06)
    assert out["cutpaste_spread"] == pytest.approx(np.std([0.70, 0.64], ddof=1))
    assert not out["cutpaste_helps"]
    assert out["unified_gap"] == pytest.approx(0.03) and out["unified_within"]
    assert out["below_control"] == []
    assert out["unified_pixel"] == pytest.approx({"a": 0.805, "b": 0.455})
    assert not out["pixel_above"] and out["worst_category"] == "b"
    # generation: mean 0.7, chance 0.5 -> the bar is 0.75: not well above chance
    assert out["generation_accuracy"] == pytest.approx(0.7)
    assert out["generation_bar"] == 0.75 and not out["generation_reads_bank"]
    text = v.verdict_markdown(out)
    assert "does not beat" in text and "not above 0.5 on every category: b" in text
    assert "not well above chance (the bar: 75%)" in text and "goal of 90% is not met" in text
    assert "the goal is met" in v.verdict_markdown(out, goal=0.7)


def test_unified_rows_below_the_control_are_named():
    out = v.condition_at_work_verdict(_work(control=0.71))
    assert out["below_control"] == ["unified-F-category at w = 0"]
    assert "1 unified model row is below" in v.verdict_markdown(out)
    out = v.condition_at_work_verdict(_work(control=0.76))
    assert len(out["below_control"]) == 3  # unified-uncond and both w rows


def test_paper_claims_need_the_twin_and_the_positive_control():
    table = {"mean": [
        {"method": "F", "image_auroc": 0.75, "image_auroc_std": 0.02, "pixel_auroc": 0.85},
        {"method": "uncond", "image_auroc": 0.74, "image_auroc_std": 0.01},
        {"method": "C", "image_auroc": 0.70, "image_auroc_std": 0.01},
        {"method": "patchcore", "image_auroc": 0.80, "image_auroc_std": 0.03,
         "pixel_auroc": 0.85}]}  # fmt: skip
    coreset = [{"n": 50_000, "allocator": "", "ours": "ours@50000", "ours_s": 6.0, "m": 5000,
                "theirs": "anomalib_1thread@50000", "theirs_s": 20.0, "d": 1536}]  # fmt: skip
    helps = v.condition_at_work_verdict(_work(guided=0.75, accuracy=(0.9, 0.9)))
    assert helps["twin_helps"] and helps["generation_reads_bank"]
    rows = claims.paper_claims(table, 0.6, helps, coreset)
    verdict = {r[0].split()[0]: r[2] for r in rows}
    assert verdict["Conditioning"] == "**supported**"
    assert verdict["The"] in ("**supported**", "not supported")
    assert [r[2] for r in rows][1:3] == ["**supported**", "**supported**"]  # 0.6; 0.05 > 0.02
    assert "anomalib_1thread@50000" in rows[-1][1] and rows[-1][2] == "**supported**"
    # the same gain without the positive control is not the condition's doing
    no_read = v.condition_at_work_verdict(_work(guided=0.75, accuracy=(0.5, 0.5)))
    assert claims.paper_claims(table, None, no_read, [None])[0][2] == "not supported"
    rows = claims.paper_claims(table, None, no_read, [None])
    assert rows[1][2] == "not supported" and rows[-1][2] == "not supported"


def test_generation_bar_is_half_or_a_quarter_above_chance():
    assert v.generation_bar(0.25) == 0.5  # four categories: more than half
    assert v.generation_bar(0.5) == 0.75  # two categories: a quarter above chance


def test_spread_verdict_names_the_side_and_the_bar():
    assert v.spread_verdict(0.03, 0.02) == ("above", "beyond the seed spread (0.020)")
    assert v.spread_verdict(0.02, 0.02) == ("within", "within the seed spread (0.020)")
    assert v.spread_verdict(-0.03, 0.02) == ("below", "a loss beyond the seed spread (0.020)")
    side, words = v.spread_verdict(0.03, 0.02, factor=2.0)
    assert (side, words) == ("within", "within twice the seed spread (0.040)")
    assert v.spread_verdict(0.1, 0.02, factor=3.0)[1] == "beyond 3 x the seed spread (0.060)"


def test_spread_verdict_applies_beyond_spread_both_ways():
    for gain in (-0.05, -0.0201, -0.02, 0.0, 0.02, 0.0201, 0.05):
        side, _ = v.spread_verdict(gain, 0.01, factor=2.0)
        assert (side == "above") == v.beyond_spread(gain, 0.01, factor=2.0)
        assert (side == "below") == v.beyond_spread(-gain, 0.01, factor=2.0)


def test_the_verdicts_print_the_words_of_spread_verdict():
    out = v.condition_at_work_verdict(_work())
    text = v.verdict_markdown(out)
    assert v.spread_verdict(out["twin_gain"], out["twin_spread"], 2.0)[1] in text
    assert v.spread_verdict(out["cutpaste_gain"], out["cutpaste_spread"], 2.0)[1] in text
    matters = {"gain": -0.05, "spread": 0.02, "helps": False, "uses_bank": False,
               "swap_drop": 0.001, "patchcore_minus_f": 0.1}  # fmt: skip
    assert "-0.050, a loss beyond the seed spread (0.020)." in v.condition_matters_text(matters)
