#!/usr/bin/env bash
# Quick start 1/2: train the image demo (SiT + LayerSync on the embedded 8x8 digits) on CPU or GPU.
# Extra arguments go to `layersync train`, e.g. `bash scripts/demo.sh train.steps=500`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/layersync train --modality image --overwrite "$@"
