#!/usr/bin/env bash
# Full MVTec-AD reproduction of CCAD with the sd15 preset on one NVIDIA GPU.
#
#   bash benchmarks/mvtec_gpu.sh                              # downloads MVTec-AD first
#   DATA_ROOT=/data/mvtec_anomaly_detection bash benchmarks/mvtec_gpu.sh
#   SD15=/models/sd-v1-5 CATEGORIES=bottle,screw bash benchmarks/mvtec_gpu.sh
#
# What it runs: `ccad-tutorial reproduce` with the sd15 preset (SD v1.5 UNet + VAE at 256 px,
# pretrained WideResNet-50 bank features, pretrained ResNet-50 anomaly maps): ONE MODEL FOR
# ALL 15 CATEGORIES (DiAD's multi-class setting; PER_CATEGORY=1 trains one per category),
# trained for DiAD's budget (200 epochs of the 3,629 training images at batch 12 x 4
# accumulation: ~15k steps), then evaluated per category (image and pixel AUROC, AUPRO,
# F1-max). At the end it prints the table next to the CCAD paper's 0.962 / 0.966 and DiAD's
# numbers, each with its setting, written to $OUT/results.md and $OUT/results.json.
# Expect hours: benchmarks/gpu_check.sh measures a step on your GPU (README: "Running on a
# GPU"). It is resumable: run the same command again after an interruption (evaluated
# categories are skipped, the model continues from its last checkpoint, every 1000 steps).
# On N GPUs (with DATA_ROOT set): CCAD="accelerate launch --num_processes N -m ccad_tutorial"
#
# Settings (environment variables):
#   DATA_ROOT     MVTec-AD folder holding bottle/, cable/, ...; unset: download into DOWNLOAD_DIR
#   DOWNLOAD_DIR  where to download MVTec-AD (default data/mvtec; 4.9 GiB, CC BY-NC-SA 4.0)
#   SD15          SD v1.5 weights: a hub id or a local folder with unet/ and vae/ (default:
#                 $CCAD_SD_WEIGHTS, else the hub's official mirror of the original
#                 runwayml/stable-diffusion-v1-5, removed from the Hugging Face Hub in 2024).
#   VARIANT       CCAD variant: F (default), C, V or uncond
#   CATEGORIES    comma-separated (default: the 15 MVTec-AD categories)
#   PER_CATEGORY  1: one model per category (an easier setting than DiAD's), each 200 epochs
#   STEPS         optimiser steps per model (default: 200 epochs, see above)
#   EPOCHS        epochs per model instead of 200 (ignored when STEPS is set)
#   OUT           results folder (default runs/mvtec_sd15_$VARIANT)
#   CCAD          the command line tool (default ccad-tutorial; e.g. "python -m ccad_tutorial")
#   NVIDIA_SMI    the nvidia-smi command (default nvidia-smi)
set -euo pipefail

CCAD=${CCAD:-ccad-tutorial}
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
SD15=${SD15:-${CCAD_SD_WEIGHTS:-stable-diffusion-v1-5/stable-diffusion-v1-5}}
VARIANT=${VARIANT:-F}
DOWNLOAD_DIR=${DOWNLOAD_DIR:-data/mvtec}
CATEGORIES=${CATEGORIES:-bottle,cable,capsule,carpet,grid,hazelnut,leather,metal_nut,pill,screw,tile,toothbrush,transistor,wood,zipper}
STEPS=${STEPS:-}
EPOCHS=${EPOCHS:-}
PER_CATEGORY=${PER_CATEGORY:-}
OUT=${OUT:-runs/mvtec_sd15_${VARIANT}}

# 1. A GPU (reproduce --device cuda also stops at once if torch cannot see it).
if ! command -v "$NVIDIA_SMI" >/dev/null 2>&1; then
    echo "error: $NVIDIA_SMI not found: this recipe needs an NVIDIA GPU and its driver." \
        "Without one, run chapter 7 in fast mode or 'ccad-tutorial reproduce --preset tiny'." >&2
    exit 1
fi
if ! "$NVIDIA_SMI" --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    echo "error: $NVIDIA_SMI found no usable GPU (see its message above)." >&2
    exit 1
fi

# 2. The data: DATA_ROOT, or MVTec-AD downloaded (once: an existing copy is reused).
if [[ -z "${DATA_ROOT:-}" ]]; then
    echo "DATA_ROOT is not set: MVTec-AD (CC BY-NC-SA 4.0, non-commercial) goes to $DOWNLOAD_DIR"
    $CCAD download-mvtec --out "$DOWNLOAD_DIR"
    DATA_ROOT=$DOWNLOAD_DIR
    for dir in "$DOWNLOAD_DIR"/*/; do  # the archive may extract into one sub-folder
        if [[ ! -d "$DATA_ROOT/bottle" && -d "$dir/bottle" ]]; then DATA_ROOT=${dir%/}; fi
    done
fi

# 3. Train (one model, or one per category), evaluate every category, then the table (printed, and written to $OUT).
args=(reproduce --data "$DATA_ROOT" --layout mvtec --categories "$CATEGORIES"
      --preset sd15 --variant "$VARIANT" --pretrained "$SD15" --out "$OUT" --device cuda)
if [[ -n "$STEPS" ]]; then args+=(--steps "$STEPS"); fi
if [[ -n "$EPOCHS" ]]; then args+=(--epochs "$EPOCHS"); fi
if [[ "$PER_CATEGORY" == 1 ]]; then args+=(--per-category); fi
mkdir -p "$OUT"
echo "+ $CCAD ${args[*]}"
PYTHONUNBUFFERED=1 $CCAD "${args[@]}" 2>&1 | tee -a "$OUT/reproduce.log"
echo "Table: $OUT/results.md   numbers: $OUT/results.json   log: $OUT/reproduce.log"
