"""What one GPU does with CCAD: the sd15 training step and its model FLOPs utilisation, and
one multi-class tiny-preset run at 10x the CPU budget. Run through ``gpu_check.sh``.

    bash benchmarks/gpu_check.sh                  # on a GPU: benchmarks/results/gpu.json
    bash benchmarks/gpu_check.sh --quick           # anywhere, in seconds: a temporary folder

What is measured
----------------
* ``sd15_step``: one optimiser step of the sd15 preset as ``train.fit`` takes it: CCAD(F)
  with random weights (the time does not depend on them), bottleneck guidance, 256 px,
  ``grad_accum`` micro-batches of ``batch_size`` images on latents encoded beforehand (fit
  encodes the training set once), each under the preset's autocast (bf16 on CUDA), then
  AdamW. ``step_s`` is the median of ``--repeat`` steps after ``--warmup`` steps.
* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` counts the matrix products and
  convolutions (attention included) of one such step, forward and backward; the
  elementwise rest (norms, activations, AdamW) is not counted, as in the usual MFU.
  ``mfu`` = FLOPs / ``step_s`` / the GPU's peak dense bf16 FLOPs from ``PEAK_TFLOPS``.
* ``mvtec_recipe``: the hours of the MVTec-AD recipe's training at that step time:
  ``reproduce.budget("sd15", 3629)`` steps x ``step_s`` (evaluation not included).
* ``unified_tiny``: ``reproduce.reproduce`` in its default multi-class setting, the tiny
  preset on MiniTex-AD's categories, one model trained for 10x the tiny preset's CPU
  budget (its ``steps``), then evaluated per category.

``--quick`` shrinks everything (narrow SD-layout model at 64 px, a toy tiny preset at 32 px,
a few steps) so the script is tested on a CPU; it then writes to a temporary folder unless
``--out`` says where: results/gpu.json only ever holds a GPU's full-size figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ccad_tutorial import reproduce
from ccad_tutorial.accel import autocast_dtype, step_generator
from ccad_tutorial.experiments import write_result
from ccad_tutorial.minitex import ensure_minitex, make_minitex
from ccad_tutorial.model import CCAD
from ccad_tutorial.normal_images import CATEGORIES
from ccad_tutorial.presets import make_config
from ccad_tutorial.standins import NARROW_UNET, NARROW_VAE

RESULT = Path(__file__).resolve().parent / "results" / "gpu.json"
# Peak dense (no sparsity) bf16 tensor-core TFLOPs, from NVIDIA's datasheets; the first
# name found in torch.cuda.get_device_name() counts. T4 has no bf16: its fp16 figure.
PEAK_TFLOPS = {
    "H200": 989.0,  # H200 SXM datasheet: 1,979 with sparsity
    "H100 PCIe": 756.0,  # H100 PCIe datasheet: 1,513 with sparsity
    "H100": 989.0,  # H100 SXM datasheet: 1,979 with sparsity
    "A100": 312.0,  # A100 datasheet (SXM and PCIe)
    "L40S": 362.0,  # L40S datasheet: 733 with sparsity
    "L4": 121.0,  # L4 datasheet: 242 with sparsity
    "A10G": 70.0,  # AWS: A10G (g5 instances), about half of the A10's 125
    "A10": 125.0,  # A10 datasheet: 250 with sparsity
    "T4": 65.0,  # T4 datasheet: fp16 (no bf16 on Turing)
}
PEAK_SOURCE = "NVIDIA datasheets, dense bf16 tensor-core peak (fp16 for T4), no sparsity"
# --quick: the smallest settings that still run every line (seconds on a CPU)
QUICK_SD15 = dict(image_size=64, batch_size=2, grad_accum=1, vae_block_out_channels=NARROW_VAE,
                 block_out_channels=NARROW_UNET)  # fmt: skip
QUICK_UNIFIED = dict(
    image_size=32, crop_size=16, batch_size=4, vae_steps=2, num_queries=8, ddim_steps=2,
    block_out_channels=(16, 32, 32), norm_num_groups=8, cross_attention_dim=32,
    vae_block_out_channels=(16, 16, 16), score_mode="l1",
)  # fmt: skip
QUICK_DATA = dict(size=64, n_train=6, n_test_good=2, n_test_defect_per_type=1)


def peak_tflops(name: str) -> float | None:
    """The peak of ``PEAK_TFLOPS`` whose key is in the device name (None: not listed)."""
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def sd15_step(device: torch.device, quick: bool, warmup: int, repeat: int) -> dict:
    """Time and FLOPs of one sd15 optimiser step (see the module docstring)."""
    fields = dict(score_mode="l1", score_pretrained=False, **(QUICK_SD15 if quick else {}))
    cfg = make_config("sd15", "F", **fields)
    torch.manual_seed(0)
    model = CCAD(cfg, torch.randn(12, 1536)).to(device)
    model.train()
    model.freeze()
    opt = torch.optim.AdamW(model.trainable_parameters(), cfg.lr, foreach=device.type == "cuda")
    images = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    latents = model.encode(images)
    dtype = autocast_dtype(cfg.mixed_precision, device)

    def step(k: int) -> None:
        opt.zero_grad(set_to_none=True)
        for _ in range(cfg.grad_accum):  # as train.fit: accumulate, then one update
            with torch.autocast(device.type, dtype, enabled=dtype is not None):
                loss = model.loss(latents, images, step_generator(0, k)) / cfg.grad_accum
            loss.backward()
        opt.step()

    times = []
    for k in range(warmup + repeat):
        _sync(device)
        start = time.perf_counter()
        step(k)
        _sync(device)
        times.append(time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:
        step(warmup + repeat)
    flops = counter.get_total_flops()
    step_s = statistics.median(times[warmup:])
    name = _device_name(device)
    peak = peak_tflops(name) if device.type == "cuda" else None
    return {
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "image_size": cfg.image_size,
        "autocast": str(dtype).replace("torch.", "") if dtype else "float32",
        "trainable_m": round(sum(p.numel() for p in model.trainable_parameters()) / 1e6),
        "step_s": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "images_per_s": round(cfg.batch_size * cfg.grad_accum / step_s, 2),
        "flops_per_step": flops,
        "achieved_tflops": round(flops / step_s / 1e12, 2),
        "peak_tflops": peak,
        "peak_source": PEAK_SOURCE if peak else "device not in PEAK_TFLOPS",
        "mfu": round(flops / step_s / (peak * 1e12), 4) if peak else None,
        "peak_memory_gib": _peak_gib(device),
    }


def unified_tiny(device: torch.device, quick: bool, root: Path, steps: int | None) -> dict:
    """The default multi-class reproduction, tiny preset, MiniTex-AD: one model, 10x budget."""
    overrides = QUICK_UNIFIED if quick else {}
    cpu_budget = 2 if quick else make_config("tiny", "F").steps
    steps = steps or 10 * cpu_budget
    categories = list(CATEGORIES[:2] if quick else CATEGORIES)
    start = time.perf_counter()
    data = ensure_minitex()
    if quick:  # a few images: the test split's evaluation is most of a CPU run
        data = make_minitex(root / "minitex", categories=categories, **QUICK_DATA)
    results = reproduce.reproduce(
        data, root / "unified_tiny", categories, preset="tiny", steps=steps,
        device=str(device), progress=False, **overrides,
    )  # fmt: skip
    wall_s = time.perf_counter() - start
    train_s = next(iter(results["categories"].values()))["train_s"]
    return {
        "setting": results["setting"]["training"],
        "categories": categories,
        "cpu_budget_steps": cpu_budget,
        "steps": steps,
        "train_s": train_s,
        "ms_per_step": round(1000 * train_s / steps, 1),
        "wall_s": round(wall_s, 1),
        "mean": results["mean"],
        "per_category": results["categories"],
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrink everything (a CPU test)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if any), cuda, cpu")
    parser.add_argument("--out", default=None, help="JSON path (default: see docstring)")
    parser.add_argument("--root", default=None, help="folder of the runs (default: temporary)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (3; quick 1)")
    parser.add_argument("--repeat", type=int, default=None, help="timed steps (10; quick 1)")
    parser.add_argument("--unified-steps", type=int, default=None, help="default: 10x CPU's")
    parser.add_argument("--command", default=None, help="the command line, for the record")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device(("cuda" if cuda else "cpu") if args.device == "auto" else args.device)
    publish = device.type == "cuda" and not args.quick
    root = Path(args.root or tempfile.mkdtemp(prefix="gpu-check-"))
    out = Path(args.out) if args.out else RESULT if publish else root / "gpu.json"
    payload = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
        "command": args.command or " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 10)
    payload["sd15_step"] = step = sd15_step(device, args.quick, warmup, repeat)
    steps = reproduce.budget("sd15", sum(reproduce.MVTEC_TRAIN_IMAGES.values()))
    payload["mvtec_recipe"] = {
        "steps": steps,
        "train_hours": round(steps * step["step_s"] / 3600, 2),
        "formula": "reproduce.budget('sd15', 3629) x sd15_step.step_s / 3600",
    }
    write_result(out, "gpu", payload)  # the sd15 figures first: kept if the rest fails
    print(json.dumps({k: payload[k] for k in ("device", "sd15_step", "mvtec_recipe")}, indent=2))
    payload["unified_tiny"] = unified_tiny(device, args.quick, root, args.unified_steps)
    write_result(out, "gpu", payload)
    print(json.dumps(payload["unified_tiny"]["mean"], indent=2))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
