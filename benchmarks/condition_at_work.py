"""The condition at work: one model for all categories, which bank it reads, guidance on the
bank, and a positive control.

    python benchmarks/condition_at_work.py                  # 4 categories, seeds 0 1
    python benchmarks/condition_at_work.py --seeds 0        # one seed (run seeds in parallel)
    python benchmarks/condition_at_work.py --quick          # smoke run

Per category a bank is a constant the weights can absorb. One model for all categories
(DiAD's multi-class setting) is where a condition has work to do: which kind of normal an
image should be. The models (``MODELS``), all trained with the same compute (a unified model
trains the per-category step and stage-1 VAE budgets times the number of categories):

* ``per-category-uncond``: one unconditioned model per category (minitex_table's cells);
* ``unified-uncond``: one unconditioned model for all;
* ``unified-F-<bank mode>``: one CCAD(F) for all, trained with condition dropout
  (``cond_dropout``), so guidance ``w`` (``guidance_scale``) can be set at evaluation:
  w = 0 is the same weights without the condition, the fairest control.

What is measured and written to ``benchmarks/results/condition_at_work.json``:

1. ``repair``: the colour of each category through the reconstruction path (VAE round trip,
   one-step x0 estimates, DDIM with and without clipping the x0 estimate), the latents'
   statistics, the held-out loss per category, and the AUROCs through the earlier
   reconstruction path (x0 clipped), the current one, and one with a tiled VAE
   (``PIPELINES``), on the same weights.
2. ``validation``: every unified F model at every w on a validation split (fresh normals of
   the training regions and a defect family the test never uses); the bank mode and w of
   the multi-class default are chosen there (``choice``), never on the test set.
3. ``table`` / ``per_defect``: test AUROCs per model and w, mean over categories and seeds,
   and per defect type (``cutpaste`` is another category's texture: normal to a model that
   does not know the category).
4. ``generation``: the positive control (``diagnostics.conditional_generation``): samples
   drawn from pure noise with each category's bank, named by their nearest normal;
   ``swap``: the chosen model's test AUROC when given another category's bank.

Cells are cached under ``--root`` like every benchmark (``experiments.run_cell``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ccad_tutorial.datasets import load_split
from ccad_tutorial.diagnostics import (
    NearestCategory,
    category_error,
    colour_trace,
    condition_swap,
    conditional_generation,
    heldout_loss,
    latent_statistics,
)
from ccad_tutorial.evaluation import evaluate
from ccad_tutorial.experiments import (
    METRICS,
    QUICK_SETTINGS,
    add_bench_arguments,
    bench_output,
    cell_folder,
    run_cell,
    scored_detector,
    write_result,
)
from ccad_tutorial.minitex import ensure_minitex, validation_split
from ccad_tutorial.model import CCAD
from ccad_tutorial.normal_images import CATEGORIES
from ccad_tutorial.presets import make_config, set_inference_fields
from ccad_tutorial.runs import atomic_write, write_json

RESULTS = Path(__file__).resolve().parent / "results"
DROPOUT = 0.1
# name -> (variant, unified?, training settings)
MODELS = {
    "per-category-uncond": ("uncond", False, {}),
    "unified-uncond": ("uncond", True, {}),
    "unified-F-category": ("F", True, {"bank_mode": "category", "balanced_bank": True}),
    "unified-F-retrieved": ("F", True, {"bank_mode": "retrieved", "balanced_bank": False}),
    "unified-F-shared": ("F", True, {"bank_mode": "shared", "balanced_bank": False}),
}  # every setting explicit: the multi-class defaults of train_run never decide a cell
for _variant, _unified, _settings in MODELS.values():
    if _variant != "uncond":
        _settings["cond_dropout"] = DROPOUT
W_SWEEP = (0.0, 1.0, 2.0, 4.0)
TEST_W = (0.0, 1.0)  # every conditioned model; the chosen one gets the whole sweep
TRACE_IMAGES = 16  # test normals per category for the colour trace
# fit: bank + stage-1 VAE + optimiser loop, in s (a unified model's once, for all categories)
TIMES = ("fit_s", "train_s", "infer_s_per_image")


class Bench:
    """The benchmark's settings and cells: which folder, which row, cached where."""

    def __init__(self, args) -> None:
        self.args, self.root = args, Path(args.root)
        self.quick = QUICK_SETTINGS if args.quick else {}
        self.data = ensure_minitex()
        self.categories = args.categories
        self.joined = "+".join(self.categories)

    def cell(self, model: str) -> tuple[str, int | None, dict]:
        """(variant, steps, training settings) of a model's cells."""
        variant, unified, settings = MODELS[model]
        settings = {**self.quick, **settings}
        steps = 6 if self.args.quick else None
        if unified:
            cfg = make_config("tiny", variant, **settings)
            n = len(self.categories)
            steps = (steps or cfg.steps) * n
            settings = {**settings, "vae_steps": cfg.vae_steps * (1 if self.args.quick else n)}
        return variant, steps, settings

    def folder(self, model: str, seed: int, category: str | None = None) -> Path:
        variant, steps, settings = self.cell(model)
        trained_on = self.joined if MODELS[model][1] else category
        return cell_folder(self.root, variant, trained_on, seed, steps, **settings)

    def row(self, model: str, seed: int, category: str, evals: dict | None = None) -> dict | None:
        """The test row of one model, seed and category (evaluation settings ``evals``)."""
        variant, steps, settings = self.cell(model)
        unified = MODELS[model][1]
        row = run_cell(
            self.data, self.joined if unified else category, variant, seed, self.root, steps,
            eval_settings=evals or None, cached_only=self.args.cached_only,
            test_category=category if unified else None, **settings,
        )  # fmt: skip
        if row is None:
            return None
        w = (evals or {}).get("guidance_scale", 1.0) if variant != "uncond" else None
        return {**row, "model": model, "w": w}

    def cached(self, path: Path, compute) -> dict | None:
        """JSON at ``path``, computed (and written atomically) if missing and allowed."""
        if path.is_file():
            return json.loads(path.read_text())
        if self.args.cached_only or not (path.parent / "model.safetensors").is_file():
            return None
        value = compute()
        write_json(path, value)
        return value


