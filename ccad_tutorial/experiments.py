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
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ccad_tutorial import runs
from ccad_tutorial.detectors import SCORE, CCADDetector, MeanNormal, PatchCore, train_run
from ccad_tutorial.evaluation import METRICS, evaluate
from ccad_tutorial.presets import VARIANTS, make_config, set_inference_fields
from ccad_tutorial.runs import cell_name

QUICK_SETTINGS = dict(image_size=32, crop_size=16, vae_steps=4, batch_size=4)  # --quick cells
METHODS = VARIANTS + ("patchcore", "mean-normal")
BASELINES = ("patchcore", "mean-normal")  # fitted, not trained: no steps, no checkpoints


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
    folder = cell_folder(root, method, category, seed, steps, **settings)
    name = folder.name
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


def cell_folder(
    root: str | os.PathLike, method: str, category: str, seed: int, steps=None, **settings
) -> Path:
    """The folder of a cell under ``root`` (its name: ``runs.cell_name``; ``steps`` is part
    of it when given). Benchmarks find a cell's run and their own caches there."""
    extra = {"steps": steps} if steps else {}
    return Path(root) / cell_name(method, category, seed, {**settings, **extra})


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
    if method in BASELINES:
        row = _baseline_row(data, category, method, seed, settings.get("image_size", 128))
    else:
        final = steps or make_config("tiny", method, **settings).steps
        for step in sorted(c for c in checkpoints if c < final):
            _checkpoint_row(data, category, method, seed, folder, root, step, settings)
        row = _ccad_row(data, category, method, seed, folder, root, final, settings)
        row.update(_evaluate(folder, data, test_category or category, eval_settings, noise_seed))
    row.update(method=method, category=test_category or category, seed=seed, cell=name)
    row.update(**({"trained_on": category} if test_category else {}), **(eval_settings or {}))
    runs.write_json(row_path, row)
    return row


def _row_file(eval_settings: dict | None, noise_seed: int, test_category=None) -> str:
    extra = cell_name("eval", "n", noise_seed, eval_settings) if eval_settings or noise_seed else ""
    extra += f"_test={test_category}" if test_category else ""
    return f"row{('_' + extra.lstrip('_')) if extra else ''}.json"


def _baseline_row(data, category: str, method: str, seed: int, image_size: int) -> dict:
    """Fit PatchCore or the no-model control (``detectors.MeanNormal``) on the category's
    normals and evaluate it on its test split."""
    from ccad_tutorial.datasets import load_split
    from ccad_tutorial.features import FAST_BACKBONE, FeatureExtractor

    if method == "patchcore":
        extractor = FeatureExtractor(FAST_BACKBONE, pool="patch", seed=seed)
        detector = PatchCore(extractor, seed=seed)
    else:
        detector = MeanNormal(make_config("tiny", "F", seed=seed, image_size=image_size))
    start = time.perf_counter()
    train = load_split(data, "mvtec", category, "train", image_size)
    test = load_split(data, "mvtec", category, "test", image_size)
    detector.fit(train.images)
    fit_s = time.perf_counter() - start
    row = evaluate(detector, test)
    row.update(fit_s=round(fit_s, 2), train_s=0.0)
    if method == "mean-normal":
        row["score"] = SCORE
    return row


def _checkpoint_row(data, category, variant, seed, folder: Path, root: Path, step, settings):
    """Train the cell's run up to ``step`` (resuming) and evaluate it there, once."""
    path = folder / f"row_step{step}.json"
    if path.is_file():
        return
    reached = runs.trained_steps(folder)
    if reached > step:
        raise ValueError(
            f"{folder} was trained past step {step} (to {reached}) without evaluating "
            f"checkpoint {step}; delete the folder to retrain it with its checkpoints."
        )
    row = _ccad_row(data, category, variant, seed, folder, root, step, settings)
    row.update(_evaluate(folder, data, category, None, 0), step=step, method=variant)
    row.update(category=category, seed=seed)
    runs.write_json(path, row)


