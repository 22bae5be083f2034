"""Chapter 8's result tables: what each benchmark measured, as the book shows it.

One function per table or caption of the chapter: the bank ablation (xi, K, pooling),
the inference ablation (``t_start``, DDIM steps, scorers), the feature map against the
pixel-L1 map, the sampler repair, and the condition-at-work benchmark (every model on
the test split, the no-model control, the validation choice, image AUROC per defect
type). Tables come as ``(header, rows)`` for ``ccad_tutorial.page.show_table``; the
``*_summary`` functions return the numbers a caption quotes (for ``page.glue_all``).

The neighbours: ``ccad_tutorial.verdicts`` holds the rules these tables are read with
(seed spread, ``plus_minus``) and the verdicts, ``ccad_tutorial.claims`` the
paper-claims table. The payloads are those of ``ccad_tutorial.results.load_benchmark``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ccad_tutorial.verdicts import mean_over, plus_minus

__all__ = [
    "ablation_table",
    "ablation_summary",
    "inference_curves",
    "inference_summary",
    "scoring_table",
    "map_comparison_table",
    "repair_tables",
    "repair_summary",
    "main_table",
    "control_summary",
    "choice_summary",
    "validation_table",
    "per_defect_table",
]

DASH = "–"  # a table cell with no value


def _w(w: float | None) -> str:
    return DASH if w is None else f"{w:g}"


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