def probe_scales(choice: dict | None, model: str) -> tuple[float, ...]:
    """The guidance scales a model is probed at besides w = 1: the whole sweep for the
    chosen model, the chosen w for the others (generating costs seconds)."""
    if choice is None:
        return ()
    return W_SWEEP if model == choice["model"] else (choice["guidance_scale"],)


# ---------------------------------------------------------------------- 1. the repair
def repair_rows(bench: Bench, seed: int) -> list[dict]:
    """Colour trace, latent statistics and held-out loss per category, for the unified and
    the per-category unconditioned models (cached per cell as ``colour_<category>.json``)."""
    rows = []
    for model in ("unified-uncond", "per-category-uncond"):
        for category in bench.categories:
            folder = bench.folder(model, seed, category)

            def compute(folder=folder, category=category):
                net = CCAD.from_pretrained(folder, device="cpu")
                cfg = net.cfg
                test = load_split(bench.data, "mvtec", category, "test", cfg.image_size)
                good = test.images[test.labels == 0][:TRACE_IMAGES]
                train = load_split(bench.data, "mvtec", category, "train", cfg.image_size)
                return {
                    "colour": colour_trace(net, good),
                    "latents": latent_statistics(net, train.images),
                    "heldout_loss": heldout_loss(net, good),
                }

            found = bench.cached(folder / f"colour_{category}.json", compute)
            if found is not None:
                rows.append({"model": model, "category": category, "seed": seed, **found})
    return rows


