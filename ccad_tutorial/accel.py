"""Several GPUs with HF accelerate, and mixed precision: what ``train.fit`` adds to a plain loop.

The same code runs as one process (the chapters, the tests, ``python -m ccad_tutorial
train``) and as N data-parallel processes, one per GPU::

    accelerate launch --num_processes 2 -m ccad_tutorial train --preset sd15 ...

How the work is split (nanoGPT's DDP recipe, through ``accelerate.Accelerator``):

* The effective batch does not change with N: process r takes rows r*B/N .. (r+1)*B/N of
  every global micro-batch of B = ``batch_size`` rows, so N processes together see the
  same images per optimiser step (B x ``grad_accum``) as one process does.
* Process r draws its crops, timesteps and noise from a generator seeded by (seed, step,
  r); process 0's seed is the one-process run's, so one process is unchanged and a resumed
  run reproduces an uninterrupted one with the same N.
* The model is wrapped in DistributedDataParallel (``Accelerator.prepare_model``), which
  averages the gradients through ``CCAD.forward`` (the training loss).
* Only the main process writes files (``is_main_process``); every process reads them to
  resume.

Mixed precision is torch.autocast (+ a gradient scaler for fp16), chosen per run by
``autocast_dtype``. Not ``Accelerator(mixed_precision=...)``: accelerate fixes that once per
Python process, and a chapter trains several runs in one.
"""

from __future__ import annotations

import contextlib

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState

from ccad_tutorial.modes import resolve_device


def make_accelerator() -> Accelerator:
    """The run's Accelerator. We place the model ourselves (``training_device``).

    find_unused_parameters: with bottleneck guidance or no condition dropout some trained
    weights (upper guidance outputs, the null token) get no gradient in a step.
    """
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(device_placement=False, kwargs_handlers=[ddp])


def is_main_process() -> bool:
    """True in a one-process run and in process 0 of ``accelerate launch``."""
    return PartialState().is_main_process


def wait_for_everyone() -> None:
    """A barrier: every process arrives here before any goes on (nothing with one process)."""
    PartialState().wait_for_everyone()


def training_device(device: str | torch.device = "auto") -> torch.device:
    """Where this process trains: its own GPU under ``accelerate launch`` with several
    processes, the CPU under ``accelerate launch --cpu``, else ``modes.resolve_device``."""
    state = PartialState()
    if state.num_processes > 1:
        return state.device
    if device in (None, "auto") and state.device.type == "cpu":
        return torch.device("cpu")
    return resolve_device(device)


def process_rows(batch_size: int, rank: int, world: int) -> slice:
    """The rows of a global micro-batch of ``batch_size`` that process ``rank`` of ``world``
    computes."""
    if batch_size % world:
        raise ValueError(
            f"batch_size={batch_size} does not split over {world} processes; launch a number "
            f"of processes that divides it or set batch_size (--set batch_size=...)."
        )
    part = batch_size // world
    return slice(rank * part, (rank + 1) * part)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of a step's random draws in process ``rank`` (0: the one-process run's)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + rank * 10**12)


def sync_gradients(accelerator: Accelerator, model, last_micro_batch: bool):
    """Gradient accumulation: DDP averages the gradients only after the last micro-batch."""
    return contextlib.nullcontext() if last_micro_batch else accelerator.no_sync(model)


def mean_over_processes(accelerator: Accelerator, value: float) -> float:
    """The mean of a Python float over the processes (itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor(value, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, "mean").item()


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``cfg.mixed_precision`` on ``device`` (None: float32 throughout).

    "auto": bf16 on CUDA, none on CPU (bf16 on CPU was measured 2x slower); "bf16": bf16 on
    CPU or CUDA; "fp16": fp16 with a gradient scaler, CUDA only; "no": none.
    """
    if mixed_precision == "fp16" and device.type != "cuda":
        raise ValueError(
            f"mixed_precision='fp16' needs a CUDA GPU (its gradient scaler is CUDA's), but "
            f"this run trains on {device.type}; use mixed_precision='bf16' or 'no' "
            "(--set mixed_precision=bf16)."
        )
    if mixed_precision == "no" or (mixed_precision == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if mixed_precision == "fp16" else torch.bfloat16
