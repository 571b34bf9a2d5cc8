#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv with pinned torch/torchvision.
# Idempotent: reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${GENRL_VENV:-.venv}"
EXTRAS="${GENRL_EXTRAS:-dev,clip,robot,export,demo}"  # clip: open_clip, lpips, transformers; robot: envs, zarr; export: onnx; demo: gradio (the tests use all)
stamp="$VENV/.genrl-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[$EXTRAS]"
echo "$want" > "$stamp"
