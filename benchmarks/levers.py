"""Levers: configurations in which the global-feature condition could matter, measured.

    python benchmarks/levers.py                           # the levers below, 4 categories, seeds 0 1
    python benchmarks/levers.py --levers unified-uncond unified-F-retrieved --seeds 0
    python benchmarks/levers.py --quick                   # smoke run

Per category, one model per category sees ONE bank for its whole life: the condition is a
constant, which the network can absorb into its weights (chapter 6's condition swap shows it
does). A condition can only help where it tells the model something the noisy input does
not. So the levers here change what the condition carries:

* ``per-category-*``: the tiny preset's cells of ``minitex_table.py`` (the baseline).
* ``unified-*``: ONE model for all categories (DiAD's multi-class setting), trained on their
  pooled normals for as many optimiser steps as the per-category models together
  (``steps`` and the stage-1 VAE's ``vae_steps`` times the number of categories: the same
  compute), then evaluated per category with the same scorer as the per-category cells.
  ``unified-F-retrieved`` conditions each image on the ``retrieve_k`` bank entries nearest
  to its own global feature (``bank_mode="retrieved"``): the condition now carries which
  category, and which normals, the image resembles. ``unified-F-shared`` gives every image
  the whole bank (a constant again); ``unified-uncond`` has no condition.
* ``--t-starts``: evaluated at several noise levels: the noisier the start, the less the
  input says and the more the condition could.

For the retrieved lever, the condition-swap drop is measured by retrieving from the
entries of the OTHER categories only (``swap_<category>.json`` in the cell folder): the
image AUROC with its own category's entries minus that. Cells are cached under ``--root``
like every benchmark (``experiments.run_cell``). Writes ``{"levers": ...}`` to
``benchmarks/results/levers.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ccad_tutorial.datasets import load_split
from ccad_tutorial.diagnostics import condition_swap
from ccad_tutorial.experiments import (
    METRICS,
    QUICK_SETTINGS,
    add_bench_arguments,
    bench_output,
    category_means,
    cell_name,
    complete,
    format_table,
    load_scored_run,
    run_cell,
    summarise,
    write_result,
)
from ccad_tutorial.minitex import CATEGORIES, ensure_minitex
from ccad_tutorial.presets import make_config
from ccad_tutorial.train import bank_categories

RESULTS = Path(__file__).resolve().parent / "results"

# name -> (variant, unified?, training settings)
LEVERS = {
    "per-category-uncond": ("uncond", False, {}),
    "per-category-F": ("F", False, {}),
    "unified-uncond": ("uncond", True, {}),
    "unified-F-retrieved": ("F", True, {"bank_mode": "retrieved"}),
    "unified-F-retrieved-balanced": ("F", True, {"bank_mode": "retrieved", "balanced_bank": True}),
    "unified-F-shared": ("F", True, {}),
    "per-category-F-retrieved": ("F", False, {"bank_mode": "retrieved"}),
}
DEFAULT_LEVERS = (
    "per-category-uncond", "per-category-F", "unified-uncond", "unified-F-retrieved",
    "unified-F-retrieved-balanced",
)  # fmt: skip


def unified_budget(variant: str, n_categories: int, settings: dict) -> dict:
    """Steps and VAE steps of one unified model: the per-category budget times the categories."""
    cfg = make_config("tiny", variant, **settings)
    return {"steps": cfg.steps * n_categories, "vae_steps": cfg.vae_steps * n_categories}


def lever_cell(lever: str, n_categories: int, args, quick: dict) -> tuple[str, int | None, dict]:
    """(variant, steps, training settings) of a lever's cells (run_cell's arguments)."""
    variant, unified, settings = LEVERS[lever]
    settings, steps = {**quick, **settings}, args.quick_steps
    if unified:
        budget = unified_budget(variant, n_categories, settings)
        if steps:
            budget = {"steps": steps * n_categories, "vae_steps": settings["vae_steps"]}
        steps, settings = budget["steps"], {**settings, "vae_steps": budget["vae_steps"]}
    return variant, steps, settings


def unified_folder(lever: str, categories, seed: int, root: Path, args, quick: dict) -> Path:
    """The cell folder of a unified lever's one model."""
    variant, steps, settings = lever_cell(lever, len(categories), args, quick)
    return root / cell_name(variant, "+".join(categories), seed, {**settings, "steps": steps})


