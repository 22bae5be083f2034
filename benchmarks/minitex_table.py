"""The MiniTex-AD table: CCAD V, C, F, uncond, PatchCore and a no-model control, over seeds.

    python benchmarks/minitex_table.py                    # 4 categories x 2 seeds (~1.5 h, 2 cores)
    python benchmarks/minitex_table.py --seeds 0 --methods F uncond
    python benchmarks/minitex_table.py --quick            # smoke run: tiny images and budgets

Every cell trains at the tiny preset's default budget (``ccad_tutorial.presets.tiny``; the
same number of optimiser steps for every variant) and is evaluated on the full test split
with fixed test-time noise. ``mean-normal`` is the no-model control: the "reconstruction"
of every test image is the mean normal training image, scored by the same maps; what a
method gains over it is what its reconstruction adds. Cells are cached under ``--root`` (``runs/bench`` by default),
so an interrupted run continues where it stopped. Writes ``{"minitex_table": ...}`` to
``benchmarks/results/minitex_table.json`` (``--quick`` writes under ``--root`` instead, so
the published file is never overwritten by a smoke run).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from ccad_tutorial.experiments import (
    BASELINES,
    METHODS,
    METRICS,
    QUICK_SETTINGS,
    add_bench_arguments,
    bench_output,
    categories_of,
    category_means,
    complete,
    format_table,
    run_cell,
    summarise,
    write_result,
)
from ccad_tutorial.minitex import ensure_minitex
from ccad_tutorial.normal_images import CATEGORIES
from ccad_tutorial.presets import make_config

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "note": "wall-clock times on a shared 2-core CPU machine; compare within one run only",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["F", "uncond", "C", "patchcore", "mean-normal", "V"],
        choices=METHODS,
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    add_bench_arguments(parser)
    parser.add_argument(
        "--checkpoints", nargs="+", type=int, default=[100, 200, 400],
        help="F and uncond are also evaluated at these steps (convergence.py reads them)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    settings, steps = {}, None
    if args.quick:
        args.categories, args.seeds, steps = args.categories[:1], args.seeds[:1], 6
        args.checkpoints = [3]
        args.methods = [m for m in args.methods if m in ("F", "uncond", "patchcore", "mean-normal")]
        settings = QUICK_SETTINGS
    out = bench_output(args, "minitex_table", RESULTS)
    data = ensure_minitex()
    rows, start = [], time.perf_counter()
    for seed in args.seeds:  # seed-major: a stopped run has whole seeds, not half of each
        for category in args.categories:
            for method in args.methods:
                extra = dict(settings)
                if method in BASELINES:
                    extra = {"image_size": settings["image_size"]} if settings else {}
                elif method in ("F", "uncond"):  # the learning curves of convergence.py
                    extra["checkpoints"] = args.checkpoints
                row = run_cell(
                    data, category, method, seed, args.root, steps, cached_only=args.cached_only,
                    **extra,
                )  # fmt: skip
                if row is None:
                    print(f"{method:9s} {category:7s} seed {seed}: not finished", flush=True)
                    continue
                rows.append(row)
                print(
                    f"{method:9s} {category:7s} seed {seed}: image {row['image_auroc']:.3f} "
                    f"pixel {row['pixel_auroc']:.3f} aupro {row['aupro']:.3f} "
                    f"fit {row['fit_s']:.0f} s",
                    flush=True,
                )
    rows = complete(rows, "method", args.methods)
    per_category = summarise(rows, by=("method", "category"))
    mean = category_means(rows)
    print(
        "\nper category (mean +- std over seeds)\n"
        + format_table(per_category, ("method", "category"))
    )
    print("\nmean over categories (mean +- std over seeds)\n" + format_table(mean, ("method",)))
    # the same reconstructions scored by the pixel-L1 map (PatchCore has one map only)
    l1_rows = [{**r, **{m: r[f"l1_{m}"] for m in METRICS}} for r in rows if "l1_image_auroc" in r]
    mean_l1 = category_means(l1_rows)
    print("\npixel-L1 map, mean over categories\n" + format_table(mean_l1, ("method",)))
    budget = {m: make_config("tiny", m).steps for m in ("V", "C", "F", "uncond")}
    payload = {
        "budget": "tiny preset defaults: same optimiser steps for every variant",
        "steps": steps or budget,
        "settings": settings,
        "seeds": args.seeds,
        "categories": categories_of(rows, args.categories),
        "rows": rows,
        "per_category": per_category,
        "mean": mean,
        "score": "feature map (ResNet-50 layers 1-3, random init, BatchNorm calibrated)",
        "per_category_l1": summarise(l1_rows, by=("method", "category")),
        "mean_l1": mean_l1,
        "wall_s": round(time.perf_counter() - start, 1),
        "machine": machine(),
    }
    print(f"\nwrote {write_result(out, 'minitex_table', payload)}")
    return payload


if __name__ == "__main__":
    main()
