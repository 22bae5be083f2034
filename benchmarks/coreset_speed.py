"""Speed, memory and quality of our greedy k-center coreset against anomalib's KCenterGreedy.

    python benchmarks/coreset_speed.py --anomalib-path DIR                 # N = 50k and 220k
    python benchmarks/coreset_speed.py --sizes 50000 --methods ours       # one size, ours only
    python benchmarks/coreset_speed.py --quick                            # smoke run (seconds)

What is compared (read this before quoting the numbers)
-------------------------------------------------------
* Data: a seeded Gaussian mixture ("clustered features", 64 clusters) of N x 1536 float32
  vectors, the size of layer-2+3 patch features of wide_resnet50_2 (a full MVTec-AD category
  with patch pooling has ~220,000 of them). Every method keeps M = int(0.1 * N) points.
* ``ours``: ``ccad_tutorial.coreset.greedy_coreset_with_radius(features, n=M,
  projection_dim=128)``, end to end (Gaussian projection + selection). Its greedy loop runs
  single-threaded on CPU (see ``ccad_tutorial.coreset``).
* ``anomalib``: anomalib's own ``KCenterGreedy``, end to end (its SparseRandomProjection +
  selection), with one setting changed: the projection size. By default anomalib picks the
  Johnson-Lindenstrauss size for eps=0.9 (~267 dims at N = 50k); we make the projector's
  ``_johnson_lindenstrauss_min_dim`` return 128 on the instance, so both methods measure
  distances in 128 dims (the same work per step). ``anomalib_default`` keeps anomalib's size.
  ``anomalib`` runs with torch's default threads (2 here), ``anomalib_1thread`` with
  torch.set_num_threads(1): neither side gains from the thread setting; quote the speed-up
  against the faster of the two.
* The anomalib code is its own, unmodified: its package ``__init__`` imports Lightning and
  much more, so instead of importing the package we load exactly two files of the installed
  anomalib with importlib -- ``models/components/dimensionality_reduction/random_projection.py``
  (SparseRandomProjection) and ``models/components/sampling/k_center_greedy.py``
  (KCenterGreedy) -- after registering the first under the module name the second imports it
  from. Nothing is stubbed; only its tqdm progress bar is replaced by a pass-through.
  anomalib is NOT a dependency of ccad_tutorial: install it for this script only, e.g.
  ``pip install --no-deps --target /tmp/anomalib_site anomalib`` and pass
  ``--anomalib-path /tmp/anomalib_site``. Without it the anomalib rows are skipped.
* Each (method, N) runs in a fresh subprocess. Time: wall clock of the selection call, the
  fastest of ``--repeat`` runs. Peak memory: the kernel's peak resident set size (VmHWM, reset
  through /proc/self/clear_refs just before the call) minus the resident size before it: the
  extra memory the sampler needs beyond the features, for the first call in a fresh process,
  allocator included (one-time BLAS buffers, ~20 MB, too). anomalib allocates an (N, k) and
  a few (N,) temporaries per step; glibc serves those below its dynamic mmap threshold from
  the heap, where the small tensors kept between steps fragment it, so its resident size can
  grow with the number of steps (at N = 50k with 2 threads it reached ~1 GB; after a warm-up
  run that raised the threshold it grew without bound and was OOM-killed). That is why there
  is no warm-up run. ``--mmap-threshold 1000000 --label=-mmap`` measures again with every
  allocation above 1 MB mmap-ed and returned on free (live memory only; page faults cost
  time). Each worker's address space is capped (``--memory-cap-gb``) so a runaway fails
  instead of waking the OOM killer on a shared machine.
* Quality: the covering radius max_i min_j ||x_i - c_j|| of each selection in the ORIGINAL
  1536-d space, computed the same way for all (``ccad_tutorial.coreset.covering_radius``,
  chunked cdist; not timed).
* Physical bound: each greedy step must read the projected (N, k) matrix once, so
  M x (time of one matrix-vector product over it) is the floor for any exact greedy
  k-center implementation of this kind. The pass is timed 30 times with 1 thread and with all
  threads; the fastest counts. We report ours / bound (ours also pays for the projection, two
  extra rows in its table, and a min and an argmax over N per step).

The machine may be shared with other jobs: timings carry that noise.
Writes ``benchmarks/results/coreset_speed.json`` as ``{"coreset_speed": {...}}``, merging with
the results of earlier runs (keys ``<method><label>@<N>``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "coreset_speed.json"


def clustered_features(num: int, dim: int, seed: int = 0, clusters: int = 64) -> torch.Tensor:
    """(N, D) float32 Gaussian mixture, built in place chunk by chunk (no big temporaries)."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, dim, generator=generator) * 2.0  # (C, D)
    spreads = torch.rand(clusters, 1, generator=generator) * 0.9 + 0.1  # (C, 1) cluster widths
    labels = torch.randint(clusters, (num,), generator=generator)  # (N,)
    features = torch.empty(num, dim)
    for start in range(0, num, 8192):
        block, lab = features[start : start + 8192], labels[start : start + 8192]
        block.normal_(generator=generator).mul_(spreads[lab]).add_(centers[lab])
    return features


