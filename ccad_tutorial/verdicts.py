"""Chapter 8's reading of the published benchmark results: the rules and the tables.

The chapter's verdicts rest on a few rules, written here once so that the book and its
tests apply the same ones:

* **The seed spread.** Two means are compared against the larger of their standard
  deviations over seeds (:func:`seed_spread`). With a single seed that deviation is
  unknown (stored as 0), so 0.01 image AUROC stands in as a floor.
* **A difference counts** only beyond a multiple of that spread (:func:`beyond_spread`):
  the condition-at-work verdict asks for twice the spread, the per-category comparison
  of the MiniTex-AD table for once. :func:`spread_verdict` says on which side a
  difference lies, in the words chapters 6 and 8 print.
* **A mean without a spread** is printed alone: ``0.972``, never ``0.972 ± 0.000`` for a
  single run (:func:`plus_minus`).

The functions take the payloads of ``ccad_tutorial.results.load_benchmark`` (plain dicts
and lists, as the benchmark scripts write them) and return numbers, dicts of numbers, or
``(header, rows)`` for ``ccad_tutorial.page.show_table``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "SPREAD_FLOOR",
    "seed_spread",
    "beyond_spread",
    "spread_verdict",
    "seed_std",
    "mean_over",
    "plus_minus",
    "chance_auroc_std",
    "flipped_chance_auroc",
    "checkpoint_optimism",
    "ablation_table",
    "ablation_summary",
    "inference_curves",
    "inference_summary",
    "scoring_table",
    "map_comparison_table",
    "condition_matters",
    "condition_matters_table",
    "condition_matters_text",
    "repair_tables",
    "repair_summary",
    "main_table",
    "control_summary",
    "choice_summary",
    "validation_table",
    "per_defect_table",
    "per_defect_text",
    "condition_at_work_verdict",
    "verdict_markdown",
    "coreset_comparison",
    "paper_claims",
    "panel_columns",
    "columns_png",
]

SPREAD_FLOOR = 0.01  # image AUROC: the spread assumed when the seeds cannot measure one
DASH = "–"  # a table cell with no value


# ---------------------------------------------------------------------- the rules
def seed_spread(*stds: float, floor: float = SPREAD_FLOOR) -> float:
    """The spread means are compared against: the largest of their
    standard deviations over seeds, at least ``floor`` (one seed: std 0)."""
    return float(max([floor, *(float(s) for s in stds)]))


def beyond_spread(difference: float, spread: float, factor=2.0) -> bool:
    """Whether ``difference`` (signed: a gain) exceeds factor x spread."""
    return bool(difference > factor * spread)


def spread_verdict(gain: float, spread: float, factor: float = 1.0) -> tuple[str, str]:
    """The rule and its words: ``gain`` (a - b, signed) against ``factor`` x ``spread``.

    Returns (side, words): side "above" (a gain beyond the bar), "below" (a loss
    beyond it) or "within"; words as a sentence puts them after the gain,
    e.g. "within twice the seed spread (0.040)".
    """
    names = {1.0: "the seed spread", 2.0: "twice the seed spread"}
    bar = names.get(factor, f"{factor:g} x the seed spread")
    bar += f" ({factor * spread:.3f})"
    if beyond_spread(gain, spread, factor):
        return "above", f"beyond {bar}"
    if beyond_spread(-gain, spread, factor):
        return "below", f"a loss beyond {bar}"
    return "within", f"within {bar}"


def generation_bar(chance: float) -> float:
    """The positive control's bar for "well above chance": more than half of the samples
    and more than 0.25 above chance."""
    return max(0.5, chance + 0.25)


def seed_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof = 1) of per-seed values; 0 for fewer than two."""
    values = [float(v) for v in values]
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def mean_over(rows: Iterable[dict], key: str, **match: Any) -> float:
    """Mean of ``row[key]`` over the rows whose fields equal ``match`` (nan if none)."""
    values = [r[key] for r in rows if all(r.get(k) == v for k, v in match.items())]
    return float(np.mean(values)) if values else float("nan")


def plus_minus(entry: dict, key: str, digits: int = 3) -> str:
    """``'mean ± std'`` of a table entry over its seeds; the mean alone for one seed."""
    if entry.get("n_seeds", 1) > 1:
        return f"{entry[key]:.{digits}f} ± {entry[key + '_std']:.{digits}f}"
    return f"{entry[key]:.{digits}f}"


def _w(w: float | None) -> str:
    return DASH if w is None else f"{w:g}"


# ---------------------------------------------------------------------- pitfalls
def chance_auroc_std(n_normal: int, n_defect: int) -> float:
    """Standard deviation of the AUROC of scores that are pure noise (the Mann-Whitney U
    statistic under the null hypothesis, divided by n0 n1):
    sqrt((n0 + n1 + 1) / (12 n0 n1))."""
    n0, n1 = n_normal, n_defect
    return math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))