def lever_rows(data, lever: str, categories, seed: int, root: Path, args, quick: dict) -> list:
    """One row per (category, t_start) of one lever and seed; None entries when not finished."""
    unified = LEVERS[lever][1]
    variant, steps, settings = lever_cell(lever, len(categories), args, quick)
    rows = []
    # the per-category baselines are minitex_table.py's cells: evaluated at the same checkpoints
    checkpoints = (100, 200, 400) if not (unified or quick or LEVERS[lever][2]) else ()
    for t_start in args.t_starts:
        default = make_config("tiny", variant)  # the inference ablation's eval-row names
        eval_settings = None if t_start == default.t_start else {
            "t_start": t_start, "ddim_steps": default.ddim_steps
        }  # fmt: skip
        for category in categories:
            row = run_cell(
                data, "+".join(categories) if unified else category, variant, seed, root, steps,
                eval_settings=eval_settings, cached_only=args.cached_only,
                test_category=category if unified else None, checkpoints=checkpoints,
                **settings,
            )  # fmt: skip
            if row is not None:
                rows.append({**row, "lever": lever, "t_start": t_start})
    return rows


def swap_rows(data, lever: str, categories, seed: int, root: Path, args, quick: dict) -> list:
    """Condition swap of a unified retrieved cell: own category's entries vs the others'."""
    variant, unified, settings = LEVERS[lever]
    if not (unified and settings.get("bank_mode") == "retrieved"):  # the retrieved levers
        return []
    folder = unified_folder(lever, categories, seed, root, args, quick)
    if not (folder / "model.safetensors").is_file():
        return []
    rows = []
    for category in categories:
        path = folder / f"swap_{category}.json"
        if not path.is_file():
            if args.cached_only:
                continue
            model, cfg = load_scored_run(folder, data, category)
            owner = bank_categories(folder)
            others = torch.tensor([c != category for c in owner])
            test = load_split(data, "mvtec", category, "test", cfg.image_size)
            result = condition_swap(
                model, test, {"other categories": model.bank[others]}, controls=False
            )
            path.write_text(json.dumps(result, indent=2))
        result = json.loads(path.read_text())
        real, other = result["real"], result["other categories"]
        rows.append(
            {
                "lever": lever,
                "category": category,
                "seed": seed,
                "real_image_auroc": real["image_auroc"],
                "swapped_image_auroc": other["image_auroc"],
                "swap_drop": real["image_auroc"] - other["image_auroc"],
                "recon_change": other["recon_change"],
                "heldout_loss_real": real["heldout_loss"],
                "heldout_loss_swapped": other["heldout_loss"],
            }
        )
    return rows


