"""Inference ablation: t_start, the number of DDIM steps and the scoring against AUROC and time.

    python benchmarks/inference_ablation.py               # CCAD(F), 4 categories, seed 0
    python benchmarks/inference_ablation.py --quick       # smoke run

No training of its own: it evaluates the cached CCAD(F) runs of ``minitex_table.py`` (trained
first if missing) with other inference settings. ``t_start`` is swept at the default number
of DDIM steps, the number of DDIM steps at the default ``t_start``. The scoring sweep scores
one reconstruction of the test split with pixel L1 and with 1 - cosine of a random-init
(BatchNorm-calibrated) ResNet-50's layers 1, 2, 3 and their sum (DiAD's choice, with
pretrained weights). Time is per test image,
reconstruction and scoring included. Choosing a setting from this table and quoting its test
AUROC would be choosing on the test set: the book shows the sweep, the model keeps its
defaults.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ccad_tutorial.experiments import (
    METRICS,
    QUICK_SETTINGS,
    add_bench_arguments,
    bench_output,
    categories_of,
    cell_folder,
    format_table,
    run_cell,
    scored_detector,
    summarise,
    write_result,
)
from ccad_tutorial.minitex import ensure_minitex
from ccad_tutorial.normal_images import CATEGORIES
from ccad_tutorial.presets import make_config
from ccad_tutorial.runs import write_json

RESULTS = Path(__file__).resolve().parent / "results"


SCORERS = {  # name -> AnomalyScorer arguments (random-init resnet50, BatchNorm calibrated)
    "pixel L1": {"mode": "l1"},
    "feature layer 1": {"mode": "feature", "layers": (1,)},
    "feature layer 2": {"mode": "feature", "layers": (2,)},
    "feature layer 3": {"mode": "feature", "layers": (3,)},
    "feature layers 1-3": {"mode": "feature", "layers": (1, 2, 3)},
}


def scoring_rows(
    data, category, variant, seed, root: Path, steps, settings, cached_only=False
) -> list[dict]:
    """One reconstruction of the test split, scored by every scorer (``evaluate`` with the
    detector's scorers replaced by ``SCORERS``); cached as scoring.json."""
    from ccad_tutorial.datasets import load_split
    from ccad_tutorial.evaluation import evaluate
    from ccad_tutorial.scoring import AnomalyScorer

    folder = cell_folder(root, variant, category, seed, steps, **settings)
    path = folder / "scoring.json"
    if cached_only and not path.is_file():
        return []
    run_cell(data, category, variant, seed, root, steps, **settings)
    if not path.is_file():
        detector = scored_detector(folder, data, category)
        train = load_split(data, "mvtec", category, "train", detector.cfg.image_size)
        test = load_split(data, "mvtec", category, "test", detector.cfg.image_size)
        prefixes = {name: "" if i == 0 else f"{name}: " for i, name in enumerate(SCORERS)}
        scorers = {}
        for name, kwargs in SCORERS.items():
            scorer = AnomalyScorer(detector.cfg.score_backbone, **kwargs)
            scorers[prefixes[name]] = scorer.calibrate(train.images).eval()
        detector.scorers = scorers
        row = evaluate(detector, test)
        rows = [
            {"scorer": name, **{k: row[prefix + k] for k in METRICS}}
            for name, prefix in prefixes.items()
        ]
        write_json(path, rows)
    return [{**r, "category": category, "seed": seed} for r in json.loads(path.read_text())]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--variant", default="F")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--t-start", nargs="+", type=int, default=[100, 200, 400, 600, 800])
    parser.add_argument("--ddim-steps", nargs="+", type=int, default=[2, 5, 10, 20])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    settings, steps = {}, None
    if args.quick:
        args.categories, args.seeds, steps = args.categories[:1], [0], 6
        args.t_start, args.ddim_steps = [100, 400], [2]
        settings = QUICK_SETTINGS
    out = bench_output(args, "inference_ablation", RESULTS)
    default = make_config("tiny", args.variant)
    grid = [{"t_start": t, "ddim_steps": default.ddim_steps} for t in args.t_start]
    grid += [{"t_start": default.t_start, "ddim_steps": n} for n in args.ddim_steps]
    grid = [dict(g) for g in {tuple(sorted(g.items())) for g in grid}]
    data = ensure_minitex()
    rows, start = [], time.perf_counter()
    for seed in args.seeds:
        for category in args.categories:
            for setting in sorted(grid, key=lambda g: (g["ddim_steps"], g["t_start"])):
                row = run_cell(
                    data, category, args.variant, seed, args.root, steps, eval_settings=setting,
                    cached_only=args.cached_only, **settings,
                )  # fmt: skip
                if row is None:
                    print(f"{category:7s} seed {seed} {setting}: not finished", flush=True)
                    continue
                rows.append(row)
                print(
                    f"{category:7s} seed {seed} t_start {setting['t_start']:4d} ddim "
                    f"{setting['ddim_steps']:3d}: image {row['image_auroc']:.3f} pixel "
                    f"{row['pixel_auroc']:.3f} {row['infer_s_per_image'] * 1000:.0f} ms/image",
                    flush=True,
                )
    scoring = []
    for seed in args.seeds:
        for category in args.categories:
            scoring += scoring_rows(
                data, category, args.variant, seed, Path(args.root), steps, settings,
                args.cached_only,
            )  # fmt: skip
    scoring_table = summarise(scoring, by=("scorer",), keys=METRICS)
    print("\nscoring (mean over categories)\n" + format_table(scoring_table, ("scorer",)))
    table = summarise(
        rows, by=("t_start", "ddim_steps"), keys=METRICS + ("infer_s_per_image",)
    )  # mean over categories and seeds
    table.sort(key=lambda e: (e["ddim_steps"], e["t_start"]))
    print(
        "\nmean over categories\n"
        + format_table(table, ("t_start", "ddim_steps"), METRICS + ("infer_s_per_image",))
    )
    payload = {
        "variant": args.variant,
        "defaults": {"t_start": default.t_start, "ddim_steps": default.ddim_steps},
        "seeds": args.seeds,
        "categories": categories_of(rows, args.categories),
        "settings": settings,
        "table": table,
        "rows": rows,
        "scoring": scoring_table,
        "scoring_rows": scoring,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"wrote {write_result(out, 'inference_ablation', payload)}")
    return payload


if __name__ == "__main__":
    main()
