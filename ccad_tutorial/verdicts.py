"""Chapter 8's rules, and the verdicts the book reads with them.

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

Here too: the pitfalls' numbers (chance AUROC, checkpoint optimism) and the verdicts
themselves (does the condition matter per category; the condition at work, in five
points). The neighbours: ``ccad_tutorial.tables`` builds the chapter's result tables and
the numbers their captions quote, ``ccad_tutorial.claims`` the paper-claims table, and
``ccad_tutorial.viz`` crops the panels of a saved figure (``panel_columns``).

The functions take the payloads of ``ccad_tutorial.results.load_benchmark`` (plain dicts
and lists, as the benchmark scripts write them) and return numbers, dicts of numbers,
Markdown, or ``(header, rows)`` for ``ccad_tutorial.page.show_table``.
"""

from __future__ import annotations

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
    "condition_matters",
    "condition_matters_table",
    "condition_matters_text",
    "per_defect_text",
    "condition_at_work_verdict",
    "verdict_markdown",
]

SPREAD_FLOOR = 0.01  # image AUROC: the spread assumed when the seeds cannot measure one


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


# ---------------------------------------------------------------------- per defect
def _defect_auroc(per_defect: dict, model: str, w, kinds: Sequence[str]) -> float:
    return float(np.mean([per_defect[(model, w, k)]["image_auroc"] for k in kinds]))


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