def example_figure(data, categories, seed: int, root: Path, args, quick: dict, path: Path):
    """PNG: one defective test image per category, reconstructed and scored by each unified
    model (same test-time noise). Returns the path, or None while a model is missing."""
    from matplotlib.figure import Figure

    levers = [k for k in LEVERS if LEVERS[k][1] and k in args.levers and "shared" not in k]
    folders = {k: unified_folder(k, categories, seed, root, args, quick) for k in levers}
    if not folders or not all((f / "model.safetensors").is_file() for f in folders.values()):
        return None
    short = {"unified-uncond": "uncond", "unified-F-retrieved": "retrieved"}
    short["unified-F-retrieved-balanced"] = "balanced"
    cols = ["input", "ground truth"] + [
        f"{short[k]}: {w}" for k in levers for w in ("recon", "map")
    ]
    fig = Figure(figsize=(1.9 * len(cols), 1.9 * len(categories)))
    axes = fig.subplots(len(categories), len(cols), squeeze=False)
    for r, category in enumerate(categories):
        panels = []
        for folder in folders.values():
            model, cfg = load_scored_run(folder, data, category)
            test = load_split(data, "mvtec", category, "test", cfg.image_size)
            i = int(torch.nonzero(test.labels == 1).flatten()[0])
            x = test.images[i : i + 1]
            recon = model.reconstruct(x, noise_seed=0)
            maps, _ = model.anomaly_maps(x, recon)
            panels += [recon[0].permute(1, 2, 0), maps[0, 0]]
        panels = [x[0].permute(1, 2, 0), test.masks[i, 0]] + panels
        for c, (ax, img) in enumerate(zip(axes[r], panels, strict=True)):
            ax.imshow(img.numpy(), cmap=None if img.dim() == 3 else "magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
            if c == 0:
                ax.set_ylabel(category)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=72)
    from PIL import Image  # 256 colours: a third of the bytes, no visible change at this size

    Image.open(tmp).convert("RGB").quantize(256).save(tmp, format="png", optimize=True)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--levers", nargs="+", default=list(DEFAULT_LEVERS), choices=list(LEVERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--t-starts", nargs="+", type=int, default=[400])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    quick, args.quick_steps = {}, None
    if args.quick:
        args.categories, args.seeds, args.quick_steps = (
            args.categories[:2],
            [0],
            6,
        )  # = minitex_table --quick
        quick = QUICK_SETTINGS
    out = bench_output(args, "levers", RESULTS)
    root = Path(args.root)
    data = ensure_minitex()
    rows, swaps, start = [], [], time.perf_counter()
    for seed in args.seeds:
        for lever in args.levers:
            found = lever_rows(data, lever, args.categories, seed, root, args, quick)
            swaps += swap_rows(data, lever, args.categories, seed, root, args, quick)
            rows += found
            for r in found:
                print(
                    f"{lever:26s} {r['category']:7s} seed {seed} t_start {r['t_start']}: "
                    f"image {r['image_auroc']:.3f} pixel {r['pixel_auroc']:.3f}",
                    flush=True,
                )
    tables = {}
    for t_start in args.t_starts:
        at = complete([r for r in rows if r["t_start"] == t_start], "lever", args.levers)
        tables[t_start] = {
            "mean": category_means(at, by="lever"),
            "mean_l1": category_means(
                [{**r, **{m: r[f"l1_{m}"] for m in METRICS}} for r in at], by="lever"
            ),
        }
        print(f"\nt_start {t_start}: mean over categories (mean +- std over seeds), feature map")
        print(format_table(tables[t_start]["mean"], ("lever",)))
    swap_table = summarise(
        swaps, by=("lever",), keys=("real_image_auroc", "swapped_image_auroc", "swap_drop",
                                    "recon_change"),
    )  # fmt: skip
    if swaps:
        print("\ncondition swap (other categories' entries), mean over categories and seeds")
        print(
            format_table(swap_table, ("lever",), ("real_image_auroc", "swap_drop", "recon_change"))
        )
    bank_counts = {}  # how many bank entries each category got, per unified lever and seed
    for lever in args.levers:
        if LEVERS[lever][1] and LEVERS[lever][0] != "uncond":
            for seed in args.seeds:
                folder = unified_folder(lever, args.categories, seed, root, args, quick)
                if (folder / "bank.safetensors").is_file():
                    owners = bank_categories(folder)
                    counts = {c: owners.count(c) for c in args.categories}
                    bank_counts.setdefault(lever, {})[str(seed)] = counts
    payload = {
        "levers": {
            k: {"variant": v, "unified": u, "settings": s}
            for k, (v, u, s) in LEVERS.items()
            if k in args.levers
        },
        "budget": "same optimiser steps per category: a unified model trains steps x categories",
        "seeds": args.seeds,
        "categories": args.categories,
        "t_starts": args.t_starts,
        "tables": {str(k): v for k, v in tables.items()},
        "swap": swap_table,
        "swap_rows": swaps,
        "bank_counts": bank_counts,
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    figure = example_figure(
        data,
        args.categories,
        args.seeds[0],
        root,
        args,
        quick,
        out.with_name("levers_examples.png"),
    )
    payload["examples_png"] = figure.name if figure else None
    print(f"\nwrote {write_result(out, 'levers', payload)}" + (f" and {figure}" if figure else ""))
    return payload


if __name__ == "__main__":
    main()
