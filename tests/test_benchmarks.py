"""Every benchmark script runs end to end on tiny settings (``--quick``) and writes its key.

The published numbers come from the full runs (``make bench``); this only proves the scripts
work, share their cached cells, and write what the book reads.
"""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = (
    "minitex_table", "convergence", "condition_swap", "inference_ablation", "xi_ablation",
    "condition_at_work",
)  # fmt: skip


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_every_benchmark_runs_quick_and_writes_its_key(tmp_path):
    payloads = {}
    for name in SCRIPTS:  # in make bench's order: later scripts reuse earlier cells
        payloads[name] = load(name).main(["--quick", "--root", str(tmp_path)])
        written = json.loads((tmp_path / "quick" / f"{name}.json").read_text())
        assert list(written) == [name]
    table = payloads["minitex_table"]
    methods = {row["method"] for row in table["rows"]}
    assert methods == {"F", "uncond", "patchcore", "mean-normal"}
    assert all(0 <= row["image_auroc"] <= 1 for row in table["rows"])
    conv = payloads["convergence"]
    assert [s for s, _ in conv["curves"]["F"]["image_auroc"]] == [3, 6]
    # convergence reused minitex_table's F run (trained once, with its checkpoint row)
    f_runs = [p for p in (tmp_path / "quick").glob("F_brick_*") if "num_queries" not in p.name]
    assert len(f_runs) == 1 and (f_runs[0] / "row_step3.json").is_file()
    assert_steps_ratio_fits_the_curves(conv["steps_ratio_conditioned_over_uncond"], conv["curves"])
    swap = payloads["condition_swap"]["summary"]["F"]
    for bank in ("shuffled", "zeros", "other"):
        # every swapped bank reaches the model: its reconstructions move (same weights, noise)
        assert swap[f"{bank}_recon_change"] > 0, bank
        # the drop is real minus swapped AUROC; its mean is the difference of the means
        drop = swap["real_image_auroc"] - swap[f"{bank}_image_auroc"]
        assert swap[f"{bank}_drop"] == pytest.approx(drop, abs=1e-12)
        assert swap[f"{bank}_abs_drop"] >= abs(drop) - 1e-12
    inference = payloads["inference_ablation"]
    assert {e["t_start"] for e in inference["table"]} == {100, 400}
    assert {e["scorer"] for e in inference["scoring"]} >= {"pixel L1", "feature layers 1-3"}
    xi = payloads["xi_ablation"]
    assert {e["value"] for e in xi["table"]} == {"4", "64"}
    work = payloads["condition_at_work"]
    unified = [p.name for p in (tmp_path / "quick").glob("*_brick+grass_*") if p.is_dir()]
    assert len(unified) == 4  # one model each: uncond, F with category / retrieved / shared bank
    # every conditioned model at w = 0 (its unconditioned twin) and w = 1, the chosen one at all w
    ws = {(e["model"], e["w"]) for e in work["table"]}
    best = work["choice"]["model"]
    assert {(best, w) for w in work["w_sweep"]} <= ws
    assert all(
        (m, 0.0) in ws and (m, 1.0) in ws for m in work["models"] if m.startswith("unified-F")
    )
    # the choice was made on the validation split: it is the best validation entry
    top = max(work["choice"]["table"], key=lambda e: e["image_auroc"])
    assert top["image_auroc"] == work["choice"]["validation_image_auroc"]
    kinds = {e["defect"] for e in work["per_defect"]}
    assert kinds == {"scratch", "hole", "stain", "cutpaste"}  # never the validation's smudge
    for g in work["generation"]:
        assert sum(map(sum, g["confusion"])) == 2 * 2  # 2 banks x 2 samples
        if g["model"] == "unified-uncond" or g["w"] == 0.0:
            assert g["accuracy"] == pytest.approx(g["chance"])  # no condition: chance exactly
    paths = {(e["model"], e["pipeline"]) for e in work["before_after"]["table"]}
    uncond = ("unified-uncond", "per-category-uncond")
    assert paths == {(m, p) for m in uncond for p in work["before_after"]["pipelines"]}
    assert {r["category"] for r in work["swap"]} == {"brick", "grass"}
    # the per-category models are minitex_table's cells, not retrained
    assert len([p for p in (tmp_path / "quick").glob("uncond_brick_*")]) == 1