# the reconstruction path before and after each repair, on the same weights
PIPELINES = {
    "earlier": {"clip_sample": True, "tile": False},  # DDIM's x0 estimate clipped
    "x0 unclipped": {},  # the current default
    "x0 unclipped, tiled VAE": {"tile": True},  # measured, not adopted (chapter 8)
}
CURRENT = "x0 unclipped"


def before_after_rows(bench: Bench, seed: int) -> list[dict]:
    """Test rows of the unconditioned models through each reconstruction path of
    ``PIPELINES``: the earlier one (DDIM's x0 estimate clipped to [-1, 1] at every step, the
    VAE run on the whole image), then each repair added, on the same weights."""
    rows = []
    for model in ("unified-uncond", "per-category-uncond"):
        for category in bench.categories:
            for name, evals in PIPELINES.items():
                row = bench.row(model, seed, category, evals)
                if row is not None:
                    rows.append({**row, "pipeline": name})
    return rows


# ---------------------------------------------------------------------- 2. validation
def validation_rows(bench: Bench, model: str, seed: int) -> list[dict]:
    """Image and pixel AUROC of one unified F model at every w on each category's
    validation split (``minitex.validation_split``), cached as ``validation.json``."""
    folder = bench.folder(model, seed)
    size = make_config("tiny", "F", **bench.quick).image_size
    n = 4 if bench.args.quick else 16

    def compute():
        out = []
        for category in bench.categories:
            detector = scored_detector(folder, bench.data, category)
            val = validation_split(category, size=size, seed=1000 + seed, n_good=n, n_defect=n)
            for w in W_SWEEP:
                set_inference_fields(detector.cfg, {"guidance_scale": w})
                metrics = evaluate(detector, val)
                out.append(
                    {"category": category, "w": w}
                    | {k: metrics[k] for k in ("image_auroc", "pixel_auroc")}
                )
        return out

    found = bench.cached(folder / "validation.json", compute) or []
    return [{**r, "model": model, "seed": seed} for r in found]


def choose(validation: list[dict]) -> dict | None:
    """The (model, w) with the best mean validation image AUROC over categories and seeds
    (ties: the smaller w, then the model listed first)."""
    groups: dict[tuple, list[float]] = {}
    for r in validation:
        groups.setdefault((r["model"], r["w"]), []).append(r["image_auroc"])
    if not groups:
        return None
    order = list(MODELS)
    best = max(groups, key=lambda k: (statistics.fmean(groups[k]), -k[1], -order.index(k[0])))
    return {
        "model": best[0],
        "guidance_scale": best[1],
        "validation_image_auroc": statistics.fmean(groups[best]),
        "by": "mean validation image AUROC over categories and seeds (smudge defects)",
        "table": [
            {"model": m, "w": w, "image_auroc": statistics.fmean(v), "n": len(v)}
            for (m, w), v in sorted(
                groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])
            )
        ],
    }


# ---------------------------------------------------------------------- 4. the positive control
def generation(bench: Bench, model: str, seed: int, w: float) -> dict | None:
    """conditional_generation of a unified model with its own bank split by category, at
    guidance w; the samples of seed 0 are kept for the figure (``generation_w<w>.pt``)."""
    folder = bench.folder(model, seed)
    n = 2 if bench.args.quick else 12

    def compute():
        net = CCAD.from_pretrained(folder, device="cpu")
        cfg = net.cfg
        if cfg.variant != "uncond":
            net.cfg.guidance_scale = w
        normals = {
            c: load_split(bench.data, "mvtec", c, "train", cfg.image_size).images
            for c in bench.categories
        }
        banks = {c: net.bank[net.bank_labels == i] for i, c in enumerate(bench.categories)}
        start = time.perf_counter()
        result = conditional_generation(net, banks, n, seed, NearestCategory(cfg, normals))
        samples = result.pop("samples")
        if seed == 0:
            kept = {c: (s * 255).round().byte() for c, s in samples.items()}
            atomic_write(folder / f"generation_w{w:g}.pt", lambda p: torch.save(kept, p))
        good = {}
        for c in bench.categories:
            test = load_split(bench.data, "mvtec", c, "test", cfg.image_size)
            good[c] = test.images[test.labels == 0]
        result["category_error"] = category_error(net, good)
        result["generate_s"] = round(time.perf_counter() - start, 1)
        return result

    found = bench.cached(folder / f"generation_w{w:g}.json", compute)
    return None if found is None else {**found, "model": model, "seed": seed, "w": w}


