"""Cached, resumable experiment cells: what the benchmarks and the book's result tables run.

One *cell* is one (method, category, seed, settings) combination: train (or fit) on the
category's normals, evaluate on its test split, return one flat row of numbers. Each cell
lives in its own folder under ``root``; its row is written there last (``row.json``), so an
interrupted benchmark picks up where it stopped, and a finished cell is never recomputed
unless its settings change (they are part of the folder name).

    rows = [run_cell(data, "brick", "F", seed=0, root="runs/bench") for ...]
    table = summarise(rows, by=("method", "category"))  # mean and spread over seeds

Training time is the optimiser loop alone (``train_s``, as the loss log records it) plus the
stage-1 VAE and the bank (``fit_s``); inference time is per test image, reconstruction and
scoring included (``infer_s_per_image``). Test-time noise is fixed (``noise_seed``), so two
evaluations of the same weights give the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ccad_tutorial.presets import VARIANTS, make_config

METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
QUICK_SETTINGS = dict(image_size=32, crop_size=16, vae_steps=4, batch_size=4)  # --quick cells
METHODS = VARIANTS + ("patchcore", "mean-normal")
BASELINES = ("patchcore", "mean-normal")  # fitted, not trained: no steps, no checkpoints
SCORE = "feature"  # the anomaly map of every row's metrics; rows also carry l1_<metric>


def cell_name(method: str, category: str, seed: int, settings: dict | None = None) -> str:
    """Folder name of a cell, e.g. ``F_brick_s0`` or ``F_brick_s0_num_queries=16``."""
    parts = [method, category, f"s{seed}"]
    parts += [f"{k}={_short(v)}" for k, v in sorted((settings or {}).items())]
    return "_".join(parts)


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return str(value)


def run_cell(
    data: str | os.PathLike,
    category: str,
    method: str,
    seed: int = 0,
    root: str | os.PathLike = "runs/bench",
    steps: int | None = None,
    eval_settings: dict | None = None,
    noise_seed: int = 0,
    checkpoints: Sequence[int] = (),
    cached_only: bool = False,
    test_category: str | None = None,
    **settings,
) -> dict | None:
    """Train/fit + evaluate one cell, or read its cached row. Returns the row (a flat dict).

    ``method`` is a CCAD variant (V, C, F, uncond), ``patchcore``, or ``mean-normal`` (the
    no-model control: every test image "reconstructed" as the mean normal image, scored by
    the same maps as the CCAD rows). ``settings`` override
    CCADConfig fields for training (part of the cell's identity); ``eval_settings`` set
    the inference-only fields (t_start, ddim_steps, eta) of an already trained run.
    ``checkpoints`` (steps below the budget) also evaluates the run on its way there, once
    per checkpoint (``row_step<N>.json``, read back by ``checkpoint_rows``): the learning
    curve costs evaluations, not extra training. ``cached_only`` returns None instead of
    computing a missing cell (to report what a stopped benchmark has finished).

    ``category`` may join several with ``+`` (one unified model for all, see
    ``train.train_run``); ``test_category`` then names the one category this row evaluates
    (its row file carries the name; the model is trained once for all of them).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    root = Path(root)
    name = cell_name(method, category, seed, {**settings, **({"steps": steps} if steps else {})})
    folder = root / name
    if test_category is not None and method in BASELINES:
        raise ValueError(f"test_category is for unified CCAD cells; {method} fits one category.")
    row_path = folder / _row_file(eval_settings, noise_seed, test_category)
    if row_path.is_file():
        return json.loads(row_path.read_text())
    if cached_only:
        return None
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):  # two benchmark processes never train one cell twice
        if row_path.is_file():  # the other process finished it while we waited
            return json.loads(row_path.read_text())
        return _compute_cell(
            data, category, method, seed, root, steps, eval_settings, noise_seed, checkpoints,
            settings, name, folder, row_path, test_category,
        )  # fmt: skip


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (blocking) for as long as the block runs."""
    with path.open("w") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no concurrent benchmark processes, no lock needed
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compute_cell(
    data, category, method, seed, root, steps, eval_settings, noise_seed, checkpoints,
    settings, name, folder, row_path, test_category=None,
) -> dict:  # fmt: skip
    if method == "patchcore":
        row = _patchcore_row(data, category, seed, settings.get("image_size", 128))
    elif method == "mean-normal":
        row = _mean_normal_row(data, category, seed, settings.get("image_size", 128))
    else:
        final = steps or make_config("tiny", method, **settings).steps
        for step in sorted(c for c in checkpoints if c < final):
            _checkpoint_row(data, category, method, seed, folder, root, step, settings)
        row = _ccad_row(data, category, method, seed, folder, root, final, settings)
        row.update(_evaluate(folder, data, test_category or category, eval_settings, noise_seed))
    row.update(method=method, category=test_category or category, seed=seed, cell=name)
    row.update(**({"trained_on": category} if test_category else {}), **(eval_settings or {}))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = row_path.with_name(row_path.name + ".tmp")
    tmp.write_text(json.dumps(row, indent=2))
    os.replace(tmp, row_path)
    return row


def _row_file(eval_settings: dict | None, noise_seed: int, test_category=None) -> str:
    extra = cell_name("eval", "n", noise_seed, eval_settings) if eval_settings or noise_seed else ""
    extra += f"_test={test_category}" if test_category else ""
    return f"row{('_' + extra.lstrip('_')) if extra else ''}.json"


def _patchcore_row(data, category: str, seed: int, image_size: int) -> dict:
    from ccad_tutorial.baselines import run_patchcore

    result = run_patchcore(data, category, image_size=image_size, seed=seed)
    row = {k: float(result[k]) for k in METRICS}
    row.update(
        fit_s=float(result["fit_seconds"]),
        train_s=0.0,
        infer_s_per_image=round(float(result["predict_seconds"]) / int(result["n_test"]), 4),
        n_test=int(result["n_test"]),
    )
    return row


def _mean_normal_row(data, category: str, seed: int, image_size: int) -> dict:
    """The no-model control: what the anomaly maps find when the "reconstruction" is the
    mean of the normal training images, the same for every test image (no model at all)."""
    from ccad_tutorial.datasets import load_split
    from ccad_tutorial.model import build_scorer

    start = time.perf_counter()
    cfg = make_config("tiny", "F", seed=seed, image_size=image_size)
    train = load_split(data, "mvtec", category, "train", image_size)
    test = load_split(data, "mvtec", category, "test", image_size)
    scorer = build_scorer(cfg, SCORE).calibrate(train.images).eval()
    recons = train.images.mean(0, keepdim=True).expand_as(test.images)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    row = _map_metrics(scorer, test, recons)
    infer_s = time.perf_counter() - start
    row.update(_map_metrics(build_scorer(cfg, "l1"), test, recons, prefix="l1_"))
    row.update(
        score=SCORE,
        fit_s=round(fit_s, 2),
        train_s=0.0,
        infer_s_per_image=round(infer_s / len(test.labels), 4),
        n_test=len(test.labels),
    )
    return row


@torch.no_grad()
def _map_metrics(scorer, test, recons, prefix: str = "") -> dict:
    """``{prefix + metric: value}`` of one scorer's maps of ``recons`` against ``test``, with
    ``{prefix}per_defect``: image and pixel AUROC per defect type (``metrics.per_defect_type``)."""
    from ccad_tutorial.metrics import evaluate, per_defect_type

    maps = torch.cat(
        [scorer(x, r) for x, r in zip(test.images.split(16), recons.split(16), strict=True)]
    )
    scores = scorer.image_scores(maps)
    result = evaluate(test.labels, scores, test.masks, maps)
    row = {f"{prefix}{k}": float(result[k]) for k in METRICS}
    row[f"{prefix}per_defect"] = per_defect_type(
        test.labels, scores, test.defect_types, test.masks, maps
    )
    return row


def _checkpoint_row(data, category, variant, seed, folder: Path, root: Path, step, settings):
    """Train the cell's run up to ``step`` (resuming) and evaluate it there, once."""
    path = folder / f"row_step{step}.json"
    if path.is_file():
        return
    if (folder / "trainer_state.pt").is_file():
        from ccad_tutorial.train import load_trainer_state

        reached = int(load_trainer_state(folder)["step"])
        if reached > step:
            raise ValueError(
                f"{folder} was trained past step {step} (to {reached}) without evaluating "
                f"checkpoint {step}; delete the folder to retrain it with its checkpoints."
            )
    row = _ccad_row(data, category, variant, seed, folder, root, step, settings)
    row.update(_evaluate(folder, data, category, None, 0), step=step, method=variant)
    row.update(category=category, seed=seed)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(row, indent=2))
    os.replace(tmp, path)


