"""One training step of the sd15 preset (random weights) at 256 px: time and peak memory.

    python benchmarks/sd15_step.py                    # CCAD(F), bottleneck guidance, CPU
    python benchmarks/sd15_step.py --variant C --guidance full --device cuda --batch 12

Builds the SD v1.5-sized model (UNet 320/640/1280/1280, VAE, guidance copy, FCM) without
pretrained weights, then times encode + forward + backward + AdamW for one batch. Peak memory
is the process's peak resident set size on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.
AdamW's multi-tensor ``foreach`` path is used on CUDA only: on CPU it holds a second copy of
the 880M trainable parameters' updates and needs more than 23 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from ccad_tutorial.model import CCAD
from ccad_tutorial.presets import make_config


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="F", choices=("V", "C", "F", "uncond"))
    parser.add_argument("--guidance", default="bottleneck", choices=("none", "bottleneck", "full"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    start = time.perf_counter()
    cfg = make_config(
        "sd15", args.variant, guidance=args.guidance, score_mode="l1", score_pretrained=False
    )
    torch.manual_seed(0)
    model = CCAD(cfg, torch.randn(12, 1536)).to(device)
    build_s = time.perf_counter() - start
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
    result = {
        "variant": args.variant,
        "guidance": args.guidance,
        "device": str(device),
        "batch": args.batch,
        "params_m": round(params / 1e6),
        "trainable_m": round(trainable / 1e6),
        "build_s": round(build_s, 1),
        "step_s": round(step_s, 2),
        "images_per_s": round(args.batch / step_s, 3),
        "peak_gib": round(peak_gib(device), 2),
        "latent_shape": list(latents.shape),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