def swap_rows(bench: Bench, model: str, seed: int, w: float) -> list[dict]:
    """The chosen model's test AUROC with its own category's bank against the next
    category's bank (given as the whole condition), per category."""
    folder = bench.folder(model, seed)
    rows = []
    for i, category in enumerate(bench.categories):
        other = bench.categories[(i + 1) % len(bench.categories)]

        def compute(category=category, i=i):
            detector = scored_detector(folder, bench.data, category)
            net = detector.model
            net.cfg.guidance_scale = w
            test = load_split(bench.data, "mvtec", category, "test", net.cfg.image_size)
            nxt = (i + 1) % len(bench.categories)
            other_bank = net.bank[net.bank_labels == nxt]
            return condition_swap(detector, test, {"other": other_bank}, controls=False)

        found = bench.cached(folder / f"swap_{category}_w{w:g}.json", compute)
        if found is not None:
            real, swapped = found["real"], found["other"]
            rows.append({
                "model": model, "seed": seed, "w": w, "category": category, "given": other,
                "image_auroc": real["image_auroc"], "swapped_image_auroc": swapped["image_auroc"],
                "swap_drop": real["image_auroc"] - swapped["image_auroc"],
                "pixel_drop": real["pixel_auroc"] - swapped["pixel_auroc"],
                "recon_change": swapped["recon_change"],
            })  # fmt: skip
    return rows


# ---------------------------------------------------------------------- figures
def _save_png(fig, path: Path) -> Path:
    """fig as a 256-colour PNG at ``path``, written atomically."""
    from PIL import Image

    def write(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=72)
        Image.open(tmp).convert("RGB").quantize(256).save(tmp, format="png", optimize=True)

    return atomic_write(path, write)


