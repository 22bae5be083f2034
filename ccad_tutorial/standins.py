"""Offline stand-ins for everything full mode downloads, so full mode can run without internet.

Full mode reads four things from outside: SD v1.5 (a diffusers folder), ImageNet backbones
(timm), MVTec-AD and VisA. This module writes a small stand-in for each, in the exact layout
the real download has, holding random weights and MiniTex-AD images:

    <out>/sd15/            model_index.json, unet/, vae/, scheduler/   (SD v1.5's layout and
                           configs, narrower channels: 32/64 instead of 320..1280)
    <out>/backbones/       wide_resnet50_2.safetensors, resnet50.safetensors (full size)
    <out>/mvtec/           bottle-style folders: <cat>/train/good, test/<type>, ground_truth
    <out>/visa/            <cat>/Data/Images/{Normal,Anomaly}, Data/Masks, split_csv/1cls.csv

and returns the environment a full-mode user sets (``CCAD_SD_WEIGHTS``,
``CCAD_BACKBONE_WEIGHTS``, ``CCAD_DATA_ROOT``): the same variables point the package at the
real downloads. The numbers full mode prints on stand-ins mean nothing (random weights);
what they show is that every full-mode line runs. ``python -m ccad_tutorial.standins OUT``
writes them from the command line.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file

from ccad_tutorial.features import BACKBONE_WEIGHTS_ENV
from ccad_tutorial.minitex import make_minitex
from ccad_tutorial.modes import SD_WEIGHTS_ENV

# The stand-in MVTec-AD keeps two categories, one texture and one object, under MVTec names.
MVTEC_NAMES = {"brick": "tile", "hexnut": "metal_nut"}
VISA_NAMES = {"brick": "candle", "hexnut": "pcb1"}
BACKBONES = ("wide_resnet50_2", "resnet50")  # the features (CFB) and the anomaly scorer

# SD v1.5's configs (unet/config.json, vae/config.json, scheduler/scheduler_config.json of
# stable-diffusion-v1-5/stable-diffusion-v1-5), with narrower channels where they must be.
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
NARROW_UNET = (32, 64, 64, 64)  # instead of 320, 640, 1280, 1280
NARROW_VAE = (32, 32, 64, 64)  # instead of 128, 256, 512, 512


def sd15_standin(out: str | Path, seed: int = 0) -> Path:
    """A diffusers folder in SD v1.5's layout (unet/, vae/, scheduler/) with random weights."""
    out = Path(out)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**SD15_UNET, "block_out_channels": NARROW_UNET})
    vae = AutoencoderKL(**{**SD15_VAE, "block_out_channels": NARROW_VAE})
    unet.save_pretrained(out / "unet")
    vae.save_pretrained(out / "vae")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }  # the real one also names text_encoder, tokenizer, safety_checker: CCAD reads none
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    return out


def backbone_standins(out: str | Path, names=BACKBONES, seed: int = 0) -> Path:
    """One timm checkpoint per backbone, ``<out>/<name>.safetensors`` (full size, random)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        torch.manual_seed(seed)
        state = timm.create_model(name, pretrained=False).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"{name}.safetensors"))
    return out


def _minitex(out: Path, size: int, n_train: int, seed: int) -> Path:
    return make_minitex(
        out,
        size=size,
        seed=seed,
        n_train=n_train,
        n_test_good=4,
        n_test_defect_per_type=1,
        categories=list(MVTEC_NAMES),
    )


def mvtec_standin(out: str | Path, size: int = 96, n_train: int = 12, seed: int = 0) -> Path:
    """An MVTec-AD-layout tree of two categories (MiniTex-AD images under MVTec names)."""
    out = Path(out)
    source = _minitex(out / ".minitex", size, n_train, seed)
    for minitex_name, mvtec_name in MVTEC_NAMES.items():
        shutil.rmtree(out / mvtec_name, ignore_errors=True)
        shutil.move(str(source / minitex_name), out / mvtec_name)
    shutil.rmtree(source)
    return out


def visa_standin(out: str | Path, size: int = 96, n_train: int = 12, seed: int = 0) -> Path:
    """A VisA-layout tree: JPG images, PNG masks and the split file ``split_csv/1cls.csv``."""
    out = Path(out)
    source = _minitex(out / ".minitex", size, n_train, seed)
    rows = ["object,split,label,image,mask"]
    for minitex_name, cat in VISA_NAMES.items():
        shutil.rmtree(out / cat, ignore_errors=True)
        base = source / minitex_name
        files = [("train", "normal", p, None) for p in sorted(base.glob("train/good/*.png"))]
        for p in sorted(base.glob("test/*/*.png")):
            mask = base / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
            normal = p.parent.name == "good"
            files.append(("test", "normal" if normal else "anomaly", p, None if normal else mask))
        for i, (split, label, image, mask) in enumerate(files):
            folder = "Normal" if label == "normal" else "Anomaly"
            rel = f"{cat}/Data/Images/{folder}/{i:04d}.JPG"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.open(image).convert("RGB").save(out / rel, quality=95)
            rel_mask = ""
            if mask is not None:  # VisA masks: 0 background, nonzero defect
                rel_mask = f"{cat}/Data/Masks/Anomaly/{i:04d}.png"
                (out / rel_mask).parent.mkdir(parents=True, exist_ok=True)
                on = (np.asarray(Image.open(mask)) > 127).astype(np.uint8)
                Image.fromarray(on).save(out / rel_mask)
            rows.append(f"{cat},{split},{label},{rel},{rel_mask}")
    (out / "split_csv").mkdir(parents=True, exist_ok=True)
    (out / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    shutil.rmtree(source)
    return out


def make_standins(out: str | Path, size: int = 96, n_train: int = 12) -> dict[str, str]:
    """Write all four stand-ins under ``out``; return the environment that points full mode at
    them (``CCAD_SD_WEIGHTS``, ``CCAD_BACKBONE_WEIGHTS``, ``CCAD_DATA_ROOT``, plus the VisA
    root under ``visa``)."""
    out = Path(out)
    return {
        SD_WEIGHTS_ENV: str(sd15_standin(out / "sd15")),
        BACKBONE_WEIGHTS_ENV: str(backbone_standins(out / "backbones")),
        "CCAD_DATA_ROOT": str(mvtec_standin(out / "mvtec", size, n_train)),
        "visa": str(visa_standin(out / "visa", size, n_train)),
    }


if __name__ == "__main__":  # python -m ccad_tutorial.standins OUT
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ccad_tutorial.standins OUT_DIR")
    for key, value in make_standins(sys.argv[1]).items():
        print(f"export {key.upper() if key != 'visa' else 'VISA_ROOT'}={value}")