def flipped_chance_auroc(n_normal: int, n_defect: int) -> float:
    """Expected ``max(AUROC, 1 - AUROC)`` of a random detector, with the AUROC taken as
    normal around 0.5: 0.5 + sqrt(2 / pi) * std (the mean of a half-normal)."""
    return 0.5 + math.sqrt(2 / math.pi) * chance_auroc_std(n_normal, n_defect)


def checkpoint_optimism(rows: Iterable[dict], key: str = "image_auroc") -> dict:
    """Per variant of the convergence benchmark: the mean ``key`` at the fixed budget
    (the last checkpoint of each run), the mean of each run's best checkpoint, and the
    mean optimism ``best - fixed``. A run is one (variant, category, seed)."""
    runs: dict[tuple, list[dict]] = {}
    for row in rows:
        runs.setdefault((row["variant"], row["category"], row["seed"]), []).append(row)
    pairs: dict[str, list[tuple[float, float]]] = {}
    for (variant, _, _), run in sorted(runs.items()):
        run = sorted(run, key=lambda r: r["step"])
        pairs.setdefault(variant, []).append((max(r[key] for r in run), run[-1][key]))
    out = {}
    for variant, values in pairs.items():
        best, fixed = np.array(values).T
        out[variant] = {
            "fixed": float(fixed.mean()),
            "best": float(best.mean()),
            "optimism": float((best - fixed).mean()),
            "runs": len(values),
        }
    return out


# ---------------------------------------------------------------------- ablations
def ablation_table(xi: dict) -> tuple[list[str], list[list]]:
    """The bank ablation (xi, K, pooling) as a table, grouped by factor, the preset's
    default value of each factor marked; ± only where a cell has several seeds."""
    defaults = {k: str(v) for k, v in xi.get("defaults", {}).items()}
    header = ["factor", "value", "bank tokens", "image AUROC", "pixel AUROC", "AUPRO"]
    order = list(dict.fromkeys(e["factor"] for e in xi["table"]))
    rows = []
    for factor in order:
        entries = [e for e in xi["table"] if e["factor"] == factor]
        entries.sort(key=lambda e: _sort_key(e["value"]))
        for e in entries:
            default = defaults.get(factor) == e["value"]
            value = e["value"] + (" (default)" if default else "")
            rows.append([factor, value, f"{e['bank_size']:.0f}",
                         plus_minus(e, "image_auroc"), plus_minus(e, "pixel_auroc"),
                         plus_minus(e, "aupro")])  # fmt: skip
    return header, rows


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def ablation_summary(xi: dict, table: dict, default_xi: float) -> dict:
    """What the bank ablation's caption quotes: its category, the largest change of
    image AUROC from the default cell, the seed std of the same variant and category in
    the MiniTex-AD table ``table`` (the ablation itself has one seed), and the smallest
    xi with its bank size."""
    category = xi["categories"][0]
    key = (xi["variant"], category)
    same = next(e for e in table["per_category"] if (e["method"], e["category"]) == key)
    by_xi = sorted((e for e in xi["table"] if e["factor"] == "xi"),
                   key=lambda e: float(e["value"]))  # fmt: skip
    default = next(e for e in by_xi if float(e["value"]) == default_xi)
    base = default["image_auroc"]
    return {
        "category": category,
        "max_change": max(abs(e["image_auroc"] - base) for e in xi["table"]),
        "seed_std": same["image_auroc_std"],
        "small": float(by_xi[0]["value"]),
        "small_tokens": int(by_xi[0]["bank_size"]),
    }


def inference_curves(inference: dict) -> tuple[list[dict], list[dict]]:
    """The inference ablation's two one-factor sweeps: over ``t_start`` at the default
    number of DDIM steps, and over DDIM steps at the default ``t_start``, each
    sorted."""
    d = inference["defaults"]
    by_t = [e for e in inference["table"] if e["ddim_steps"] == d["ddim_steps"]]
    by_n = [e for e in inference["table"] if e["t_start"] == d["t_start"]]
    return (sorted(by_t, key=lambda e: e["t_start"]),
            sorted(by_n, key=lambda e: e["ddim_steps"]))  # fmt: skip


def inference_summary(inference: dict) -> dict:
    """What the inference ablation's caption quotes: the defaults, the best and worst
    ``t_start`` by image AUROC, and the time per image at the fewest and most steps."""
    by_t, by_n = inference_curves(inference)
    best = max(by_t, key=lambda e: e["image_auroc"])
    worst = min(by_t, key=lambda e: e["image_auroc"])
    d, fewest, most = inference["defaults"], by_n[0], by_n[-1]
    return {
        "t_default": d["t_start"], "steps_default": d["ddim_steps"],
        "t_best": best["t_start"], "t_best_auroc": best["image_auroc"],
        "t_worst": worst["t_start"], "t_worst_auroc": worst["image_auroc"],
        "n_fewest": fewest["ddim_steps"],
        "ms_fewest": 1000 * fewest["infer_s_per_image"],
        "n_most": most["ddim_steps"], "ms_most": 1000 * most["infer_s_per_image"],
    }  # fmt: skip


