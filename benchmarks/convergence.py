"""Convergence: AUROC and loss against training step, CCAD(F) against the unconditioned control.

    python benchmarks/convergence.py                      # F and uncond, 4 categories, seeds 0 1
    python benchmarks/convergence.py --checkpoints 100 200 400 800 1600
    python benchmarks/convergence.py --quick              # smoke run

Each (variant, category, seed) is ONE training run at the tiny preset's budget, evaluated at
every checkpoint on its way (``experiments.run_cell(checkpoints=...)``: it trains to the first
checkpoint, is evaluated, then resumes to the next; a resumed run reproduces the
uninterrupted one exactly, and the learning rate is constant). These are the same cached
runs as ``minitex_table.py``'s F and uncond cells: whichever script runs first trains them.
The paper's claim -- conditioning converges faster -- is read off as

    steps_ratio_conditioned_over_uncond = (steps CCAD(F) needs to reach uncond's final mean
                                           image AUROC) / (steps uncond needs to reach it)

where "needs to reach" is the first checkpoint at which the mean image AUROC over
categories and seeds is at least that value (linear interpolation between checkpoints);
None when F never reaches it within the checkpoints. The paper's claim is <= 0.7.
The curves use the pixel-L1 map by default (``--score l1``): it measures the reconstruction
alone, and every cached checkpoint row carries it; ``--score feature`` uses the rows' metrics.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from ccad_tutorial.experiments import (
    METRICS,
    QUICK_SETTINGS,
    add_bench_arguments,
    bench_output,
    categories_of,
    checkpoint_rows,
    complete,
    run_cell,
    write_result,
)
from ccad_tutorial.minitex import ensure_minitex
from ccad_tutorial.normal_images import CATEGORIES
from ccad_tutorial.presets import make_config

RESULTS = Path(__file__).resolve().parent / "results"


def run_curve(
    data, category, variant, seed, root: Path, checkpoints, settings, cached_only=False
) -> list[dict]:
    """Rows (one per checkpoint, the budget last) of one cached training run."""
    final = max(checkpoints)
    steps = None if final == make_config("tiny", variant, **settings).steps else final
    run_cell(
        data, category, variant, seed, root, steps, checkpoints=checkpoints,
        cached_only=cached_only, **settings,
    )  # fmt: skip
    rows = checkpoint_rows(
        root, variant, category, seed, **settings, **({"steps": steps} if steps else {})
    )
    return [{**r, "variant": variant} for r in rows if r["step"] in checkpoints]


def rescore(rows: list[dict], score: str) -> list[dict]:
    """Rows whose metrics are those of the ``score`` map (every row carries ``l1_<metric>``)."""
    if score == "feature":
        missing = [
            r["cell"] if "cell" in r else r["category"] for r in rows if r.get("score") == "l1"
        ]
        if missing:
            raise ValueError(
                f"rows of {sorted(set(missing))} have no feature metrics; use --score l1"
            )
        return rows
    return [{**r, **{m: r[f"l1_{m}"] for m in METRICS}} for r in rows]


def curve(rows: list[dict], variant: str, key: str = "image_auroc") -> list[tuple[int, float]]:
    """Mean over categories and seeds of ``key`` at each checkpoint: [(step, value), ...]."""
    by_step: dict[int, list[float]] = {}
    for row in rows:
        if row["variant"] == variant:
            by_step.setdefault(row["step"], []).append(row[key])
    return sorted((s, statistics.fmean(v)) for s, v in by_step.items())


def steps_to_reach(points: list[tuple[int, float]], target: float) -> float | None:
    """First step at which the curve reaches ``target`` (linear between checkpoints)."""
    previous = (0, None)
    for step, value in points:
        if value >= target:
            if previous[1] is None or previous[1] >= target:
                return float(step)
            s0, v0 = previous
            return s0 + (target - v0) / (value - v0) * (step - s0)
        previous = (step, value)
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--variants", nargs="+", default=["F", "uncond"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--checkpoints", nargs="+", type=int, default=[100, 200, 400, 800])
    parser.add_argument(
        "--score", choices=("l1", "feature"), default="l1",
        help="anomaly map of the curves: l1 (default) measures the reconstruction alone",
    )  # fmt: skip
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    settings = {}
    if args.quick:
        args.categories, args.seeds, args.checkpoints = args.categories[:1], [0], [3, 6]
        settings = QUICK_SETTINGS
    out = bench_output(args, "convergence", RESULTS)
    root = Path(args.root)
    data = ensure_minitex()
    rows, start = [], time.perf_counter()
    for seed in args.seeds:
        for category in args.categories:
            for variant in args.variants:
                curve_rows = run_curve(
                    data, category, variant, seed, root, args.checkpoints, settings,
                    args.cached_only,
                )  # fmt: skip
                if sorted(r["step"] for r in curve_rows) != sorted(args.checkpoints):
                    print(f"{variant:7s} {category:7s} seed {seed}: not finished", flush=True)
                    continue
                rows += curve_rows
                print(
                    f"{variant:7s} {category:7s} seed {seed}: "
                    + "  ".join(
                        f"{r['step']}:{r['image_auroc']:.3f}"
                        for r in rows[-len(args.checkpoints) :]
                    ),
                    flush=True,
                )
    rows = complete(rows, "variant", args.variants)  # curves compare like with like
    rows = rescore(rows, args.score)
    curves = {v: {k: curve(rows, v, k) for k in (*METRICS, "loss")} for v in args.variants}
    ratio = None
    if rows and "F" in curves and "uncond" in curves:
        target = curves["uncond"]["image_auroc"][-1][1]
        f_steps = steps_to_reach(curves["F"]["image_auroc"], target)
        u_steps = steps_to_reach(curves["uncond"]["image_auroc"], target)
        ratio = None if f_steps is None else f_steps / u_steps
    print("\nmean image AUROC over categories and seeds, per checkpoint")
    for v, c in curves.items():
        print(f"  {v:7s} " + "  ".join(f"{s}:{a:.3f}" for s, a in c["image_auroc"]))
    print(f"steps_ratio_conditioned_over_uncond = {ratio} (paper's claim: <= 0.7)")
    payload = {
        "checkpoints": args.checkpoints,
        "score": args.score,
        "seeds": args.seeds,
        "categories": categories_of(rows, args.categories),
        "settings": settings,
        "curves": curves,
        "steps_ratio_conditioned_over_uncond": ratio,
        "ratio_definition": "steps F needs to reach uncond's final mean image AUROC / steps "
        "uncond needs (first checkpoint reaching it, linear interpolation); None: never reached",
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"wrote {write_result(out, 'convergence', payload)}")
    return payload


if __name__ == "__main__":
    main()
