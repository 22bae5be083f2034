"""Reproduce a benchmark: train CCAD on the categories, evaluate each, then one table.

Multi-class, the default (DiAD's setting, and the one its README and CCAD report):

    <out>/multiclass/             train_run(data, "a+b+...")  ONE model and ONE bank for all
    <out>/<category>/metrics.json evaluate_run, per category  (exists -> category done)
    <out>/<category>/examples.png input / reconstruction / map / ground truth

Per category (``per_category=True``, ``--per-category``): each category gets its own bank
and its own model, exactly what ``ccad-tutorial train --category C`` builds, in
``<out>/<category>/`` next to its metrics. A per-category model has the easier job (one kind
of normal), so the table says which setting every number comes from: ours, and each
reference's (``REFERENCE``).

Resumable: run the same command again after an interruption. A category whose
``metrics.json`` exists is not evaluated again (nor trained, per category); a model with a
checkpoint continues at its saved step (``train_run(resume="auto")``), and one that reached
its budget is not trained again; one interrupted before its first checkpoint starts over.

The budget, per model: ``steps`` if given; else ``epochs`` passes over the model's training
images at the preset's effective batch (batch_size x grad_accum). The sd15 preset defaults
to DiAD's 200 epochs: the multi-class model sees MVTec-AD's 3,629 training images 200 times
in ~15k steps, DiAD's budget; per category, each of the 15 models gets 200 epochs of its own
images, which adds up to the same ~15k steps. The tiny preset defaults to its own ``steps``.
"""

from __future__ import annotations

import gc
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ccad_tutorial.datasets import DataError, list_categories, load_dataset
from ccad_tutorial.detectors import split_categories, train_run
from ccad_tutorial.download import MVTEC_CATEGORIES
from ccad_tutorial.evaluation import evaluate_run
from ccad_tutorial.modes import SD15_HUB_ID, resolve_device, resolve_mode
from ccad_tutorial.presets import make_config
from ccad_tutorial.runs import atomic_write, read_config, write_json

METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")
METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "f1_max": "F1-max",
}
DIAD_EPOCHS = 200  # DiAD: ~15k steps = 200 epochs of MVTec-AD's 3,629 images at batch 48
# Normal training images per MVTec-AD category (Bergmann et al., CVPR 2019, Table 1): what
# the sd15 budget is computed from, known here so the cost can be shown without the data.
MVTEC_TRAIN_IMAGES = {
    "bottle": 209, "cable": 224, "capsule": 219, "carpet": 280, "grid": 264,
    "hazelnut": 391, "leather": 245, "metal_nut": 220, "pill": 267, "screw": 320,
    "tile": 230, "toothbrush": 60, "transistor": 213, "wood": 247, "zipper": 240,
}  # fmt: skip

# The one place that holds the published numbers we compare with: means over the 15 MVTec-AD
# categories, as fractions, each with its source. CCAD's full text was not available to us:
# its two numbers are the headline of the paper's summary.
REFERENCE = {
    "CCAD (paper)": {
        "image_auroc": 0.962,
        "pixel_auroc": 0.966,
        "setting": "not stated",
        "source": "CCAD, arXiv 2512.21459: headline MVTec-AD result (its setting not stated there)",
    },
    "DiAD (multi-class)": {
        "image_auroc": 0.972,
        "pixel_auroc": 0.968,
        "aupro": 0.907,
        "setting": "multi-class",
        "source": "DiAD (AAAI 2024), README of its official code: one model for 15 categories",
    },
    "PatchCore": {
        "image_auroc": 0.991,
        "pixel_auroc": 0.981,
        "setting": "per category",
        "source": "PatchCore (CVPR 2022) paper: WideResNet-50, 10 % coreset, per category",
    },
}
MULTICLASS = "multiclass"  # the run folder of the one multi-class model, inside <out>
SETTINGS = {False: "multi-class", True: "per category"}  # by per_category