def scoring_table(inference: dict) -> tuple[list[str], list[list]]:
    """The inference ablation's scorers (pixel L1, each feature layer, layers
    summed)."""
    header = ["scorer", "image AUROC", "pixel AUROC", "AUPRO"]
    rows = [[e["scorer"], plus_minus(e, "image_auroc"), plus_minus(e, "pixel_auroc"),
             plus_minus(e, "aupro")] for e in inference["scoring"]]  # fmt: skip
    return header, rows


def map_comparison_table(
    table: dict,
    methods: Sequence[str] = ("V", "C", "F", "uncond"),
):
    """MiniTex-AD table: the feature map against the pixel-L1 map on the same
    reconstructions, per method (mean over categories and seeds). Returns
    ``(header, rows, better)`` with ``better`` the categories where CCAD(F)'s feature
    map gives the higher image AUROC."""
    feat = {e["method"]: e for e in table["mean"]}
    pix = {e["method"]: e for e in table["mean_l1"]}
    maps = ("feature map", "pixel-L1 map")
    header = ["method", *(f"{m}: image / pixel AUROC" for m in maps)]
    rows = [[m, f"{feat[m]['image_auroc']:.3f} / {feat[m]['pixel_auroc']:.3f}",
             f"{pix[m]['image_auroc']:.3f} / {pix[m]['pixel_auroc']:.3f}"]
            for m in methods if m in pix and m in feat]  # fmt: skip
    by_cat = {(e["method"], e["category"]): e for e in table["per_category"]}
    by_cat_l1 = {(e["method"], e["category"]): e for e in table["per_category_l1"]}
    feature_f = {c: by_cat[("F", c)]["image_auroc"] for c in table["categories"]}
    better = [c for c, x in feature_f.items() if x > by_cat_l1[("F", c)]["image_auroc"]]
    return header, rows, better


# ---------------------------------------------------------------------- per category
def condition_matters(table: dict, swap: dict) -> dict:
    """The per-category answer (MiniTex-AD table and condition swap): CCAD(F) against
    the unconditioned control, the largest mean AUROC change the swap causes,
    PatchCore's gap. A gain or a swap change counts beyond ONE seed spread here."""
    mean = {e["method"]: e for e in table["mean"]}
    f, u, p = mean["F"], mean["uncond"], mean["patchcore"]
    gain = f["image_auroc"] - u["image_auroc"]
    spread = seed_spread(f["image_auroc_std"], u["image_auroc_std"])
    drop = max(swap[f"{k}_abs_drop"] for k in ("other", "zeros", "shuffled"))
    return {
        "f_image_auroc": f["image_auroc"],
        "uncond_image_auroc": u["image_auroc"],
        "patchcore_image_auroc": p["image_auroc"],
        "gain": gain,
        "spread": spread,
        "helps": beyond_spread(gain, spread, factor=1.0),
        "swap_drop": drop,
        "uses_bank": beyond_spread(drop, spread, factor=1.0),
        "patchcore_minus_f": p["image_auroc"] - f["image_auroc"],
    }


def condition_matters_table(table: dict, swap: dict) -> tuple[list[str], list[list]]:
    """The measurements behind :func:`condition_matters`, one per row."""
    mean = {e["method"]: e for e in table["mean"]}
    v = condition_matters(table, swap)
    rows = [
        ["CCAD(F) mean image AUROC", plus_minus(mean["F"], "image_auroc")],
        ["uncond mean image AUROC", plus_minus(mean["uncond"], "image_auroc")],
        ["gain F - uncond", f"{v['gain']:+.3f} (seed spread {v['spread']:.3f})"],
        ["swap: real bank -> other category, mean abs. AUROC change",
         f"{swap['other_abs_drop']:.3f}"],
        ["swap: real bank -> zeros, mean abs. AUROC change",
         f"{swap['zeros_abs_drop']:.3f}"],
        ["swap: real bank -> shuffled, mean abs. AUROC change",
         f"{swap['shuffled_abs_drop']:.3f}"],
        ["swap: reconstruction change with another category's bank",
         f"{swap['other_recon_change']:.4f}"],
        ["PatchCore mean image AUROC", plus_minus(mean["patchcore"], "image_auroc")],
    ]  # fmt: skip
    return ["measurement", "value"], rows


def condition_matters_text(v: dict) -> str:
    """The verdict paragraph of :func:`condition_matters`."""
    helps, uses, ahead = v["helps"], v["uses_bank"], v["patchcore_minus_f"] > 0
    _, words = spread_verdict(v["gain"], v["spread"], factor=1.0)
    return (
        "**Verdict at CPU scale.** The condition "
        f"{'helps' if helps else 'does not help'}: the gain of CCAD(F) over the "
        f"unconditioned control is {v['gain']:+.3f}, {words}. The condition swap moves "
        f"the image AUROC by at most {v['swap_drop']:.3f} on average, "
        f"{'more' if uses else 'less'} than the seed spread: the trained model "
        f"{'uses' if uses else 'largely ignores'} its bank. PatchCore with the same "
        f"random-init backbone is {abs(v['patchcore_minus_f']):.3f} "
        f"{'ahead' if ahead else 'behind'}."
    )


