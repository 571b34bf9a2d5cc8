#!/usr/bin/env bash
# Quickstart: set up .venv if needed, then DDPO-fine-tune the shipped Shapes model for JPEG
# compressibility on CPU. Each run writes to its own runs/quickstart/<time> directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/genrl train configs/ddpo/shapes_compressibility_fast.yaml \
    output_dir="runs/quickstart/$(date +%Y%m%d-%H%M%S)" "$@"
