"""Fast and full modes: one call that every chapter makes after its ``parameters`` cell.

Every chapter runs the same code in two modes:

* ``fast``: offline, on the CPU, in minutes: random-init backbones, the tiny UNet/VAE and the
  embedded MiniTex-AD data generated on the fly. This is what CI and the published book run.
* ``full``: the real thing on a GPU: pretrained weights, SD v1.5, MVTec-AD.

``mode="auto"`` picks ``full`` when CUDA is available and ``fast`` otherwise. The environment
variable ``CCAD_MODE`` overrides the notebook's parameter, so the book can be built in fast
mode without editing any notebook.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

MODES = ("auto", "fast", "full")


def resolve_mode(mode: str = "auto") -> str:
    """Return ``"fast"`` or ``"full"``; ``$CCAD_MODE`` wins over the argument."""
    mode = os.environ.get("CCAD_MODE", mode) or "auto"
    if mode not in MODES:
        raise ValueError(f"MODE must be one of {MODES}, got {mode!r} (check MODE or $CCAD_MODE).")
    if mode == "auto":
        return "full" if torch.cuda.is_available() else "fast"
    return mode


# SD v1.5 on the Hugging Face Hub. The original runwayml/stable-diffusion-v1-5 was removed in
# 2024; this is its official mirror (diffusers' docs switched to it).
SD15_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD_WEIGHTS_ENV = "CCAD_SD_WEIGHTS"  # a local SD-layout folder (unet/, vae/) or a hub id


def sd_weights(pretrained: str | os.PathLike | None = None) -> str:
    """Where full mode reads SD v1.5 from: ``pretrained`` if given, else ``$CCAD_SD_WEIGHTS``,
    else the hub id (downloaded by diffusers on first use, e.g. in Colab)."""
    return str(pretrained or os.environ.get(SD_WEIGHTS_ENV) or SD15_HUB_ID)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU; anything else is passed to ``torch.device``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"DEVICE={device!r} but CUDA is not available; use DEVICE='auto' or 'cpu'."
        )
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a chapter is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Chapter:
    """What a chapter knows after resolving its parameters.

    Attributes:
        mode: ``"fast"`` or ``"full"``.
        device: where tensors and models live.
        seed: the seed every random draw of the chapter derives from.
        data_root: the MVTec-layout folder the chapter reads (MiniTex-AD in fast mode).
        results_path: JSON file the chapter's headline numbers are written to (or None).
    """

    mode: str
    device: torch.device
    seed: int
    data_root: Path | None
    results_path: Path | None = None
    results: dict = field(default_factory=dict)

    @property
    def fast(self) -> bool:
        return self.mode == "fast"

    def record(self, **numbers) -> None:
        """Add headline numbers and rewrite ``results_path`` atomically (tests read it).

        Returns nothing, so a chapter's last ``chapter.record(...)`` prints nothing into the
        book; the numbers are in ``chapter.results``.
        """
        self.results.update(numbers)
        if self.results_path is not None:
            from ccad_tutorial.runs import write_json

            write_json(self.results_path, self.results, default=_jsonable)


def _jsonable(value):
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the results JSON")


def start_chapter(
    mode: str = "auto",
    device: str = "auto",
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    results_path: str | os.PathLike | None = None,
    image_size: int = 128,
    need_data: bool = True,
) -> Chapter:
    """Resolve a chapter's parameters: mode, device, seeds, data and where results go.

    In fast mode without ``data_root`` the embedded MiniTex-AD data set is generated (once,
    cached). In full mode ``data_root`` (or ``$CCAD_DATA_ROOT``) must point at MVTec-AD.
    """
    resolved = resolve_mode(mode)
    dev = resolve_device(device)
    seed_everything(seed)
    root = data_root or os.environ.get("CCAD_DATA_ROOT")
    if need_data and root is None:
        if resolved == "full":
            raise ValueError(
                "Full mode needs MVTec-AD: set DATA_ROOT (or $CCAD_DATA_ROOT) to the folder that "
                "holds bottle/, cable/, ...; `ccad-tutorial download-mvtec --out DIR` fetches it "
                "(licence CC BY-NC-SA 4.0), or use MODE='fast' for the embedded MiniTex-AD data."
            )
        from ccad_tutorial.minitex import ensure_minitex

        root = ensure_minitex(size=image_size, seed=0)
    if root is not None:
        root = Path(root).expanduser()
        if not root.exists():
            raise ValueError(
                f"DATA_ROOT {root} does not exist; point it at an MVTec-layout folder."
            )
    path = Path(results_path) if results_path else None
    chapter = Chapter(mode=resolved, device=dev, seed=seed, data_root=root, results_path=path)
    chapter.record(mode=resolved, device=str(dev), seed=seed)
    return chapter