def checkpoint_rows(root, method: str, category: str, seed: int, **settings) -> list[dict]:
    """The rows a cell wrote at its checkpoints and at its end, sorted by step."""
    folder = cell_folder(root, method, category, seed, **settings)
    rows = [json.loads(p.read_text()) for p in folder.glob("row_step*.json")]
    if (folder / "row.json").is_file():
        final = json.loads((folder / "row.json").read_text())
        rows.append({**final, "step": final["steps"]})
    return sorted(rows, key=lambda r: r["step"])


def _ccad_row(data, category, variant, seed, folder: Path, root: Path, steps, settings) -> dict:
    """Train the cell's run to ``steps`` (new, resumed, or already there) -> its training
    numbers: final loss (mean of the last tenth of the steps), times, bank size."""
    from ccad_tutorial.bank import CoarseFeatureBank

    new = not (folder / "trainer_state.pt").is_file()  # or stopped before a checkpoint
    train_run(
        data, category, folder, variant=variant, seed=seed, steps=steps, resume="auto",
        progress=False, vae_cache=root / "_vae_cache", **(settings if new else {}),
    )  # fmt: skip
    times = runs.read_config(folder).extra.get("times", {})
    log = runs.read_loss_log(folder, steps)
    tail = [loss for _, loss, *_ in log[-max(1, len(log) // 10) :]]
    return {
        "loss": statistics.fmean(tail) if tail else float("nan"),  # last tenth of the steps
        "steps": steps,
        "train_s": times.get("train_s", 0.0),
        "fit_s": round(times.get("train_s", 0.0) + times.get("vae_s", 0.0) + times["bank_s"], 2),
        "last_loss": log[-1][1] if log else float("nan"),
        "ms_per_step": round(1000 * times.get("train_s", 0.0) / max(1, steps), 1),
        "bank_size": len(CoarseFeatureBank.load(folder / "bank.safetensors")),
    }


def scored_detector(
    folder: Path,
    data,
    category: str,
    noise_seed: int = 0,
    eval_settings: dict | None = None,
    device: str = "cpu",
) -> CCADDetector:
    """The trained run in ``folder`` as a detector whose scorers are the benchmarks' (main
    map ``SCORE``), calibrated on ``category``'s normals: the same scorer for every method
    and seed of a category. For a multi-class run this differs from ``evaluate_run``, which
    calibrates on all the categories the model was trained on; the published benchmark
    rows were made this way. ``eval_settings`` set fields read at inference."""
    from ccad_tutorial.datasets import load_split

    detector = CCADDetector.from_pretrained(
        folder, device=device, noise_seed=noise_seed, progress=False
    )
    set_inference_fields(detector.cfg, eval_settings or {}, "eval_settings")
    train = load_split(data, "mvtec", category, "train", detector.cfg.image_size)
    return detector.fit_scorers(detector.cfg, train.images, SCORE)


def _evaluate(folder: Path, data, category: str, eval_settings, noise_seed: int) -> dict:
    """Metrics of the run in ``folder`` on ``category``'s test split (``evaluate``)."""
    from ccad_tutorial.datasets import load_split

    detector = scored_detector(folder, data, category, noise_seed, eval_settings)
    test = load_split(data, "mvtec", category, "test", detector.cfg.image_size)
    return {**evaluate(detector, test), "score": SCORE}


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
    """``summarise`` output as a Markdown table (``page.markdown_table``): ``mean +- std``
    per key, the number of seeds last."""
    from ccad_tutorial.page import markdown_table

    def cell(entry: dict, key: str) -> str:
        std = entry.get(f"{key}_std", 0.0)
        return f"{entry[key]:.3f} +- {std:.3f}" if key in entry else "-"

    rows = [
        [*(str(e[b]) for b in by), *(cell(e, k) for k in keys), e.get("n_seeds", "")] for e in table
    ]
    return markdown_table([*by, *keys, "seeds"], rows)


def write_result(path: str | os.PathLike, key: str, payload: dict) -> Path:
    """Write ``{key: payload}`` as JSON (atomically) to ``path``; returns the path."""
    return runs.write_json(path, {key: payload}, default=float)


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