# ---------------------------------------------------------------------- repair
STAGE_NAMES = {
    "vae": "VAE encode + decode (whole image)",
    "vae_tiled": "VAE encode + decode, crop-sized tiles",
    "ddim": "DDIM reconstruction (current sampler)",
    "ddim_clip": "DDIM, x0 clipped to [-1, 1]",
    "ddim_noclip": "DDIM, x0 not clipped",
}
UNCOND = ("unified-uncond", "per-category-uncond")


def stage_name(stage: str) -> str:
    """A reader's name for a stage of ``diagnostics.colour_trace``."""
    if stage.startswith("x0@"):
        return f"one-step x0 estimate from t = {stage[3:]}"
    return STAGE_NAMES.get(stage, stage)


def _repair_mean(
    repair: list[dict],
    model: str,
    keys: Sequence[str],
    category=None,
) -> float:
    values = []
    for r in repair:
        if r["model"] == model and category in (None, r["category"]):
            value = r
            for key in keys:
                value = value[key]
            values.append(value)
    return float(np.mean(values)) if values else float("nan")


def repair_tables(work: dict) -> list[tuple[list[str], list[list]]]:
    """The three tables of the sampler repair: latent values outside [-1, 1] per
    category, the colour error per stage, and the AUROCs of the same weights through
    each path."""
    repair, categories = work["repair"], work["categories"]
    outside = ["latent values outside [-1, 1] (unified-uncond)"] + [
        f"{_repair_mean(repair, 'unified-uncond', ('latents', 'outside_unit'), c):.1%}"
        for c in categories
    ]
    tables = [(["", *categories], [outside])]
    stages = list(repair[0]["colour"])
    rows = [[stage_name(s)] + [_repair_mean(repair, m, ("colour", s)) for m in UNCOND]
            for s in stages]  # fmt: skip
    tables.append((["stage", *(f"colour error, {m}" for m in UNCOND)], rows))
    paths = list(work["before_after"]["pipelines"])
    by_path = {(e["model"], e["pipeline"]): e for e in work["before_after"]["table"]}
    rows = [[f"{m}: {k.replace('_auroc', ' AUROC')}"]
            + [plus_minus(by_path[(m, p)], k) for p in paths]
            for k in ("image_auroc", "pixel_auroc") for m in UNCOND]  # fmt: skip
    tables.append((["model (same weights)", *paths], rows))
    return tables


def repair_summary(work: dict) -> dict:
    """The numbers the repair's paragraph quotes: share of latent values outside
    [-1, 1] (lowest, highest category), colour errors clipped / not clipped, the AUROC
    changes of the repair and of the tiled VAE (same weights). Keys ``uni_*``:
    unified-uncond, ``pc_*``: per-category-uncond."""
    repair, categories = work["repair"], work["categories"]
    outside = [_repair_mean(repair, "unified-uncond", ("latents", "outside_unit"), c)
               for c in categories]  # fmt: skip
    paths = list(work["before_after"]["pipelines"])  # earlier, current, tiled VAE
    current = work["before_after"]["current"]
    by_path = {(e["model"], e["pipeline"]): e for e in work["before_after"]["table"]}
    rows = work["before_after"]["rows"]
    hexnut = "hexnut" if "hexnut" in categories else categories[-1]
    out: dict[str, Any] = {"outside_min": min(outside), "outside_max": max(outside),
                           "object_category": hexnut}  # fmt: skip
    for short, m in (("uni", "unified-uncond"), ("pc", "per-category-uncond")):
        clip = _repair_mean(repair, m, ("colour", "ddim_clip"))
        noclip = _repair_mean(repair, m, ("colour", "ddim_noclip"))
        out[f"{short}_colour_clip"], out[f"{short}_colour_noclip"] = clip, noclip
        out[f"{short}_clip_raises"] = "raises" if clip > noclip else "does not raise"
        for k in ("image_auroc", "pixel_auroc"):
            change = by_path[(m, current)][k] - by_path[(m, paths[0])][k]
            out[f"{short}_repair_{k}"] = change
        for label, match in (("", {}), ("_object", {"category": hexnut})):
            tiled = mean_over(rows, "image_auroc", model=m, pipeline=paths[-1], **match)
            now = mean_over(rows, "image_auroc", model=m, pipeline=current, **match)
            out[f"{short}_tiled{label}"] = tiled - now
    return out


# ---------------------------------------------------------------------- main table
def main_table(work: dict) -> tuple[list[str], list[list]]:
    """Every model of the condition-at-work benchmark on the test split (mean over
    categories, ± over seeds where there are several); the chosen model in bold."""
    chosen = work["choice"]["model"]
    header = ["model", "w", "image AUROC", "pixel AUROC", "AUPRO", "F1-max", "seeds"]
    rows = []
    for e in work["table"]:
        name = f"**{e['model']}**" if e["model"] == chosen else e["model"]
        name += " (no model)" if e["model"] == "mean-normal" else ""
        rows.append([name, _w(e["w"])]
                    + [plus_minus(e, k) for k in ("image_auroc", "pixel_auroc", "aupro",
                                                  "f1_max")]
                    + [e["n_seeds"]])  # fmt: skip
    return header, rows