def checkpoint_rows(root, method: str, category: str, seed: int, **settings) -> list[dict]:
    """The rows a cell wrote at its checkpoints and at its end, sorted by step."""
    folder = Path(root) / cell_name(method, category, seed, settings)
    rows = [json.loads(p.read_text()) for p in folder.glob("row_step*.json")]
    if (folder / "row.json").is_file():
        final = json.loads((folder / "row.json").read_text())
        rows.append({**final, "step": final["steps"]})
    return sorted(rows, key=lambda r: r["step"])


def _ccad_row(data, category, variant, seed, folder: Path, root: Path, steps, settings) -> dict:
    from ccad_tutorial.coreset import CoarseFeatureBank
    from ccad_tutorial.train import read_loss_log, train_run

    resume = (folder / "trainer_state.pt").is_file()
    if not resume and (folder / "config.json").is_file():
        # stopped before its first checkpoint: nothing to resume; the cell folder is ours
        shutil.rmtree(folder)
    summary = _finished(folder, steps) if resume else None
    summary = summary or train_run(
        data,
        category,
        folder,
        variant=variant,
        seed=seed,
        steps=steps,
        resume=resume,
        progress=False,
        vae_cache=root / "_vae_cache",
        **({} if resume else settings),
    )
    times = summary["times"]
    log = read_loss_log(folder, summary["steps"])
    tail = [loss for _, loss, *_ in log[-max(1, len(log) // 10) :]]
    return {
        "loss": statistics.fmean(tail) if tail else float("nan"),  # last tenth of the steps
        "steps": summary["steps"],
        "train_s": times.get("train_s", 0.0),
        "fit_s": round(times.get("train_s", 0.0) + times.get("vae_s", 0.0) + times["bank_s"], 2),
        "last_loss": summary["last_loss"],
        "ms_per_step": summary["ms_per_step"],
        "bank_size": len(CoarseFeatureBank.load(folder / "bank.safetensors")),
    }


def _finished(folder: Path, steps: int) -> dict | None:
    """train_run's summary of a run already trained to exactly ``steps`` (None otherwise):
    evaluating a finished cell again needs no trainer, data pass or config rewrite."""
    from ccad_tutorial.train import load_trainer_state, read_config, read_loss_log

    cfg = read_config(folder)
    if cfg.steps != steps or int(load_trainer_state(folder)["step"]) != steps:
        return None
    times = cfg.extra.get("times", {})
    log = read_loss_log(folder, steps)
    return {
        "steps": steps,
        "times": times,
        "last_loss": log[-1][1] if log else float("nan"),
        "ms_per_step": round(1000 * times.get("train_s", 0.0) / max(1, steps), 1),
    }


def load_scored_run(folder: Path, data, category: str):
    """(model, cfg) of a trained run whose scorer is the benchmarks' ``SCORE`` map, calibrated
    on ``category``'s normals: the same scorer for every method and seed of a category, also
    for unified runs and runs trained when another map was the default."""
    from ccad_tutorial.datasets import load_split
    from ccad_tutorial.model import build_scorer
    from ccad_tutorial.train import load_run

    model, cfg = load_run(folder, device="cpu")
    if cfg.score_mode != SCORE or "+" in cfg.extra.get("train_args", {}).get("category", ""):
        train = load_split(data, "mvtec", category, "train", cfg.image_size)
        model.scorer = build_scorer(cfg, SCORE).calibrate(train.images).eval()
    return model, cfg


def _evaluate(folder: Path, data, category: str, eval_settings, noise_seed: int) -> dict:
    """Metrics of the run in ``folder`` (inference fields optionally overridden).

    One reconstruction of the test split, scored twice: the row's metrics come from the
    feature map (``SCORE``, the presets' default: a fixed random-init ResNet-50 calibrated on
    the category's normals, the same scorer for every method and seed), the
    ``l1_<metric>`` keys from the pixel-L1 map of the same reconstructions.
    """
    from ccad_tutorial.datasets import load_split
    from ccad_tutorial.model import build_scorer
    from ccad_tutorial.train import set_inference_fields

    model, cfg = load_scored_run(folder, data, category)
    set_inference_fields(model.cfg, eval_settings or {}, "eval_settings")
    test = load_split(data, "mvtec", category, "test", cfg.image_size)
    start = time.perf_counter()
    recons = model.reconstruct(test.images, noise_seed=noise_seed, progress=False)
    row = _map_metrics(model.scorer, test, recons)
    infer_s = time.perf_counter() - start
    return {
        **row,
        **_map_metrics(build_scorer(cfg, "l1"), test, recons, prefix="l1_"),
        "score": SCORE,
        "infer_s_per_image": round(infer_s / len(test.labels), 4),
        "n_test": len(test.labels),
    }


def summarise(
    rows: Iterable[dict], by: Sequence[str] = ("method", "category"), keys: Sequence[str] = ()
) -> list[dict]:
    """Mean and spread over seeds: one row per group of ``by``, keys ``<metric>`` and
    ``<metric>_std`` (sample standard deviation; 0 with one seed) plus ``n_seeds``."""
    keys = tuple(keys) or METRICS + ("train_s", "fit_s", "infer_s_per_image")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[b] for b in by), []).append(row)
    table = []
    for group, members in groups.items():
        entry = dict(zip(by, group, strict=True))
        for key in keys:
            values = [float(m[key]) for m in members if key in m]
            if values:
                entry[key] = statistics.fmean(values)
                entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        entry["n_seeds"] = len({m["seed"] for m in members})
        table.append(entry)
    return table


def category_means(rows: Iterable[dict], by: str = "method") -> list[dict]:
    """Per seed, the mean over categories; then mean and spread of those means over seeds.

    The spread of a mean over categories is the seed-to-seed spread of the number the
    book quotes ("mean image AUROC"), which is what a difference must exceed to count.
    """
    rows = list(rows)
    per_seed: dict[tuple, list[dict]] = {}
    for row in rows:
        per_seed.setdefault((row[by], row["seed"]), []).append(row)
    means = []
    for (key, seed), members in per_seed.items():
        entry = {by: key, "seed": seed, "n_categories": len(members)}
        for metric in METRICS + ("train_s", "fit_s", "infer_s_per_image"):
            entry[metric] = statistics.fmean(float(m[metric]) for m in members)
        means.append(entry)
    return summarise(means, by=(by,))


def format_table(table: list[dict], by: Sequence[str], keys: Sequence[str] = METRICS) -> str:
    """Plain-text table of ``summarise`` output: ``mean +- std`` per key."""
    header = [*by, *keys, "seeds"]
    lines = []
    for entry in table:
        cells = [str(entry[b]) for b in by]
        for key in keys:
            std = entry.get(f"{key}_std", 0.0)
            cells.append(f"{entry[key]:.3f} +- {std:.3f}" if key in entry else "-")
        cells.append(str(entry.get("n_seeds", "")))
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines]
    return "\n".join(out)


