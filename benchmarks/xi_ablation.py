"""Bank ablation: coreset ratio xi, FCM queries K and pooling against AUROC and step time.

    python benchmarks/xi_ablation.py                      # CCAD(F), brick and hexnut, seed 0
    python benchmarks/xi_ablation.py --categories brick grass gravel hexnut --seeds 0 1
    python benchmarks/xi_ablation.py --quick              # smoke run

One factor at a time around the tiny preset's defaults (xi = 0.1, K = 64, image pooling):
xi in {0.02, 0.1, 0.5}, K in {4, 16, 64}, pooling in {image, patch} (patch pooling puts every
feature-map position in the bank, so the bank -- and the cross-attention cost -- grows by the
number of positions). Every run trains at the default budget; the default cell is shared
with ``minitex_table.py``. Step time is the optimiser loop's mean milliseconds per step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ccad_tutorial.experiments import (
    METRICS,
    QUICK_SETTINGS,
    add_bench_arguments,
    bench_output,
    categories_of,
    format_table,
    run_cell,
    summarise,
    write_result,
)
from ccad_tutorial.minitex import ensure_minitex

RESULTS = Path(__file__).resolve().parent / "results"
FACTORS = {"xi": [0.02, 0.1, 0.5], "num_queries": [4, 16, 64], "pool": ["image", "patch"]}
DEFAULTS = {"xi": 0.1, "num_queries": 64, "pool": "image"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["brick", "hexnut"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    settings, steps, factors = {}, None, FACTORS
    if args.quick:
        args.categories, args.seeds, steps = args.categories[:1], [0], 6
        settings = QUICK_SETTINGS
        factors = {"num_queries": [4, 64]}
    out = bench_output(args, "xi_ablation", RESULTS)
    data = ensure_minitex()
    rows, start = [], time.perf_counter()
    for seed in args.seeds:
        for category in args.categories:
            # the changed settings first, the default cell (shared with minitex_table.py) last
            plan = [(f, v) for f, vs in factors.items() for v in vs if v != DEFAULTS[f]]
            plan += [(f, v) for f, vs in factors.items() for v in vs if v == DEFAULTS[f]]
            for factor, value in plan:
                change = {} if value == DEFAULTS[factor] else {factor: value}
                row = run_cell(
                    data, category, "F", seed, args.root, steps, cached_only=args.cached_only,
                    **settings, **change,
                )  # fmt: skip
                if row is None:
                    print(f"{category:7s} seed {seed} {factor}={value}: not finished", flush=True)
                    continue
                row = {**row, "factor": factor, "value": str(value)}
                rows.append(row)
                print(
                    f"{category:7s} seed {seed} {factor}={value}: bank {row['bank_size']} "
                    f"image {row['image_auroc']:.3f} pixel {row['pixel_auroc']:.3f} "
                    f"{row['ms_per_step']:.0f} ms/step",
                    flush=True,
                )
    keys = METRICS + ("ms_per_step", "bank_size", "infer_s_per_image")
    table = summarise(rows, by=("factor", "value"), keys=keys)  # over categories and seeds
    print("\nmean over categories\n" + format_table(table, ("factor", "value"), keys))
    payload = {
        "variant": "F",
        "defaults": DEFAULTS,
        "seeds": args.seeds,
        "categories": categories_of(rows, args.categories),
        "settings": settings,
        "table": table,
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"wrote {write_result(out, 'xi_ablation', payload)}")
    return payload


if __name__ == "__main__":
    main()