def control_summary(work: dict) -> dict:
    """The no-model control (mean-normal) and how many model rows beat it."""
    by_model = {(e["model"], e["w"]): e for e in work["table"]}
    control = by_model[("mean-normal", None)]
    rows = [e for k, e in by_model.items() if k[0] != "mean-normal"]
    above = [e for e in rows if e["image_auroc"] > control["image_auroc"]]
    return {"image_auroc": control["image_auroc"],
            "pixel_auroc": control["pixel_auroc"],
            "n_above": len(above), "n_rows": len(rows)}  # fmt: skip


def choice_summary(work: dict) -> dict:
    """What the validation choice's paragraphs quote: the chosen candidate's validation
    image AUROC, its w = 0 twin's, their difference, the range over all candidates; on
    the test split, the chosen model's lowest and highest image AUROC over w, and the
    references (unified-uncond, per-category-uncond, mean-normal)."""
    choice = work["choice"]
    chosen, w = choice["model"], choice["guidance_scale"]
    val = {(e["model"], e["w"]): e["image_auroc"] for e in choice["table"]}
    table = {(e["model"], e["w"]): e for e in work["table"]}
    test = [e["image_auroc"] for (m, _), e in table.items() if m == chosen]
    return {
        "chosen_model": chosen, "chosen_w": w,
        "val_chosen": choice["validation_image_auroc"], "val_twin": val[(chosen, 0.0)],
        "val_diff": choice["validation_image_auroc"] - val[(chosen, 0.0)],
        "val_range": max(val.values()) - min(val.values()),
        "test_min": min(test), "test_max": max(test),
        "unified_uncond": table[("unified-uncond", None)]["image_auroc"],
        "per_category_uncond": table[("per-category-uncond", None)]["image_auroc"],
        "control": table[("mean-normal", None)]["image_auroc"],
    }  # fmt: skip


def validation_table(work: dict) -> tuple[list[str], list[list]]:
    """Validation image AUROC of each candidate (bank mode x w), the chosen one in
    bold."""
    choice, sweep = work["choice"], work["w_sweep"]
    chosen = (choice["model"], choice["guidance_scale"])
    val = {(e["model"], e["w"]): e["image_auroc"] for e in choice["table"]}
    rows = []
    for m in dict.fromkeys(e["model"] for e in choice["table"]):
        cells = [f"{val[(m, w)]:.3f}" if (m, w) in val else DASH for w in sweep]
        pairs = zip(cells, sweep, strict=True)
        cells = [f"**{x}**" if (m, w) == chosen else x for x, w in pairs]
        rows.append([m, *cells])
    return ["validation image AUROC", *(f"w = {w:g}" for w in sweep)], rows


def _defect_auroc(per_defect: dict, model: str, w, kinds: Sequence[str]) -> float:
    return float(np.mean([per_defect[(model, w, k)]["image_auroc"] for k in kinds]))


def per_defect_table(work: dict) -> tuple[list[str], list[list]]:
    """Image AUROC per defect type: the two unconditioned models, the chosen model at
    w = 0 and (if it differs) at the chosen w."""
    chosen, w = work["choice"]["model"], work["choice"]["guidance_scale"]
    per_defect = {(e["model"], e["w"], e["defect"]): e for e in work["per_defect"]}
    columns = [("unified-uncond", None), ("per-category-uncond", None), (chosen, 0.0)]
    columns += [(chosen, w)] if w != 0.0 else []
    names = [m if v is None else f"{m}, w = {v:g}" for m, v in columns]
    header = ["defect type", *names]
    rows = []
    for kind in sorted({e["defect"] for e in work["per_defect"]}):
        cells = [per_defect.get((m, v, kind)) for m, v in columns]
        rows.append([kind] + [DASH if e is None else e["image_auroc"] for e in cells])
    return header, rows


def per_defect_text(work: dict) -> str:
    """The paragraph under the per-defect table (cutpaste against the other defects)."""
    chosen, w = work["choice"]["model"], work["choice"]["guidance_scale"]
    pd = {(e["model"], e["w"], e["defect"]): e for e in work["per_defect"]}
    others = sorted({e["defect"] for e in work["per_defect"]} - {"cutpaste"})

    def gap(a, b, kinds):
        return _defect_auroc(pd, *a, kinds) - _defect_auroc(pd, *b, kinds)

    pc, uni = ("per-category-uncond", None), ("unified-uncond", None)
    # fmt: off
    text = (f"Per-category minus unified unconditioned image AUROC: "
            f"{gap(pc, uni, ['cutpaste']):+.3f} on cutpaste, "
            f"{gap(pc, uni, others):+.3f} on the other defect types (mean).")
    if w == 0.0:
        return text + (" The validation split chose w = 0: the chosen model runs "
                       "without its condition, so guidance changes nothing here.")
    on, off = (chosen, w), (chosen, 0.0)
    return text + (f" Switching the condition on (w = {w:g} against w = 0, same "
                   "weights) changes the cutpaste image AUROC by "
                   f"{gap(on, off, ['cutpaste']):+.3f}, and that of the other defect "
                   f"types by {gap(on, off, others):+.3f} on average.")
    # fmt: on


