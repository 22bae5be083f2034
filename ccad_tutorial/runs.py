"""Run folders: everything the package writes to disk, and reads back.

A trained CCAD lives in one folder (``CCAD.save_pretrained`` / ``CCAD.from_pretrained``):

    config.json         CCADConfig (+ train arguments, UNet/VAE configs, measured times)
    bank.safetensors    the Coarse Feature Bank (CoarseFeatureBank.save)
    vae.safetensors     the stage-1 VAE of the tiny preset (so a resume skips stage 1)
    model.safetensors   every weight of CCAD (trainable and frozen)
    ema.safetensors     EMA of the trainable weights (only with ema_decay)
    trainer_state.pt    step, optimiser, RNG, elapsed time: plain tensors, read with
                        torch.load(weights_only=True) so no pickle code ever runs
    loss_log.csv        step, loss, lr, elapsed_s (what the book plots)

Every file is written through ``atomic_write`` (temporary file, then ``os.replace``), so
an interrupted run never leaves a half-written file behind: the run folders, the cells of
the benchmarks, their result files and the data set's manifest alike.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ccad_tutorial.presets import CCADConfig

VAE_FIELDS = (
    "image_size", "crop_size", "batch_size", "latent_channels", "vae_block_out_channels",
    "vae_layers_per_block", "vae_steps", "vae_kl_weight", "vae_lr", "seed",
)  # fmt: skip
RUN_FILES = ("config.json", "bank.safetensors", "vae.safetensors", "loss_log.csv")


# ---------------------------------------------------------------------- writing
def is_main_process() -> bool:
    """False only in the non-main processes of ``accelerate launch`` (they hold the same
    files as the main one, which writes them)."""
    accel = sys.modules.get("ccad_tutorial.accel")  # not imported: no training, one process
    return accel is None or accel.is_main_process()


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``data`` (text, bytes, or ``write(tmp_path)``) to a temporary file next to
    ``path``, then rename it to ``path`` (os.replace is atomic). Creates the folder."""
    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    elif isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        data(tmp)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, obj, **dumps) -> Path:
    """``obj`` as indented JSON (``dumps``: more json.dumps arguments), atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, **dumps) + "\n")


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata=None) -> Path:
    """A dict of tensors as .safetensors (contiguous, on the CPU), atomically."""
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda p: save_file(cpu, str(p), metadata=metadata))


def cell_name(method: str, category: str, seed: int, settings: dict | None = None) -> str:
    """Folder name of a benchmark cell: ``F_brick_s0`` or ``F_brick_s0_num_queries=16``."""
    parts = [method, category, f"s{seed}"]
    parts += [f"{k}={_short(v)}" for k, v in sorted((settings or {}).items())]
    return "_".join(parts)


def _short(value) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return str(value)


# ---------------------------------------------------------------------- reading
def load_safetensors(path: str | os.PathLike) -> dict:
    """The tensors of a .safetensors file; a missing or truncated file names the fix."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is missing; the run in {path.parent} is incomplete, re-train it.")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own SafetensorError on truncation
        raise ValueError(
            f"{path} is corrupt or truncated ({err}); restore it or re-train the run."
        ) from err


def write_config(out: Path, cfg: CCADConfig) -> None:
    write_json(Path(out) / "config.json", cfg.to_dict())


def read_config(run: str | os.PathLike) -> CCADConfig:
    """The run's CCADConfig; a folder without config.json is not a run."""
    path = Path(run) / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{run} is not a CCAD run (no config.json); train one with "
            f"`ccad-tutorial train --data DIR --category CAT --out {run}`."
        )
    try:
        return CCADConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{path} is not a valid CCAD config ({err}); re-train the run.") from err


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(out: Path, model, trainer: dict, log: list) -> None:
    """model.safetensors (+ ema.safetensors), trainer_state.pt and loss_log.csv, atomically."""
    if not is_main_process():
        return
    model.save_pretrained(out, config=False)
    ema = trainer.pop("ema", {})
    if ema:
        write_safetensors(out / "ema.safetensors", ema)
    atomic_write(out / "trainer_state.pt", lambda p: torch.save(trainer, p))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "loss", "lr", "elapsed_s"])
    writer.writerows(log)
    atomic_write(out / "loss_log.csv", buf.getvalue())


