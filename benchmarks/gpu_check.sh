#!/usr/bin/env bash
# What one NVIDIA GPU does with CCAD, in at most ~8 minutes (benchmarks/gpu_check.py says how):
#
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/gpu.json
#   bash benchmarks/gpu_check.sh --quick     # anywhere (CPU too), seconds, a temporary folder
#
# 1. The sd15 training step (batch 12 x 4 accumulation, 256 px, bf16 autocast): its time,
#    its model FLOPs (torch.utils.flop_counter) and their utilisation of the GPU's peak
#    (NVIDIA's dense bf16 figure for the device), and from it the hours of the MVTec-AD
#    recipe's training (steps x seconds per step).
# 2. The default multi-class reproduction with the tiny preset on MiniTex-AD at 10x the CPU
#    budget: one model for all categories, evaluated per category.
#
# Settings (environment variables; arguments are passed on to gpu_check.py):
#   GPU_CHECK_QUICK  1: the same as --quick
#   PYTHON          the interpreter (default python)
#   NVIDIA_SMI      the nvidia-smi command (default nvidia-smi)
set -euo pipefail

PYTHON=${PYTHON:-python}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
args=("$@")
if [[ "${GPU_CHECK_QUICK:-}" == 1 ]]; then args+=(--quick); fi

quick=0
for arg in "${args[@]}"; do [[ "$arg" == --quick ]] && quick=1; done
if [[ $quick == 0 ]]; then  # the real check needs the GPU it measures
    if ! "$NVIDIA_SMI" --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
        echo "error: no NVIDIA GPU ($NVIDIA_SMI failed): run it on a GPU machine, or pass" \
            "--quick (GPU_CHECK_QUICK=1) to check the script on this one." >&2
        exit 1
    fi
fi
start=$SECONDS
PYTHONUNBUFFERED=1 "$PYTHON" "$HERE/gpu_check.py" "${args[@]}" \
    --command "bash benchmarks/gpu_check.sh ${args[*]}"
echo "gpu_check: $((SECONDS - start)) s"