def write_result(path: str | os.PathLike, key: str, payload: dict) -> Path:
    """Write ``{key: payload}`` as JSON (atomically) to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({key: payload}, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------- the benchmark scripts
def add_bench_arguments(parser) -> None:
    """The options every script of ``benchmarks/`` shares: --root, --out, --cached-only, --quick."""
    parser.add_argument("--root", default="runs/bench", help="cache folder of the cells")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument(
        "--cached-only", action="store_true", help="report the finished cells, compute nothing"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run on tiny settings")


def bench_output(args, name: str, results: Path) -> Path:
    """Where a script writes ``<name>.json``; ``--quick`` moves the cells and the file under
    ``<root>/quick`` (sets ``args.root``), so a smoke run never overwrites published results."""
    if args.quick:
        args.root = str(Path(args.root) / "quick")
    if args.out:
        return Path(args.out)
    return Path(args.root) / f"{name}.json" if args.quick else results / f"{name}.json"


def complete(rows: list[dict], key: str, wanted: Iterable) -> list[dict]:
    """Only the (category, seed) pairs for which every ``wanted`` value of ``row[key]``
    finished: means over categories must compare like with like."""
    done: dict[tuple, set] = {}
    for row in rows:
        done.setdefault((row["category"], row["seed"]), set()).add(row[key])
    keep = {pair for pair, found in done.items() if found >= set(wanted)}
    return [row for row in rows if (row["category"], row["seed"]) in keep]


def categories_of(rows: list[dict], order: Sequence[str]) -> list[str]:
    """The categories present in ``rows``, in the order the script was given them."""
    return sorted({row["category"] for row in rows}, key=list(order).index)
