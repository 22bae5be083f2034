"""One training step of the sd15 preset (random weights) at 256 px: time and peak memory.

    python benchmarks/sd15_step.py                    # CCAD(F), bottleneck guidance, CPU
    python benchmarks/sd15_step.py --variant C --guidance full --device cuda --batch 12
    python benchmarks/sd15_step.py --gradient-checkpointing --batch 2
    python benchmarks/sd15_step.py --memory-table     # batch 1, 2, 4 x checkpointing off/on

Builds the SD v1.5-sized model (UNet 320/640/1280/1280, VAE, guidance copy, FCM) without
pretrained weights, then times encode + forward + backward + AdamW for one batch. Peak memory
is the process's peak resident set size on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
AdamW's multi-tensor ``foreach`` path is used on CUDA only: on CPU it holds a second copy of
the 880M trainable parameters' updates and needs more than 23 GB.

``--memory-table`` runs every (batch, checkpointing) pair in a fresh process, each watched
by this one and stopped as soon as its resident set passes ``--cap-gib`` (recorded as over
the cap, never a machine out of memory), and writes benchmarks/results/sd15_memory.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ccad_tutorial.model import CCAD
from ccad_tutorial.presets import make_config
from ccad_tutorial.runs import write_json

RESULT = Path(__file__).parent / "results" / "sd15_memory.json"


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def rss_gib(pid: int | str = "self") -> float:
    """The current resident set of a process (Linux /proc), in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def one_step(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    start = time.perf_counter()
    cfg = make_config(
        "sd15", args.variant, guidance=args.guidance, score_mode="l1", score_pretrained=False,
        gradient_checkpointing=args.gradient_checkpointing,
    )  # fmt: skip
    torch.manual_seed(0)
    model = CCAD(cfg, torch.randn(12, 1536)).to(device)
    build_s = time.perf_counter() - start
    built_gib = rss_gib() if device.type == "cpu" else peak_gib(device)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    optimizer = torch.optim.AdamW(
        model.trainable_parameters(), lr=1e-4, foreach=device.type == "cuda"
    )
    images = torch.rand(args.batch, 3, 256, 256, device=device)
    generator = torch.Generator(device).manual_seed(0)
    start = time.perf_counter()
    latents = model.encode(images)
    loss = model.loss(latents, images, generator=generator)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    step_s = time.perf_counter() - start
    return {
        "variant": args.variant,
        "guidance": args.guidance,
        "gradient_checkpointing": args.gradient_checkpointing,
        "device": str(device),
        "batch": args.batch,
        "params_m": round(params / 1e6),
        "trainable_m": round(trainable / 1e6),
        "build_s": round(build_s, 1),
        "step_s": round(step_s, 2),
        "images_per_s": round(args.batch / step_s, 3),
        "built_gib": round(built_gib, 2),
        "peak_gib": round(peak_gib(device), 2),
        "step_gib": round(peak_gib(device) - built_gib, 2),
        "latent_shape": list(latents.shape),
    }


def watched(command: list[str], cap_gib: float) -> dict:
    """Run command, killing it when its resident set passes cap_gib; its JSON or over_cap."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    highest = 0.0
    while proc.poll() is None:
        try:
            highest = max(highest, rss_gib(proc.pid))
        except (FileNotFoundError, ProcessLookupError):
            break
        if highest > cap_gib:
            proc.kill()
            proc.wait()
            return {"over_cap": True, "stopped_at_gib": round(highest, 2)}
        time.sleep(0.1)
    out, _ = proc.communicate()
    if proc.returncode != 0:
        return {"failed": proc.returncode}
    return {"over_cap": False, **json.loads(out)}


def memory_table(args: argparse.Namespace) -> dict:
    rows = []
    for checkpointing in (False, True):
        for batch in (1, 2, 4):
            command = [sys.executable, __file__, "--batch", str(batch), "--variant", args.variant,
                       "--guidance", args.guidance]  # fmt: skip
            command += ["--gradient-checkpointing"] if checkpointing else []
            row = {"batch": batch, "gradient_checkpointing": checkpointing}
            row.update(watched(command, args.cap_gib))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {
        "what": "one sd15 training step (random weights, 256 px, float32, CPU), peak RSS",
        "variant": args.variant,
        "guidance": args.guidance,
        "cap_gib": args.cap_gib,
        "rows": rows,
        "command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python "
        f"benchmarks/sd15_step.py --memory-table --cap-gib {args.cap_gib:g}",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "torch": torch.__version__,
        },
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="F", choices=("V", "C", "F", "uncond"))
    parser.add_argument("--guidance", default="bottleneck", choices=("none", "bottleneck", "full"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--memory-table", action="store_true", help=f"write {RESULT.name}")
    parser.add_argument("--cap-gib", type=float, default=18.0, help="memory cap per run")
    args = parser.parse_args()
    if not args.memory_table:
        print(json.dumps(one_step(args), indent=2))
        return
    result = memory_table(args)
    write_json(RESULT, {"sd15_memory": result})
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
