"""The benchmark results the book publishes (``benchmarks/results/*.json``), for the chapters.

The benchmark scripts write one JSON object per script, ``{name: payload}``. The chapters
read them with ``load_benchmark(name)``, which looks, in order, in

1. ``$CCAD_RESULTS`` (a folder), if set;
2. ``benchmarks/results`` of the source tree this package was imported from (a clone, or an
   editable install: the book build and CI);
3. the same file on the project's repository (raw GitHub URL), only if ``download=True``
   (Colab, where the package is pip-installed without the benchmarks).

``generation_summary`` condenses the positive control of ``condition_at_work`` (chapter 5).
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

NAMES = (
    "minitex_table",
    "convergence",
    "xi_ablation",
    "coreset_speed",
    "inference_ablation",
    "condition_swap",
    "condition_at_work",
    "sd15_memory",
)
RAW_URL = "https://raw.githubusercontent.com/ccad-tutorial/ccad-tutorial/main/benchmarks/results"
SOURCE_RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def results_dirs() -> list[Path]:
    """The folders searched for result files, in order."""
    dirs = [Path(os.environ["CCAD_RESULTS"])] if os.environ.get("CCAD_RESULTS") else []
    return dirs + [SOURCE_RESULTS]


def load_benchmark(name: str, download: bool = False) -> dict:
    """The payload of ``benchmarks/results/<name>.json`` (the value under its top-level key)."""
    if name not in NAMES:
        raise ValueError(f"Unknown benchmark {name!r}; the published ones are {NAMES}.")
    for folder in results_dirs():
        path = folder / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())[name]
    if download:
        with urllib.request.urlopen(f"{RAW_URL}/{name}.json", timeout=30) as response:
            return json.loads(response.read())[name]
    searched = ", ".join(str(d) for d in results_dirs())
    raise FileNotFoundError(
        f"benchmarks/results/{name}.json not found (searched {searched}). Run "
        f"`python benchmarks/{name}.py` in a clone of the repository, set CCAD_RESULTS to a "
        "folder holding it, or pass download=True to fetch the published file."
    )


def load_result_file(filename: str, download: bool = False) -> bytes:
    """The bytes of another published file of ``benchmarks/results/`` (e.g. a figure a
    benchmark wrote next to its JSON, named in its payload), searched like ``load_benchmark``."""
    if "/" in filename or "\\" in filename or filename.startswith("."):
        raise ValueError(f"{filename!r}: a plain file name inside benchmarks/results is expected.")
    for folder in results_dirs():
        path = folder / filename
        if path.is_file():
            return path.read_bytes()
    if download:
        with urllib.request.urlopen(f"{RAW_URL}/{filename}", timeout=30) as response:
            return response.read()
    searched = ", ".join(str(d) for d in results_dirs())
    raise FileNotFoundError(
        f"benchmarks/results/{filename} not found (searched {searched}); pass download=True to "
        "fetch the published file."
    )


def generation_summary(work: dict) -> dict[tuple[str, float], dict]:
    """The positive control of the ``condition_at_work`` benchmark, per (model, w).

    {(model, w): {"accuracy": mean over seeds of the share of samples named after the
    bank they were given, "follows": mean over seeds of swap["moved"] (the sample follows
    a change of bank), "chance", "seeds", "unconditioned": bool}}, in the benchmark's
    model order, then by w.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for g in work["generation"]:
        groups.setdefault((g["model"], g["w"]), []).append(g)
    order = list(work["models"])
    summary = {}
    for key in sorted(groups, key=lambda k: (order.index(k[0]), k[1])):
        runs = groups[key]
        summary[key] = {
            "accuracy": sum(g["accuracy"] for g in runs) / len(runs),
            "follows": sum(g["swap"]["moved"] for g in runs) / len(runs),
            "chance": runs[0]["chance"],
            "seeds": len(runs),
            "unconditioned": work["models"][key[0]]["variant"] == "uncond",
        }
    return summary