# ---------------------------------------------------------------------- the verdict
def condition_at_work_verdict(work: dict, within: float = 0.05) -> dict:
    """The five verdict quantities of the condition-at-work benchmark.

    1. the twin: the chosen model at its w against w = 0 (same weights), overall and on
       cutpaste, each beyond twice its seed spread or not;
    2. one model for all: per-category minus unified unconditioned image AUROC, within
       ``within`` or not;
    3. the unified model rows below the mean-normal (no-model) control;
    4. unified-uncond's pixel AUROC per category, all above 0.5 or not;
    5. the positive control: generation accuracy of the chosen model at its w (mean over
       seeds) against the bar max(0.5, chance + 0.25).
    """
    chosen, w = work["choice"]["model"], work["choice"]["guidance_scale"]
    table = {(e["model"], e["w"]): e for e in work["table"]}
    twin, guided = table[(chosen, 0.0)], table[(chosen, w)]
    v: dict[str, Any] = {"chosen_model": chosen, "chosen_w": w,
                         "n_categories": len(work["categories"]),
                         "n_seeds": len(work["seeds"]),
                         "guided_image_auroc": guided["image_auroc"],
                         "twin_image_auroc": twin["image_auroc"]}  # fmt: skip
    v["twin_gain"] = guided["image_auroc"] - twin["image_auroc"]
    v["twin_spread"] = seed_spread(twin["image_auroc_std"], guided["image_auroc_std"])
    v["twin_helps"] = beyond_spread(v["twin_gain"], v["twin_spread"])
    pd = {(e["model"], e["w"], e["defect"]): e for e in work["per_defect"]}
    v["cutpaste_gain"] = (_defect_auroc(pd, chosen, w, ["cutpaste"])
                          - _defect_auroc(pd, chosen, 0.0, ["cutpaste"]))  # fmt: skip

    def cutpaste_by_seed(at):
        per_seed = [[r["per_defect"]["cutpaste"]["image_auroc"] for r in work["rows"]
                     if (r["model"], r["w"], r["seed"]) == (chosen, at, s)]
                    for s in work["seeds"]]  # fmt: skip
        return [float(np.mean(x)) for x in per_seed if x]

    v["cutpaste_spread"] = seed_spread(seed_std(cutpaste_by_seed(0.0)),
                                       seed_std(cutpaste_by_seed(w)))  # fmt: skip
    v["cutpaste_helps"] = beyond_spread(v["cutpaste_gain"], v["cutpaste_spread"])
    per_cat = table[("per-category-uncond", None)]
    unified = table[("unified-uncond", None)]
    v["per_category_image_auroc"] = per_cat["image_auroc"]
    v["unified_image_auroc"] = unified["image_auroc"]
    v["unified_gap"] = per_cat["image_auroc"] - unified["image_auroc"]
    v["within"] = within
    v["unified_within"] = bool(abs(v["unified_gap"]) <= within)
    control = table[("mean-normal", None)]["image_auroc"]
    v["control_image_auroc"] = control
    v["below_control"] = [m if at is None else f"{m} at w = {at:g}"
                          for (m, at), e in table.items()
                          if work["models"].get(m, {}).get("unified")
                          and e["image_auroc"] < control]  # fmt: skip
    rows = work["rows"]
    pixel = {c: mean_over(rows, "pixel_auroc", model="unified-uncond", category=c)
             for c in work["categories"]}  # fmt: skip
    v["unified_pixel"] = pixel
    v["pixel_above"] = bool(all(x > 0.5 for x in pixel.values()))
    v["worst_category"] = min(pixel, key=pixel.get)
    generated = [g for g in work["generation"] if (g["model"], g["w"]) == (chosen, w)]
    v["generation_accuracy"] = float(np.mean([g["accuracy"] for g in generated]))
    v["generation_chance"] = float(generated[0]["chance"])
    v["generation_bar"] = generation_bar(v["generation_chance"])
    v["generation_reads_bank"] = bool(v["generation_accuracy"] > v["generation_bar"])
    return v


