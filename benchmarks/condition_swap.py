"""Does CCAD use its condition? The condition-swap diagnostic on every trained CCAD(F) cell.

    python benchmarks/condition_swap.py                   # F cells of minitex_table.py
    python benchmarks/condition_swap.py --variants F C --seeds 0 1
    python benchmarks/condition_swap.py --quick

Each trained cell (trained first if missing) is evaluated with its own Coarse Feature Bank
(``real``), the same numbers shuffled over rows and dimensions (``shuffled``), zeros
(``zeros``) and the bank of ANOTHER category (``other``: the next category's bank of the same
seed). Same weights and test-time noise each time, so only the condition changes
(``ccad_tutorial.diagnostics.condition_swap``). The swap drop is real minus swapped image
AUROC; ``recon_change`` is the mean absolute pixel change of the reconstructions. Every
cell is scored with the benchmarks' feature map (``experiments.scored_detector``). A model
that uses its condition shows drops clearly larger than the seed spread of its AUROC.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from ccad_tutorial.bank import CoarseFeatureBank
from ccad_tutorial.datasets import load_split
from ccad_tutorial.diagnostics import condition_swap
from ccad_tutorial.experiments import (
    QUICK_SETTINGS,
    add_bench_arguments,
    bench_output,
    categories_of,
    cell_folder,
    run_cell,
    scored_detector,
    write_result,
)
from ccad_tutorial.minitex import ensure_minitex
from ccad_tutorial.normal_images import CATEGORIES
from ccad_tutorial.runs import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def swap_cell(
    data, category, other, variant, seed, root: Path, steps, settings, cached_only=False
) -> dict | None:
    """condition_swap of one cell, cached in the cell's folder as ``swap.json``."""
    folder = cell_folder(root, variant, category, seed, steps, **settings)
    path = folder / "swap.json"
    if not path.is_file() and cached_only:
        return None
    if not path.is_file():
        run_cell(data, category, variant, seed, root, steps, **settings)
        run_cell(data, other, variant, seed, root, steps, **settings)  # the other bank
        other_folder = cell_folder(root, variant, other, seed, steps, **settings)
        other_bank = CoarseFeatureBank.load(other_folder / "bank.safetensors").features
        detector = scored_detector(folder, data, category)
        test = load_split(data, "mvtec", category, "test", detector.cfg.image_size)
        write_json(path, condition_swap(detector, test, {"other": other_bank}))
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--variants", nargs="+", default=["F"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    settings, steps = {}, None
    if args.quick:
        args.categories, args.seeds, steps = args.categories[:2], [0], 6
        settings = QUICK_SETTINGS
    out = bench_output(args, "condition_swap", RESULTS)
    root = Path(args.root)
    data = ensure_minitex()
    rows, start = [], time.perf_counter()
    for seed in args.seeds:
        for i, category in enumerate(args.categories):
            other = args.categories[(i + 1) % len(args.categories)]
            for variant in args.variants:
                swap = swap_cell(
                    data, category, other, variant, seed, root, steps, settings, args.cached_only
                )
                if swap is None:
                    print(f"{variant} {category:7s} seed {seed}: not finished", flush=True)
                    continue
                row = {"variant": variant, "category": category, "seed": seed, "other": other}
                for bank, metrics in swap.items():
                    row[f"{bank}_image_auroc"] = metrics["image_auroc"]
                    row[f"{bank}_pixel_auroc"] = metrics["pixel_auroc"]
                    row[f"{bank}_recon_change"] = metrics["recon_change"]
                    row[f"{bank}_heldout_loss"] = metrics["heldout_loss"]
                rows.append(row)
                print(
                    f"{variant} {category:7s} seed {seed}: image AUROC real "
                    f"{row['real_image_auroc']:.3f} other {row['other_image_auroc']:.3f} zeros "
                    f"{row['zeros_image_auroc']:.3f}; recon change other "
                    f"{row['other_recon_change']:.4f}",
                    flush=True,
                )
    summary = {}
    for variant in args.variants:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        summary[variant] = {
            f"{bank}_{what}": statistics.fmean(r[f"{bank}_{what}"] for r in mine)
            for bank in ("real", "shuffled", "zeros", "other")
            for what in ("image_auroc", "pixel_auroc", "recon_change", "heldout_loss")
        }
        for bank in ("shuffled", "zeros", "other"):
            drops = [r["real_image_auroc"] - r[f"{bank}_image_auroc"] for r in mine]
            summary[variant][f"{bank}_drop"] = statistics.fmean(drops)
            summary[variant][f"{bank}_abs_drop"] = statistics.fmean(abs(d) for d in drops)
    print(json.dumps(summary, indent=2))
    payload = {
        "seeds": args.seeds,
        "categories": categories_of(rows, args.categories),
        "settings": settings,
        "summary": summary,
        "rows": rows,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(f"wrote {write_result(out, 'condition_swap', payload)}")
    return payload


if __name__ == "__main__":
    main()