def resolve_gpu_mode(mode: str = "auto", device: str = "auto") -> str:
    """``fast`` or ``full`` for a GPU recipe; ``full`` without CUDA needs ``device="cpu"``.

    Like :func:`ccad_tutorial.modes.resolve_mode` (``$CCAD_MODE`` wins). ``full`` without
    CUDA warns and falls back to fast mode, unless the device is explicitly ``"cpu"``: then
    full mode runs on the CPU, slowly (the sd15 preset takes ~30 s per image and step there),
    which is how a full run is rehearsed offline (``ccad_tutorial.standins``).
    """
    mode = resolve_mode(mode)
    if mode != "full" or torch.cuda.is_available():
        return mode
    if device == "cpu":
        warnings.warn(
            "MODE='full' on the CPU, as asked (DEVICE='cpu'): the sd15 preset takes ~30 s per "
            "image and step there. Fine for a rehearsal with a few steps and small images; "
            "a real run needs a GPU.",
            stacklevel=2,
        )
        return mode
    warnings.warn(
        "MODE='full' needs a CUDA GPU (the sd15 preset takes ~30 s per image and step on a "
        "CPU) and none is available: falling back to fast mode (tiny preset, MiniTex-AD). "
        "In Colab: Runtime > Change runtime type > GPU. DEVICE='cpu' keeps full mode.",
        stacklevel=2,
    )
    return "fast"


def resolve_data(
    mode: str,
    data_root: str | os.PathLike | None = None,
    download_dir: str | os.PathLike | None = None,
) -> str | os.PathLike | None:
    """The data a GPU recipe reads: ``data_root`` if given, else ``$CCAD_DATA_ROOT``; else,
    in full mode, MVTec-AD, downloaded once into ``download_dir`` (default: the package's
    cache folder); else None (fast mode: ``modes.start_chapter`` picks MiniTex-AD)."""
    data_root = data_root or os.environ.get("CCAD_DATA_ROOT")
    if data_root is not None or mode != "full":
        return data_root
    from ccad_tutorial.download import download_mvtec_ad
    from ccad_tutorial.minitex import default_cache_dir

    return download_mvtec_ad(download_dir or default_cache_dir() / "mvtec")


def preset_differences(a: str = "tiny", b: str = "sd15", variant: str = "F") -> dict:
    """{field: (value in preset a, value in preset b)} for every CCADConfig field that differs."""
    cfg_a, cfg_b = make_config(a, variant).to_dict(), make_config(b, variant).to_dict()
    return {k: (cfg_a[k], cfg_b[k]) for k in cfg_a if cfg_a[k] != cfg_b[k] and k != "preset"}


def select_categories(
    data: str | os.PathLike, layout: str = "mvtec", categories: list[str] | str | None = None
) -> list[str]:
    """The categories to run: all of ``data``'s, or the named ones after checking they exist.

    Raises DataError naming what is missing (a folder, or unknown categories and the known).
    """
    available = list_categories(data, layout)  # DataError: missing folder, wrong level, ...
    if isinstance(categories, str):
        categories = [c for c in categories.split(",") if c]
    if not categories:
        return available
    unknown = [c for c in categories if c not in available]
    if unknown:
        raise DataError(
            f"Unknown categories {unknown} for {data} ({layout} layout); the categories there "
            f"are: {', '.join(available)}. Fix --categories (comma-separated, no spaces)."
        )
    return list(dict.fromkeys(categories))  # drop repeats, keep order


def budget(
    preset: str,
    n_train: int,
    steps: int | None = None,
    epochs: float | None = None,
    **overrides,
) -> int:
    """Optimiser steps for one model with ``n_train`` training images (of all its
    categories).

    ``steps`` if given; else ``epochs`` passes over the images at the preset's
    effective batch (batch_size x grad_accum). Without either, sd15 takes DiAD's
    200 epochs and the tiny preset its own ``steps`` (see the module docstring).
    """
    fields = {k: v for k, v in overrides.items() if k != "variant"}
    cfg = make_config(preset, **fields)
    if steps is not None:
        return int(steps)
    if epochs is None and preset == "sd15":
        epochs = DIAD_EPOCHS
    if epochs is None:
        return cfg.steps
    batch = cfg.batch_size * cfg.grad_accum  # images per optimiser step
    return max(1, math.ceil(epochs * n_train / batch))


