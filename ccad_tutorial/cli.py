"""The ``ccad-tutorial`` command line (also ``python -m ccad_tutorial``).

Each sub-command is a thin wrapper around one package function, so what the CLI does is what
the book's chapters call. Errors a user can fix (a wrong path, a bad layout, a missing
checkpoint) are printed as one ``error: ...`` line with exit status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

LAYOUT_CHOICES = ("mvtec", "visa", "loco", "mvtec3d", "mtd", "dagm", "minitex")


def _write_json(obj: dict, path: str | None) -> None:
    from ccad_tutorial.runs import write_json

    if path:
        print(f"wrote {write_json(path, obj, sort_keys=True)}")
    print(json.dumps(obj, indent=2, sort_keys=True))


def cmd_make_data(args: argparse.Namespace) -> int:
    from ccad_tutorial.minitex import ensure_minitex, make_minitex

    start = time.perf_counter()
    if args.force:
        out = make_minitex(args.out, size=args.size, seed=args.seed)
    else:  # cached: regenerated only when missing, incomplete or made with other parameters
        out = ensure_minitex(args.out, size=args.size, seed=args.seed)
    seconds = time.perf_counter() - start
    print(f"MiniTex-AD ({args.size} px, seed {args.seed}) is in {out} ({seconds:.1f} s)")
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    from ccad_tutorial.checks import check_dataset

    report = check_dataset(args.data, layout=args.layout)
    print(report.format())
    return 0


def cmd_patchcore(args: argparse.Namespace) -> int:
    from ccad_tutorial.baselines import run_patchcore

    result = run_patchcore(
        args.data,
        args.category,
        layout=args.layout,
        image_size=args.image_size,
        pretrained=args.pretrained,
        backbone=args.backbone,
        seed=args.seed,
    )
    _write_json(result, args.json)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ccad_tutorial.detectors import train_run

    if args.resume and args.set:
        raise ValueError("--set applies to a new run; a resumed run keeps its config.json.")

    result = train_run(
        args.data,
        args.category,
        args.out,
        variant=args.variant,
        preset=args.preset,
        layout=args.layout,
        steps=args.steps,
        pretrained=args.pretrained,
        resume=args.resume,
        seed=args.seed,
        **parse_overrides(args.set),
    )
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def parse_overrides(pairs: list[str] | None, inference_only: bool = False) -> dict:
    """``["bank_mode=retrieved", "xi=0.5", "feature_layers=[1,2]"]`` -> CCADConfig overrides.

    Values are read as JSON when they parse (numbers, lists, true/false/null), else as text.
    ``inference_only``: only the fields read at inference (``presets.INFERENCE_FIELDS``).
    """
    import dataclasses

    from ccad_tutorial.presets import INFERENCE_FIELDS, CCADConfig

    known = {f.name for f in dataclasses.fields(CCADConfig)}
    if inference_only:
        known = set(INFERENCE_FIELDS)
    what = "an inference field" if inference_only else "a CCADConfig field"
    example = "guidance_scale=2" if inference_only else "bank_mode=retrieved"
    out = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(
                f"--set {pair!r}: expected FIELD=VALUE with FIELD {what} "
                f"(e.g. --set {example}); known fields: {', '.join(sorted(known))}."
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ccad_tutorial.evaluation import evaluate_run

    result = evaluate_run(
        args.run,
        args.data,
        args.category,
        layout=args.layout,
        json_out=None,
        grid_png=args.grid,
        noise_seed=args.noise_seed,
        **parse_overrides(args.set, inference_only=True),
    )
    _write_json(result, args.json)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from ccad_tutorial.diagnostics import probe_run

    inference = parse_overrides(args.set, inference_only=True)
    result = probe_run(args.run, args.data, args.layout, args.n, args.seed, **inference)
    _write_json(result, args.json)
    return 0


def cmd_download_mvtec(args: argparse.Namespace) -> int:
    from ccad_tutorial.download import download_mvtec_ad

    root = download_mvtec_ad(args.out)
    print(f"MVTec-AD is ready in {root}; pass --data {root} (or DATA_ROOT) to use it.")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ccad_tutorial.reproduce import markdown_table, reproduce

    categories = [c for c in args.categories.split(",") if c] if args.categories else None
    overrides = parse_overrides(args.set)
    if args.image_size:
        overrides["image_size"] = args.image_size
    results = reproduce(
        args.data,
        args.out,
        categories=categories,
        layout=args.layout,
        preset=args.preset,
        variant=args.variant,
        pretrained=args.pretrained,
        steps=args.steps,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        per_category=args.per_category,
        **overrides,
    )
    print(markdown_table(results))
    print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'results.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccad-tutorial",
        description="CCAD tutorial: data, PatchCore baseline, CCAD training and evaluation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("make-data", help="generate the embedded MiniTex-AD data set")
    p.add_argument("--out", required=True, help="folder to write (MVTec-AD layout)")
    p.add_argument("--size", type=int, default=128, help="image size in pixels (64 to 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="regenerate even if up to date")
    p.set_defaults(func=cmd_make_data)

    p = sub.add_parser("check-data", help="validate a data folder and print its counts")
    p.add_argument("--data", required=True, help="root folder of the data set")
    p.add_argument("--layout", default="mvtec", choices=LAYOUT_CHOICES)
    p.set_defaults(func=cmd_check_data)

    p = sub.add_parser("patchcore", help="PatchCore baseline on one category")
    _add_data_args(p)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights (needs the hub)")
    p.add_argument("--backbone", default=None, help="timm backbone (default: per mode)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.set_defaults(func=cmd_patchcore)

    p = sub.add_parser(
        "train", help="train a CCAD variant on one category (or several joined by '+': one model)"
    )
    _add_data_args(p)
    p.add_argument("--variant", default="F", choices=("V", "C", "F", "uncond"))
    p.add_argument("--preset", default="tiny", choices=("tiny", "sd15"))
    p.add_argument("--steps", type=int, default=None, help="default: the preset's budget")
    p.add_argument("--pretrained", default=None, help="SD v1.5 folder or hub id (sd15 preset)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, config)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE",
        help="override a CCADConfig field of a new run (repeatable), e.g. --set bank_mode=retrieved",
    )  # fmt: skip
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on a category's test split")
    _add_data_args(p)
    p.add_argument("--run", required=True, help="run folder written by `train`")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    p.add_argument("--grid", default=None, help="write a PNG grid of examples here")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE",
        help="override an inference field of the run (repeatable), e.g. --set guidance_scale=2",
    )  # fmt: skip
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "probe", help="positive control: generate with each category's bank, name the category"
    )
    p.add_argument("--run", required=True, help="run folder written by `train`")
    p.add_argument("--data", required=True, help="root folder of the data set")
    p.add_argument("--layout", default="mvtec", choices=LAYOUT_CHOICES)
    p.add_argument("--n", type=int, default=8, help="samples per bank")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the samples")
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE",
        help="override an inference field for the probe, e.g. --set guidance_scale=4",
    )  # fmt: skip
    p.add_argument("--json", default=None, help="write the result to this JSON file")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("download-mvtec", help="download MVTec-AD (CC BY-NC-SA 4.0)")
    p.add_argument("--out", required=True, help="folder to extract into")
    p.set_defaults(func=cmd_download_mvtec)

    p = sub.add_parser(
        "reproduce",
        help="train one model for all categories (or one per category), evaluate each, then "
        "the paper's table",
    )
    p.add_argument("--data", required=True, help="root folder of the data set")
    p.add_argument("--layout", default="mvtec", choices=LAYOUT_CHOICES)
    p.add_argument("--categories", default=None, help="comma-separated (default: all in --data)")
    p.add_argument("--preset", required=True, choices=("tiny", "sd15"))
    p.add_argument("--variant", default="F", choices=("V", "C", "F", "uncond"))
    p.add_argument("--pretrained", default=None, help="SD v1.5 folder or hub id (sd15 preset)")
    p.add_argument("--out", required=True, help="folder of the runs, the metrics and the table")
    p.add_argument(
        "--per-category", action="store_true",
        help="one model per category (default: ONE multi-class model for all, as DiAD)",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per model")
    p.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="per model, if no --steps (default: 200 for sd15, as DiAD; tiny: its 800 steps)",
    )
    p.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--set", action="append", metavar="FIELD=VALUE",
        help="override a CCADConfig field of new runs (repeatable), e.g. --set batch_size=6",
    )  # fmt: skip
    p.set_defaults(func=cmd_reproduce)
    return parser


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="root folder of the data set")
    p.add_argument("--category", required=True)
    p.add_argument("--layout", default="mvtec", choices=LAYOUT_CHOICES)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        # DataError subclasses ValueError: every user-fixable problem ends here.
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