def verdict_markdown(v: dict, goal: float = 0.9) -> str:
    """The five-point verdict of :func:`condition_at_work_verdict` as a Markdown
    list."""

    def against(gain, spread):
        return spread_verdict(gain, spread, factor=2.0)[1]

    chosen, w = v["chosen_model"], v["chosen_w"]
    below, pixel, worst = v["below_control"], v["unified_pixel"], v["worst_category"]
    seeds = f"{v['n_seeds']} seed{'s' if v['n_seeds'] > 1 else ''}"
    no_guidance = ("(the validation split chose no guidance: the model runs without "
                   "its condition) ") if w == 0.0 else ""  # fmt: skip
    gap = v["unified_gap"]
    lines = [
        "**Verdict on the condition at work** "
        f"({v['n_categories']} categories, {seeds}):",
        "",
        f"1. **The twin.** {chosen} at w = {w:g} {no_guidance}"
        f"{'beats' if v['twin_helps'] else 'does not beat'} its own w = 0 twin: "
        f"{v['twin_gain']:+.3f} mean image AUROC ({v['guided_image_auroc']:.3f} "
        f"against {v['twin_image_auroc']:.3f}), "
        f"{against(v['twin_gain'], v['twin_spread'])}. "
        f"On cutpaste alone: {v['cutpaste_gain']:+.3f}, "
        f"{against(v['cutpaste_gain'], v['cutpaste_spread'])}.",
        f"2. **One model for all.** The unified unconditioned model is {abs(gap):.3f} "
        f"{'behind' if gap > 0 else 'ahead of'} the per-category ones "
        f"({v['unified_image_auroc']:.3f} against "
        f"{v['per_category_image_auroc']:.3f}), "
        f"{'within' if v['unified_within'] else 'more than'} {v['within']:g}.",
        "3. **Against no model.** "
        + (f"{len(below)} unified model row{'s are' if len(below) > 1 else ' is'} "
           f"below the mean-normal control ({v['control_image_auroc']:.3f}): "
           f"{', '.join(below)}."
           if below else "No unified model is below the mean-normal control "
           f"({v['control_image_auroc']:.3f})."),
        "4. **The map.** unified-uncond's pixel AUROC is "
        + ("above 0.5 on every category" if v["pixel_above"] else
           "not above 0.5 on every category: "
           f"{', '.join(c for c, x in pixel.items() if x <= 0.5)}")
        + f" (lowest: {worst}, {pixel[worst]:.3f}).",
        "5. **The positive control.** From pure noise with one category's bank, the "
        f"chosen model draws that category in {v['generation_accuracy']:.0%} of the "
        f"samples (mean over seeds; chance {v['generation_chance']:.0%}, "
        f"goal {goal:.0%}): "
        + (f"it reads its bank, well above chance (the bar: {v['generation_bar']:.0%})"
           if v["generation_reads_bank"] else
           f"not well above chance (the bar: {v['generation_bar']:.0%}), so it cannot "
           "be shown to read its bank")
        + ("; the goal is met." if v["generation_accuracy"] >= goal else
           f"; the goal of {goal:.0%} is not met."),
    ]  # fmt: skip
    return "\n".join(lines)


# ---------------------------------------------------------------------- claims
# glibc's default allocator, then mmap thresholds of 1 MB and 64 kB
ALLOCATORS = ("", "-mmap", "-mmap64k")


def coreset_comparison(runs: dict, n: int, allocators: Sequence[str] = ALLOCATORS):
    """Our greedy coreset against the FASTER successful anomalib row at ``n`` features.

    ``runs`` is ``coreset_speed["runs"]``, keyed ``"<method><allocator>@<N>"``. The
    first allocator of ``allocators`` with a successful ``ours`` row and at least one
    successful anomalib row (2 threads or 1) is used; None if there is none. Returns the
    row keys, their times, and the anomalib rows at ``n`` that failed."""

    def ok(key):
        return key in runs and "failed" not in runs[key] and "time_s" in runs[key]

    failed = sorted(k for k, r in runs.items()
                    if k.endswith(f"@{n}") and k.startswith("anomalib")
                    and "failed" in r)  # fmt: skip
    for alloc in allocators:
        ours = f"ours{alloc}@{n}"
        rows = (f"anomalib{alloc}@{n}", f"anomalib_1thread{alloc}@{n}")
        theirs = [k for k in rows if ok(k)]
        if ok(ours) and theirs:
            best = min(theirs, key=lambda k: runs[k]["time_s"])
            return {"n": n, "allocator": alloc, "ours": ours, "theirs": best,
                    "ours_s": float(runs[ours]["time_s"]),
                    "theirs_s": float(runs[best]["time_s"]),
                    "m": runs[ours].get("M"), "d": runs[ours].get("D"),
                    "failed": failed}  # fmt: skip
    return None


def _coreset_cell(c: dict) -> str:
    alloc = "glibc's default allocator"
    alloc = f"row suffix {c['allocator']}" if c["allocator"] else alloc
    return (f"{c['n'] // 1000}k x {c['d']} features to {c['m']}: ours "
            f"{c['ours_s']:.0f} s (`{c['ours']}`), anomalib's KCenterGreedy "
            f"{c['theirs_s']:.0f} s (`{c['theirs']}`, the faster successful anomalib "
            f"row; {alloc})")  # fmt: skip