def load_trainer_state(run: Path) -> dict:
    """trainer_state.pt through torch.load(weights_only=True): tensors and plain containers."""
    path = Path(run) / "trainer_state.pt"
    if not path.is_file():
        raise ValueError(
            f"{run} has no trainer_state.pt to resume from; train it again without --resume."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is corrupt or truncated ({err}); resume is impossible.") from err


def trained_steps(run: str | os.PathLike) -> int:
    """The step of the run's last checkpoint (0 before the first one)."""
    if not (Path(run) / "trainer_state.pt").is_file():
        return 0
    return int(load_trainer_state(Path(run))["step"])


# ---------------------------------------------------------------------- the loss log
def read_loss_log(out: str | os.PathLike, up_to_step: int | None = None) -> list:
    """Rows (step, loss, lr, elapsed_s) of loss_log.csv with step <= up_to_step (all rows
    when None); [] when there is no log yet."""
    path = Path(out) / "loss_log.csv"
    if up_to_step == 0 or not path.is_file():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [
        (int(r["step"]), float(r["loss"]), float(r["lr"]), float(r["elapsed_s"]))
        for r in rows
        if up_to_step is None or int(r["step"]) <= up_to_step
    ]


def window_means(values: list[float], points: int = 20) -> tuple[list[int], list[float]]:
    """``values`` cut into about ``points`` windows of consecutive entries: (index of each
    window's last entry, the window's mean). A window has at least one entry."""
    window = max(1, len(values) // points)
    ends = list(range(window - 1, len(values), window))
    return ends, [sum(values[i - window + 1 : i + 1]) / window for i in ends]


def loss_curve(run: str | os.PathLike, points: int = 20) -> tuple[list[int], list[float]]:
    """The training loss of a run folder as ``points`` window means: (steps, losses).

    Each point is the mean loss of one window of consecutive steps, plotted at the window's
    last step (a single step's loss is mostly the noise of its random timesteps).
    """
    rows = read_loss_log(run)
    if not rows:
        raise FileNotFoundError(f"{Path(run) / 'loss_log.csv'}: no loss log (is it a run folder?)")
    ends, losses = window_means([r[1] for r in rows], points)
    return [rows[i][0] for i in ends], losses


# ---------------------------------------------------------------------- the stage-1 VAE cache
def cached_vae(train, cfg: CCADConfig, cache, data, category: str):
    """``train()`` (a stage-1 VAE), or the VAE an earlier run trained with the same data,
    category and VAE settings (``VAE_FIELDS``), read from the folder ``cache``.

    Variants C, F and uncond of one cell then start from the identical autoencoder. The
    cached pair is ``vae-<category>-<digest>.safetensors`` and its ``.json`` (written last:
    it marks the pair complete; it carries the scaling factor, set on ``cfg``).
    """
    from ccad_tutorial.networks import build_vae

    if cache is None:
        return train()
    key = {name: getattr(cfg, name) for name in VAE_FIELDS}
    key.update(data=str(Path(data).resolve()), category=category)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    weights = Path(cache) / f"vae-{category}-{digest}.safetensors"
    meta = weights.with_suffix(".json")
    if weights.is_file() and meta.is_file():
        vae = build_vae(cfg)
        vae.load_state_dict(load_safetensors(weights))
        vae.requires_grad_(False).eval()
        cfg.scaling_factor = json.loads(meta.read_text())["scaling_factor"]
        return vae
    vae = train()
    write_safetensors(weights, vae.state_dict())
    write_json(meta, {"scaling_factor": cfg.scaling_factor, **key})
    return vae


# ---------------------------------------------------------------------- loss summaries
def loss_fall(run: str | os.PathLike, parts: int = 3) -> float:
    """How much a run's training loss still fell at its end: one minus the mean loss
    of the last ``1 / parts`` of the logged steps over that of the part before them.

    0.2: the last part is 20 % below the one before, a budget cut short; about 0: the
    loss had levelled off. A log too short to hold two parts gives 0.
    """
    losses = [row[1] for row in read_loss_log(run)]
    if not losses:
        raise FileNotFoundError(f"{Path(run) / 'loss_log.csv'}: no loss log (a run?)")
    part = max(1, len(losses) // parts)
    last, before = losses[-part:], losses[-2 * part : -part]
    if not before:
        return 0.0
    return 1 - sum(last) / sum(before)
