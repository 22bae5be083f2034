"""What the sd15 preset's training step needs in memory, and which GPU batch that allows.

``benchmarks/sd15_step.py --memory-table`` measures one step on a CPU (float32, peak
resident set, batch 1, 2, 4, gradient checkpointing off and on) into
``benchmarks/results/sd15_memory.json``. A GPU holds the same tensors, so the CPU figures
bound what a GPU needs. The rule (``gpu_need_gib``), conservative on purpose:

* weights stay float32 on the GPU (autocast keeps float32 master weights and casts only
  inside the matmuls), so weights, gradients and AdamW's two moments take what they take in
  RAM;
* activations are counted at their float32 size, although bf16 autocast stores many of
  them at half of it;
* the CPU process's own runtime (Python, torch's libraries, well under 1 GiB) is counted too,
  as a margin;
* plus ``CUDA_CONTEXT_GIB`` for the CUDA context and the cuBLAS/cuDNN workspaces.
"""

from __future__ import annotations

CUDA_CONTEXT_GIB = 1.0  # context + library workspaces: about 0.3-0.9 GiB, rounded up
T4_GIB = 15.0  # a "16 GB" T4 has 15,360 MiB; Colab's shows about 15.0 GiB to PyTorch


def gpu_need_gib(row: dict) -> float | None:
    """GPU memory (GiB) a measured step needs by the rule above (None: over the cap)."""
    if row.get("over_cap", True):
        return None
    return row["peak_gib"] + CUDA_CONTEXT_GIB


def largest_batch(payload: dict, gpu_gib: float = T4_GIB) -> tuple[int, bool | None]:
    """(largest measured batch whose ``gpu_need_gib`` fits ``gpu_gib``, with checkpointing?);
    (0, None) when not even batch 1 fits."""
    fits = [
        (row["batch"], not row["gradient_checkpointing"])  # same batch: prefer no recompute
        for row in payload["rows"]
        if (need := gpu_need_gib(row)) is not None and need <= gpu_gib
    ]
    if not fits:
        return 0, None
    batch, no_recompute = max(fits)
    return batch, not no_recompute


def memory_table(payload: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of the measured table, for ``page.show_table``."""
    headers = ["batch", "checkpointing", "peak RSS (GiB)", "step (GiB)", "step (s)", "GPU (GiB)"]
    rows = []
    for row in payload["rows"]:
        ckpt = "on" if row["gradient_checkpointing"] else "off"
        if row.get("over_cap", True):
            over = f"over the {payload['cap_gib']:g} GiB cap"
            rows.append([row["batch"], ckpt, over, "-", "-", "-"])
            continue
        gib = [f"{v:.2f}" for v in (row["peak_gib"], row["step_gib"], gpu_need_gib(row))]
        rows.append([row["batch"], ckpt, gib[0], gib[1], f"{row['step_s']:.1f}", gib[2]])
    return headers, rows