@dataclass
class Recipe:
    """How every model of a reproduction is trained and evaluated (one record, shared)."""

    preset: str = "sd15"
    variant: str = "F"
    layout: str = "mvtec"
    pretrained: str | None = None  # SD-layout folder or hub id (unet/, vae/); None: random
    steps: int | None = None  # per model; None: see budget()
    epochs: float | None = None
    seed: int = 0
    device: str = "auto"
    noise_seed: int = 0  # fixed evaluation noise
    progress: bool = True
    per_category: bool = False  # False: one multi-class model (DiAD's setting)
    overrides: dict = field(default_factory=dict)  # CCADConfig fields of new runs


def reproduce(
    data: str | os.PathLike,
    out: str | os.PathLike,
    categories: list[str] | None = None,
    layout: str = "mvtec",
    preset: str = "sd15",
    variant: str = "F",
    pretrained: str | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    seed: int = 0,
    device: str = "auto",
    noise_seed: int = 0,
    progress: bool = True,
    per_category: bool = False,
    **overrides,
) -> dict:
    """Train one model for all categories (or one per category), evaluate every category
    into ``out/<category>/``, then write the table.

    ``overrides`` set CCADConfig fields of new runs (e.g. ``image_size``). Returns the
    results dict also written to ``out/results.json`` (see :func:`summarise`).
    """
    recipe = Recipe(
        preset, variant, layout, pretrained, steps, epochs, seed, device, noise_seed, progress,
        per_category, overrides,
    )  # fmt: skip
    resolve_device(device)  # fail now, not after the first bank, when CUDA is asked but absent
    make_config(preset, variant, **overrides)  # unknown preset, variant or field: fail now
    if preset == "sd15" and pretrained is None:
        warnings.warn(
            "The sd15 preset without --pretrained trains SD v1.5's architecture from random "
            f"weights: its numbers say nothing about the paper's. Pass --pretrained {SD15_HUB_ID} "
            "(or a local folder with unet/ and vae/, e.g. $CCAD_SD_WEIGHTS).",
            stacklevel=2,
        )
    names = select_categories(data, layout, categories)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    if not per_category and not all((out / c / "metrics.json").is_file() for c in names):
        print(f"[multi-class] one model for {'+'.join(names)}", flush=True)
        train_model(data, out / MULTICLASS, "+".join(names), recipe)
    for i, category in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {category}", flush=True)
        run = out / category if per_category else out / MULTICLASS
        if per_category and not (out / category / "metrics.json").is_file():
            train_model(data, run, category, recipe)
        results[category] = evaluate_category(data, run, category, out / category, recipe)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next model starts from a clean device
    setting = {
        "data": str(data),
        "layout": layout,
        "preset": preset,
        "variant": variant,
        "pretrained": pretrained,
        "training": SETTINGS[per_category],
        "models": len(names) if per_category else 1,
    }
    results = summarise(results, setting)
    write_results(results, out)
    return results


def train_model(data: str | os.PathLike, run: Path, category: str, r: Recipe) -> None:
    """Train the model of ``category`` (several joined by ``+``: one multi-class
    model) in ``run``: new, resumed at its last checkpoint, or left alone once it
    reached its budget."""
    names = split_categories(category)
    n_train = sum(len(load_dataset(data, r.layout, c, "train")) for c in names)
    steps = budget(r.preset, n_train, r.steps, r.epochs, **r.overrides)
    train_run(
        data, category, run, variant=r.variant, preset=r.preset, layout=r.layout,
        steps=steps, pretrained=r.pretrained, resume="auto", seed=r.seed,
        progress=r.progress, device=r.device, **r.overrides,
    )  # fmt: skip


def evaluate_category(
    data: str | os.PathLike, run: Path, category: str, folder: Path, r: Recipe
) -> dict:
    """The metrics of ``run``'s model on ``category``'s test split, into
    ``folder``: ``metrics.json`` (written last: the category is done; evaluated
    again only if the model has trained on since) and ``examples.png``."""
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        _check_recipe(metrics, r, metrics_path)
        if metrics["steps"] == read_config(run).steps:  # else it trained on since
            print(f"  {category}: already evaluated ({folder}), skipped", flush=True)
            return metrics
    folder.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_run(
        run,
        data,
        category,
        r.layout,
        grid_png=folder / "examples.png",
        noise_seed=r.noise_seed,
        device=r.device,
        progress=r.progress,
    )
    metrics.update(read_config(run).extra.get("times", {}))  # the model's times
    metrics.update(setting=SETTINGS[r.per_category], run=str(run))
    write_json(metrics_path, metrics)
    return metrics