def load_anomalib_kcenter(anomalib_path: str | None):
    """anomalib's KCenterGreedy class from its own source file, without importing the package."""
    if anomalib_path:
        sys.path.insert(0, anomalib_path)
    spec = importlib.util.find_spec("anomalib")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "models" / "components"

    def load(name: str, path: Path) -> types.ModuleType:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module

    projection = load(
        "anomalib.models.components.dimensionality_reduction",
        root / "dimensionality_reduction" / "random_projection.py",
    )
    assert hasattr(projection, "SparseRandomProjection")
    module = load("anomalib_k_center_greedy", root / "sampling" / "k_center_greedy.py")
    module.tqdm = lambda iterable, **_: iterable  # no progress bar (its only non-algorithm line)
    return module.KCenterGreedy


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure(call) -> tuple[object, float, int]:
    """Run ``call()``; return (result, seconds, peak extra resident bytes)."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    before = _rss_bytes("VmRSS")
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, seconds, _rss_bytes("VmHWM") - before


def matvec_seconds(features: torch.Tensor, projection_dim: int, repeats: int = 30) -> float:
    """Time of one matrix-vector product over the projected (N, k) matrix.

    The fastest of ``repeats`` runs, with 1 thread and with all threads.
    """
    from ccad_tutorial.coreset import random_projection

    points = random_projection(features, projection_dim)  # (N, k), column-major like ours
    vector, out = torch.randn(points.shape[1]), torch.empty(points.shape[0])
    threads, best = torch.get_num_threads(), float("inf")
    for count in sorted({1, threads}):
        torch.set_num_threads(count)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mv(points, vector, out=out)
            times.append(time.perf_counter() - start)
        best = min(best, *times)
    torch.set_num_threads(threads)
    return best


def select_once(
    args: argparse.Namespace, features: torch.Tensor, m: int
) -> tuple[object, float, int, dict]:
    """One selection of M points by ``args.worker``: (indices, seconds, peak extra bytes, info)."""
    from ccad_tutorial.coreset import greedy_coreset_with_radius

    if args.worker == "ours":
        result, seconds, extra = measure(
            lambda: greedy_coreset_with_radius(
                features, n=m, projection_dim=args.projection_dim, seed=args.seed
            )
        )
        return result.indices, seconds, extra, {"radius_projected": result.radius}
    kcenter = load_anomalib_kcenter(args.anomalib_path)
    torch.manual_seed(args.seed)  # anomalib draws its start point and projection from these
    np.random.seed(args.seed)
    sampler = kcenter(embedding=features, sampling_ratio=m / features.shape[0] + 1e-12)
    if args.worker != "anomalib_default":  # same projection size as ours (module docstring)
        sampler.model._johnson_lindenstrauss_min_dim = lambda n_samples, eps: args.projection_dim
    selected, seconds, extra = measure(sampler.select_coreset_idxs)
    return (
        torch.as_tensor(selected),
        seconds,
        extra,
        {"projection_dim_used": int(sampler.features.shape[1])},
    )


def worker(args: argparse.Namespace) -> dict:
    """One (method, N) measurement, in its own process: the fastest of ``--repeat`` runs."""
    from ccad_tutorial.coreset import covering_radius

    cap = int(args.memory_cap_gb * 2**30)  # a runaway worker fails instead of OOM-killing others
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if args.worker == "anomalib_1thread":
        torch.set_num_threads(1)  # the setting our greedy loop uses (see ccad_tutorial.coreset)
    features = clustered_features(args.num, args.dim, seed=args.seed)
    m = int(args.num * args.ratio)  # anomalib's rule for the coreset size
    row = {
        "method": args.worker,
        "N": args.num,
        "D": args.dim,
        "M": m,
        "threads": torch.get_num_threads(),
    }
    times, peaks = [], []
    for _ in range(args.repeat):
        indices, seconds, extra, info = select_once(args, features, m)
        times.append(seconds)
        peaks.append(extra)
    row.update(
        info,
        time_s=min(times),
        times_s=times,
        peak_extra_mb=peaks[0] / 2**20,  # the first call, in a fresh process
        peaks_extra_mb=[peak / 2**20 for peak in peaks],
        projected_mb=args.num * args.projection_dim * 4 / 2**20,
    )
    if args.worker == "ours":
        row["matvec_s"] = matvec_seconds(features, args.projection_dim)
        row["bound_s"] = row["matvec_s"] * m
    row["unique_indices"] = int(torch.unique(indices).numel())
    row["radius_original"] = covering_radius(features, indices)
    return row


def run_worker(method: str, num: int, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--num",
        str(num),
        "--dim",
        str(args.dim),
        "--ratio",
        str(args.ratio),
        "--projection-dim",
        str(args.projection_dim),
        "--seed",
        str(args.seed),
        "--repeat",
        str(args.repeat),
    ]
    if args.anomalib_path:
        command += ["--anomalib-path", args.anomalib_path]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command += ["--memory-cap-gb", str(args.memory_cap_gb)]
    if (
        args.mmap_threshold
    ):  # glibc: every allocation above this size is mmap-ed and returned on free
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["killed"])[-1][:300]
        print(f"[{method} N={num}] failed: {reason}", file=sys.stderr)
        return {"method": method, "N": num, "failed": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    print(
        f"{'method':18s} {'N':>8s} {'M':>6s} {'time s':>9s} {'peak extra MB':>14s} {'radius':>9s}  notes"
    )
    for row in rows:
        if "failed" in row:
            print(f"{row['method']:18s} {row['N']:8d}  failed: {row['failed']}")
            continue
        notes = (
            f"bound {row['bound_s']:.1f} s, ours/bound {row['time_s'] / row['bound_s']:.2f}"
            if "bound_s" in row
            else ""
        )
        print(
            f"{row['method']:18s} {row['N']:8d} {row['M']:6d} {row['time_s']:9.1f} "
            f"{row['peak_extra_mb']:14.1f} {row['radius_original']:9.3f}  {notes}"
        )


def summarize(runs: dict) -> dict:
    """Per run key of ours: speed-up and radius ratio against every anomalib run of the same N."""
    summary = {}
    for key, ours in runs.items():
        if not key.startswith("ours") or "failed" in ours:
            continue
        label, num = key[len("ours") :].split("@")
        entry = {"ours_over_bound": ours["time_s"] / ours["bound_s"]}
        for other_key, other in runs.items():
            if (
                other_key.startswith("anomalib")
                and other_key.endswith(f"{label}@{num}")
                and "failed" not in other
            ):
                name = other_key.split("@")[0]
                entry[f"speedup_vs_{name}"] = other["time_s"] / ours["time_s"]
                entry[f"radius_ratio_vs_{name}"] = (
                    ours["radius_original"] / other["radius_original"]
                )
        summary[key] = entry
    return summary


def save(rows: list[dict], args: argparse.Namespace) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"coreset_speed": {}}
    section = data.setdefault("coreset_speed", {})
    section.setdefault("runs", {}).update(
        {f"{row['method']}{args.label}@{row['N']}": row for row in rows}
    )
    section["settings"] = {
        "D": args.dim,
        "ratio": args.ratio,
        "projection_dim": args.projection_dim,
        "seed": args.seed,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
    }
    section["summary"] = summarize(section["runs"])
    from ccad_tutorial.runs import write_json

    write_json(RESULTS, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 220_000])
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest counts")
    parser.add_argument("--quick", action="store_true", help="N = 5,000, D = 256: a smoke run")
    parser.add_argument("--anomalib-path", default=os.environ.get("ANOMALIB_PATH"))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["ours", "anomalib", "anomalib_1thread"],
        choices=["ours", "anomalib", "anomalib_1thread", "anomalib_default"],
    )
    parser.add_argument(
        "--mmap-threshold", type=int, help="set glibc's MALLOC_MMAP_THRESHOLD_ (bytes)"
    )
    parser.add_argument(
        "--memory-cap-gb", type=float, default=12.0, help="address-space cap per worker"
    )
    parser.add_argument("--label", default="", help="suffix for the result keys, e.g. -mmap")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--num", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.quick:
        args.sizes, args.dim = [5_000], 256
    methods = args.methods
    if any(m != "ours" for m in methods) and load_anomalib_kcenter(args.anomalib_path) is None:
        print(
            "anomalib is not importable: skipping it (pip install --no-deps --target DIR anomalib, "
            "then --anomalib-path DIR)."
        )
        methods = [m for m in methods if m == "ours"]
    rows = []
    for num in args.sizes:
        for method in methods:
            row = run_worker(method, num, args)
            rows.append(row)
            print_table([row])
    print()
    print_table(rows)
    if not args.quick:
        save(rows, args)


if __name__ == "__main__":
    main()
