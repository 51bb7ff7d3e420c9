#!/usr/bin/env bash
# LayerSync vs vanilla in the paper's direction, on one CUDA GPU (issue 14).
#
# SiT-B/2 (12 blocks x 768, patch 2) on Fashion-MNIST padded to 32x32 = 256 tokens (the token
# count of the paper's 256x256 latents), pair 4<-8, λ 0.3, bf16, AdamW lr 1e-4 (the paper's).
# Both arms share the seed (init, data order, evaluation noise). val_loss (fixed held-out set,
# t grid and noise) every STEPS/6 steps; at the end FID and KID of N samples on every arm's final
# EMA checkpoint, at two sampling seeds (the draw-to-draw difference is the sampling noise).
# Prints the paired result: per-seed gains with 95% CIs (more than one seed: SEEDS=0,1,2).
#
#   bash scripts/gpu_convergence.sh                      # Fashion-MNIST (apt: dataset-fashion-mnist)
#   DATA_PATH=/data/my_images bash scripts/gpu_convergence.sh   # any folder of class subfolders
#   SEEDS=0,1,2 STEPS=8000 bash scripts/gpu_convergence.sh
#
# STEPS=3000 at BATCH=128 is meant to fit about 10 minutes of training per arm on one recent
# data-centre GPU (an estimate from the model's size, not a measurement: adjust STEPS). The run
# is resumable: re-run the same command to continue or to extend STEPS.
# Variables: STEPS BATCH SEEDS N OUT DATA_PATH DEVICE PRECISION LR MODEL EXTRA (extra overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
LS=${LS:-.venv/bin/layersync}
STEPS=${STEPS:-3000}
BATCH=${BATCH:-128}
SEEDS=${SEEDS:-0}
N=${N:-5000}
OUT=${OUT:-runs/gpu-convergence}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
LR=${LR:-1e-4}
MODEL=${MODEL:-model.arch=SiT-B/2 model.depth=12 model.hidden_size=768 model.num_heads=12 model.patch_size=2}
EVAL_EVERY=${EVAL_EVERY:-$(( STEPS / 6 > 0 ? STEPS / 6 : 1 ))}

if [ -n "${DATA_PATH:-}" ]; then
  DATA=(data.source=folder "data.path=$DATA_PATH" data.image_size=32)
else
  DATA=(data.source=fashion-mnist data.image_size=32)
fi
# shellcheck disable=SC2206
ARGS=(bench convergence -m image --preset fashion-mnist --steps "$STEPS" --eval-every "$EVAL_EVERY"
  --seeds "$SEEDS" --out "$OUT" --metric val_loss --no-noise-check
  --final-eval "metric.fid=on,metric.num_samples=$N,metric.reference_count=$N"
  "${DATA[@]}" $MODEL layersync.pairs=4\<-8 layersync.weight=0.3
  "train.device=$DEVICE" "train.precision=$PRECISION" "train.batch_size=$BATCH" "train.lr=$LR"
  train.lr_warmup_steps=0 metric.fid=off "checkpoint.every=$EVAL_EVERY"
  ${EXTRA:-})
if [ -n "${DRY_RUN:-}" ]; then
  printf '%q ' "$LS" "${ARGS[@]}"
  echo
  exit 0
fi
exec "$LS" "${ARGS[@]}"