def _check_recipe(metrics: dict, recipe: Recipe, path: Path) -> None:
    """A finished category must come from the recipe's preset, variant and setting."""
    made = (metrics.get("preset"), metrics.get("variant"), metrics.get("setting"))
    wanted = (recipe.preset, recipe.variant, SETTINGS[recipe.per_category])
    if made != wanted:
        raise ValueError(
            f"{path} was made with preset {made[0]!r}, variant {made[1]!r}, setting "
            f"{made[2]!r}, not {wanted[0]!r} / {wanted[1]!r} / {wanted[2]!r}: choose "
            "another --out."
        )


def summarise(per_category: dict[str, dict], setting: dict) -> dict:
    """Per-category metrics, their mean, the reference numbers and whether they compare.

    Returns {"setting", "categories": {c: {metric: value, "steps", ...}}, "mean": {metric},
    "reference": REFERENCE, "comparable_with_paper": bool, "note": str}; every number says
    its setting (``setting["training"]``, each reference's ``"setting"``).
    """
    keep = (*METRICS, "steps", "n_test", "train_s", "eval_s")
    rows = {c: {k: m[k] for k in keep if k in m} for c, m in per_category.items()}
    mean = {k: sum(r[k] for r in rows.values()) / len(rows) for k in METRICS}
    reasons = []
    if setting["preset"] != "sd15":
        reasons.append(f"the {setting['preset']!r} preset, not sd15")
    if setting["preset"] == "sd15" and not setting.get("pretrained"):
        reasons.append("random-init SD weights (no --pretrained)")
    if set(rows) != set(MVTEC_CATEGORIES):
        reasons.append(f"{len(rows)} categories, not MVTec-AD's 15")
    training = setting["training"]
    if reasons:
        note = "NOT comparable with the paper's numbers: " + "; ".join(reasons) + "."
    elif training == SETTINGS[False]:
        note = (
            "Same data, SD v1.5 weights, budget (200 epochs) and setting as DiAD: one "
            "multi-class model for all 15 categories. The CCAD paper's setting is not "
            "stated in our sources; PatchCore's numbers are per category."
        )
    else:
        note = (
            "Same data, SD v1.5 weights and budget (200 epochs per category) as the "
            "references, but one model per category: an easier setting than DiAD's one "
            "multi-class model, so a number at DiAD's level does not confirm it."
        )
    return {
        "setting": setting,
        "categories": rows,
        "mean": mean,
        "reference": REFERENCE,
        "comparable_with_paper": not reasons,
        "note": note,
    }


def markdown_table(results: dict) -> str:
    """The results as a Markdown table (``page.markdown_table``): categories, their mean,
    then the reference rows, each with the setting its numbers come from."""
    from ccad_tutorial.page import markdown_table as table

    def row(name: str, setting: str, values: dict) -> list:
        return [name, setting, *(values.get(k, "-") for k in METRICS)]

    ours = results["setting"]["training"]
    rows = [row(c, ours, m) for c, m in results["categories"].items()]
    rows.append(row(f"**mean of {len(results['categories'])} (ours)**", ours, results["mean"]))
    rows += [row(name, ref["setting"], ref) for name, ref in results["reference"].items()]
    lines = table(["", "setting", *(METRIC_NAMES[k] for k in METRICS)], rows)
    sources = [f"- {name}: {ref['source']}" for name, ref in results["reference"].items()]
    setting = results["setting"]
    title = f"CCAD({setting['variant']}), preset {setting['preset']}, {ours}"
    return "\n".join([f"**{title}**", "", lines, "", results["note"], "", *sources]) + "\n"


def write_results(results: dict, out: Path) -> None:
    """``out/results.json`` and ``out/results.md``, atomically."""
    write_json(out / "results.json", results)
    atomic_write(out / "results.md", markdown_table(results))