def reach_bounds(points: list, target: float) -> tuple[float, float] | None:
    """Bounds on the step at which a curve first reaches ``target``: the first checkpoint at
    or above it, and the checkpoint before (the crossing lies in between); None: never."""
    for i, (step, value) in enumerate(points):
        if value >= target:
            return (points[i - 1][0] if i else step), step
    return None


def assert_steps_ratio_fits_the_curves(ratio: float | None, curves: dict) -> None:
    """The convergence ratio (steps F needs / steps uncond needs to reach uncond's final mean
    image AUROC) lies within what the checkpoints of the two curves allow."""
    target = curves["uncond"]["image_auroc"][-1][1]
    f, u = (reach_bounds(curves[v]["image_auroc"], target) for v in ("F", "uncond"))
    assert u is not None  # a curve reaches its own last value
    if f is None:
        assert ratio is None
    else:
        assert ratio is not None and f[0] / u[1] - 1e-9 <= ratio <= f[1] / u[0] + 1e-9


def test_steps_ratio_bounds_follow_the_checkpoints():
    uncond = [(100, 0.60), (200, 0.70)]  # reaches its final 0.70 at step 200
    curves = {"uncond": {"image_auroc": uncond}, "F": {"image_auroc": [(100, 0.72), (200, 0.8)]}}
    assert_steps_ratio_fits_the_curves(0.5, curves)  # F: at 100, uncond: between 100 and 200
    for wrong in (None, 2.0, 0.4):
        with pytest.raises(AssertionError):
            assert_steps_ratio_fits_the_curves(wrong, curves)
    curves["F"]["image_auroc"] = [(100, 0.50), (200, 0.69)]  # F never gets there
    assert_steps_ratio_fits_the_curves(None, curves)
    with pytest.raises(AssertionError):
        assert_steps_ratio_fits_the_curves(1.0, curves)


def test_steps_to_reach_interpolates_between_checkpoints():
    steps_to_reach = load("convergence").steps_to_reach
    assert steps_to_reach([(100, 0.5), (200, 0.7)], 0.6) == pytest.approx(150)
    assert steps_to_reach([(100, 0.8), (200, 0.7)], 0.6) == 100  # reached at the first
    assert steps_to_reach([(100, 0.5), (200, 0.55)], 0.6) is None  # never reached


@pytest.mark.slow
def test_gpu_check_runs_quick_on_the_cpu_and_never_touches_the_published_json(tmp_path):
    import os
    import subprocess
    import sys

    published = BENCH / "results" / "gpu.json"
    before = published.read_bytes() if published.exists() else None
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_QUICK": "1"}
    env.update(CUDA_VISIBLE_DEVICES="", NVIDIA_SMI="no-such-nvidia-smi", OMP_NUM_THREADS="1")
    args = ["bash", str(BENCH / "gpu_check.sh"), "--root", str(tmp_path)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "gpu.json").read_text())["gpu"]
    assert result["quick"] and result["command"].startswith("bash benchmarks/gpu_check.sh")
    step = result["sd15_step"]
    assert step["step_s"] > 0 and step["flops_per_step"] > 0
    assert step["mfu"] is None  # no peak figure for a CPU
    assert result["mvtec_recipe"]["steps"] == load("gpu_check").reproduce.budget("sd15", 3629)
    unified = result["unified_tiny"]
    assert unified["setting"] == "multi-class" and unified["steps"] == 10 * 2
    assert all(0 <= v <= 1 for v in unified["mean"].values())
    assert (published.read_bytes() if published.exists() else None) == before


def test_gpu_check_finds_the_peak_flops_of_a_device_by_its_name():
    peak = load("gpu_check").peak_tflops
    assert peak("NVIDIA H100 80GB HBM3") == 989.0 and peak("NVIDIA H100 PCIe") == 756.0
    assert peak("NVIDIA A100-SXM4-40GB") == 312.0 and peak("Tesla T4") == 65.0
    assert peak("NVIDIA L4") == 121.0 and peak("NVIDIA A10G") == 70.0
    assert peak("Some CPU") is None