def paper_claims(
    table: dict,
    steps_ratio: float | None,
    verdict: dict,
    coreset: Sequence[dict],
    cheap_s: float = 60.0,
) -> list[list[str]]:
    """Rows (claim, measured here, verdict at CPU scale) of the paper-claims table.

    ``table``: the MiniTex-AD table; ``steps_ratio``: the convergence benchmark's steps
    ratio F / uncond (None: never reached); ``verdict``:
    :func:`condition_at_work_verdict`; ``coreset``: :func:`coreset_comparison` results,
    the first one at 50k features."""
    mean = {e["method"]: e for e in table["mean"]}
    f, u, c, p = mean["F"], mean["uncond"], mean.get("C"), mean["patchcore"]
    gain, spread = (
        f["image_auroc"] - u["image_auroc"],
        seed_spread(f["image_auroc_std"], u["image_auroc_std"]),
    )

    def yes_no(ok):
        return "**supported**" if ok else "not supported"

    v = verdict
    rows = [[
        "Conditioning a diffusion reconstruction on compressed normal features "
        "improves detection",
        f"per category: F - uncond {gain:+.3f} (spread {spread:.3f}); all categories: "
        f"{v['chosen_model']} at w = {v['chosen_w']:g} - its w = 0 twin "
        f"{v['twin_gain']:+.3f} (twice the spread {2 * v['twin_spread']:.3f}); "
        f"positive control: generation accuracy {v['generation_accuracy']:.2f} (chance "
        f"{v['generation_chance']:.2f})",
        yes_no(v["twin_helps"] and v["generation_reads_bank"]),
    ], [
        "The conditioned model converges faster (at least 30 % fewer steps)",
        f"steps ratio F / uncond = {steps_ratio:.2f}" if steps_ratio is not None
        else "F never reached uncond's final AUROC",
        yes_no(steps_ratio is not None and steps_ratio <= 0.7),
    ]]  # fmt: skip
    if c is not None:
        fc_gain = f["image_auroc"] - c["image_auroc"]
        fc_spread = seed_spread(f["image_auroc_std"], c["image_auroc_std"])
        measured = f"F - C {fc_gain:+.3f} (spread {fc_spread:.3f})"
        ok = beyond_spread(fc_gain, fc_spread, factor=1.0)
    else:
        measured, ok = "C not in the table", False
    fcm = "The learned Fine Compression Module improves on the coarse bank (F over C)"
    rows.append([fcm, measured, yes_no(ok)])
    ahead = beyond_spread(f["image_auroc"] - p["image_auroc"], spread, factor=1.0)
    rows.append([
        "State-of-the-art AUROC (0.962 image / 0.966 pixel on MVTec-AD)",
        f"MiniTex-AD: F {f['image_auroc']:.3f} / {f['pixel_auroc']:.3f}, PatchCore "
        f"{p['image_auroc']:.3f} / {p['pixel_auroc']:.3f} (same random backbone)",
        f"not testable on CPU (chapter 7); CCAD(F) {'' if ahead else 'not '}ahead of "
        "PatchCore here",
    ])  # fmt: skip
    coreset = [x for x in coreset if x]
    rows.append(
        [
            "A greedy coreset compresses the normal features into a small bank cheaply",
            "; ".join(_coreset_cell(x) for x in coreset) or "no successful comparison",
            yes_no(bool(coreset) and coreset[0]["ours_s"] < cheap_s),
        ]
    )
    return rows


# ---------------------------------------------------------------------- the slider
def panel_columns(image: np.ndarray, n: int, white: int = 245) -> list[tuple[int, int]]:
    """x ranges ``(start, end)`` of a figure's ``n`` panel columns: its ``n`` widest
    runs of pixel columns holding ink (any value below ``white``), left to right; equal
    slices of the width if there are fewer runs."""
    ink = np.r_[0, (image < white).any(axis=(0, 2)).astype(int), 0]
    edges = np.flatnonzero(np.diff(ink))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    if len(runs) < n:
        step = image.shape[1] / n
        return [(round(i * step), round((i + 1) * step)) for i in range(n)]
    return sorted(sorted(runs, key=lambda r: r[1] - r[0])[-n:])


def columns_png(
    image: np.ndarray,
    panels: Sequence[tuple[int, int]],
    first: int,
    count: int = 2,
    margin: int = 3,
) -> bytes:
    """PNG bytes: the figure's row labels (everything left of the first panel), then
    its panel columns ``first`` .. ``first + count - 1`` (with ``margin`` pixels either
    side)."""
    from PIL import Image

    start, end = panels[first][0], panels[first + count - 1][1]
    labels = image[:, : panels[0][0]]
    crop = image[:, max(0, start - margin) : end + margin]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([labels, crop], axis=1)).save(buffer, format="png")
    return buffer.getvalue()


def panels_png(
    image: np.ndarray,
    panels: Sequence[tuple[int, int]],
    shown: Sequence[int],
    margin: int = 3,
) -> bytes:
    """PNG bytes: the figure's row labels, then only the panel columns ``shown`` (in
    that order): a narrower figure whose panels are larger in the book's column."""
    from PIL import Image

    parts = [image[:, : panels[0][0]]]
    for i in shown:
        start, end = panels[i]
        parts.append(image[:, max(0, start - margin) : end + margin])
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(parts, axis=1)).save(buffer, format="png")
    return buffer.getvalue()