def generation_figure(bench: Bench, model: str, w: float, path: Path, n: int = 8):
    """PNG: the positive control's samples of seed 0, one row per bank given."""
    from matplotlib.figure import Figure

    saved = bench.folder(model, 0) / f"generation_w{w:g}.pt"
    if not saved.is_file():
        return None
    samples = torch.load(saved, weights_only=True)
    fig = Figure(figsize=(1.1 * n + 0.8, 1.1 * len(samples)))
    axes = fig.subplots(len(samples), n, squeeze=False)
    for r, (category, images) in enumerate(samples.items()):
        for c in range(n):
            ax = axes[r, c]
            if c < len(images):
                ax.imshow(images[c].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{category}'s\nbank", fontsize=9)
    fig.subplots_adjust(left=0.08, right=0.99, top=0.99, bottom=0.01, wspace=0.04, hspace=0.04)
    return _save_png(fig, path)


def guidance_figure(bench: Bench, model: str, path: Path):
    """PNG: one cutpaste test image per category (seed 0's model, fixed noise), its
    reconstruction and anomaly map at every w of the sweep."""
    from matplotlib.figure import Figure

    folder = bench.folder(model, 0)
    if not (folder / "model.safetensors").is_file():
        return None
    cols = ["input", "ground truth"] + [
        f"{x}, w = {w:g}" for w in W_SWEEP for x in ("recon", "map")
    ]
    fig = Figure(figsize=(1.5 * len(cols), 1.55 * len(bench.categories)))
    axes = fig.subplots(len(bench.categories), len(cols), squeeze=False)
    for r, category in enumerate(bench.categories):
        detector = scored_detector(folder, bench.data, category)
        test = load_split(bench.data, "mvtec", category, "test", detector.cfg.image_size)
        kinds = test.defect_types
        i = kinds.index("cutpaste") if "cutpaste" in kinds else int(test.labels.argmax())
        x = test.images[i : i + 1]
        panels = [x[0].permute(1, 2, 0), test.masks[i, 0]]
        for w in W_SWEEP:
            detector.cfg.guidance_scale = w
            recon = detector.reconstruct(x)
            _, maps = detector.score(x, recon)
            panels += [recon[0].permute(1, 2, 0), maps[0, 0]]
        for c, (ax, img) in enumerate(zip(axes[r], panels, strict=True)):
            ax.imshow(img.numpy(), cmap=None if img.dim() == 3 else "magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(category)
    fig.tight_layout()
    return _save_png(fig, path)


# ---------------------------------------------------------------------- tables
def mean_table(rows: list[dict], by=("model", "w"), keys=METRICS) -> list[dict]:
    """Per group ``by``: the mean over categories per seed, then mean and std over seeds."""
    per_seed: dict[tuple, list[dict]] = {}
    for r in rows:
        per_seed.setdefault((*(r[b] for b in by), r["seed"]), []).append(r)
    groups: dict[tuple, list[dict]] = {}
    for (*group, _seed), members in per_seed.items():
        entry = {k: statistics.fmean(m[k] for m in members) for k in keys}
        groups.setdefault(tuple(group), []).append({**entry, "n": len(members)})
    table = []
    for group, seeds in groups.items():
        entry = dict(zip(by, group, strict=True))
        entry.update(n_seeds=len(seeds), n_categories=seeds[0]["n"])
        for k in keys:
            values = [s[k] for s in seeds]
            entry[k] = statistics.fmean(values)
            entry[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    order = list(MODELS) + ["mean-normal"]
    return sorted(table, key=lambda e: (order.index(e["model"]), *(str(e[b]) for b in by[1:])))


def per_defect_table(rows: list[dict]) -> list[dict]:
    """Per (model, w, defect type): image and pixel AUROC, mean over categories and seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        for kind, m in r.get("per_defect", {}).items():
            groups.setdefault((r["model"], r["w"], kind), []).append(m)
    return [
        {"model": m, "w": w, "defect": kind, "n": len(v)}
        | {k: statistics.fmean(x[k] for x in v) for k in ("image_auroc", "pixel_auroc")}
        for (m, w, kind), v in groups.items()
    ]


def print_table(table: list[dict]) -> None:
    for e in table:
        w = "" if e["w"] is None else f" w={e['w']:g}"
        cells = "  ".join(f"{k} {e[k]:.3f}+-{e[f'{k}_std']:.3f}" for k in METRICS[:3])
        print(f"{e['model'] + w:28s} {cells}  seeds {e['n_seeds']}", flush=True)


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=list(MODELS),
        help="the unified F models to train and evaluate (the unconditioned ones always run)",
    )  # fmt: skip
    parser.add_argument(
        "--choice-seeds", nargs="+", type=int, default=None,
        help="seeds whose (cached) validation rows choose the bank mode and w (default: --seeds);"
        " lets one process per seed make the same choice",
    )  # fmt: skip
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.categories, args.seeds = args.categories[:2], [0]
    out = bench_output(args, "condition_at_work", RESULTS)
    bench, start = Bench(args), time.perf_counter()
    conditioned = [m for m, (v, u, _) in MODELS.items() if u and v != "uncond" and m in args.models]
    rows, validation, repair, before_after = [], [], [], []
    for seed in args.seeds:  # train and evaluate what every choice needs
        before_after += before_after_rows(bench, seed)
        repair += repair_rows(bench, seed)
        for model in conditioned:
            for category in args.categories:
                rows += [r for w in TEST_W if (r := bench.row(model, seed, category,
                                                              {"guidance_scale": w}))]  # fmt: skip
            validation += validation_rows(bench, model, seed)
    rows += [r for r in before_after if r["pipeline"] == CURRENT]
    others = [seed for seed in args.choice_seeds or [] if seed not in args.seeds]
    cached_only, args.cached_only = args.cached_only, True  # another process's seeds: read only
    all_conditioned = [m for m, (v, u, _) in MODELS.items() if u and v != "uncond"]
    for seed in others:
        for model in all_conditioned:
            validation += validation_rows(bench, model, seed)
    args.cached_only = cached_only
    choice = choose(validation)
    mine = choice is not None and choice["model"] in conditioned  # trained by this run
    if mine:  # the chosen model's sweep (seed 0: every w; other seeds: the chosen w)
        best = choice["model"]
        for seed in args.seeds:
            sweep = W_SWEEP if seed == 0 else (choice["guidance_scale"],)
            for category in args.categories:
                rows += [r for w in sweep if w not in TEST_W and (r := bench.row(
                    best, seed, category, {"guidance_scale": w}))]  # fmt: skip
    baseline = [
        {**r, "model": "mean-normal", "w": None}
        for seed in args.seeds
        for c in args.categories
        if (
            r := run_cell(
                bench.data,
                c,
                "mean-normal",
                seed,
                bench.root,
                cached_only=args.cached_only,
                **bench.quick,
            )
        )  # fmt: skip
    ]
    gen, swaps = [], []
    for seed in args.seeds:
        for model in conditioned + ["unified-uncond"]:
            ws = [1.0] if model == "unified-uncond" else [1.0, *probe_scales(choice, model)]
            for w in sorted(set(ws)):
                if (g := generation(bench, model, seed, w)) is not None:
                    gen.append(g)
        if mine:
            swaps += swap_rows(bench, choice["model"], seed, choice["guidance_scale"])
    table = mean_table(rows + baseline, keys=METRICS + TIMES)
    print("\ntest: mean over categories (mean +- std over seeds), feature map")
    print_table(table)
    payload = {
        "models": {  # the models this run trained (the unconditioned ones always)
            m: {"variant": v, "unified": u, "settings": s}
            for m, (v, u, s) in MODELS.items()
            if v == "uncond" or m in args.models
        },
        "not_run": [m for m in MODELS if m not in args.models and MODELS[m][0] != "uncond"],
        "budget": "same optimiser steps per category: a unified model trains steps x categories",
        "categories": args.categories,
        "seeds": args.seeds,
        "w_sweep": list(W_SWEEP),
        "choice": choice,
        "table": table,
        "per_defect": per_defect_table(rows),
        "before_after": {  # the reconstruction path of PIPELINES, repair by repair
            "pipelines": PIPELINES,
            "current": CURRENT,
            "table": mean_table(before_after, by=("model", "pipeline")),
            "rows": before_after,
        },
        "repair": repair,
        "validation": validation,
        "generation": gen,
        "swap": swaps,
        "rows": rows + baseline,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    figures = {}
    if choice is not None and 0 in args.seeds:
        figures["generation_png"] = generation_figure(
            bench, choice["model"], choice["guidance_scale"],
            out.with_name("condition_at_work_generation.png"),
        )  # fmt: skip
        figures["guidance_png"] = guidance_figure(
            bench, choice["model"], out.with_name("condition_at_work_guidance.png")
        )
    payload.update({k: v.name if v else None for k, v in figures.items()})
    print(f"\nchoice: {choice and {k: choice[k] for k in ('model', 'guidance_scale')}}")
    for g in gen:
        print(f"generation {g['model']} seed {g['seed']} w {g['w']:g}: accuracy "
              f"{g['accuracy']:.2f} (chance {g['chance']:.2f}), swap moved {g['swap']['moved']:.2f}")  # fmt: skip
    print(f"\nwrote {write_result(out, 'condition_at_work', payload)}")
    return payload


if __name__ == "__main__":
    main()
