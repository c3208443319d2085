#!/usr/bin/env bash
# One-command set-up on a fresh machine: ./setup.sh [VENV_DIR]   (default: .venv)
# Installs PyTorch first — the CPU build where there is no NVIDIA GPU — then metalab with its test
# extras (pytest, ruff, hypothesis).
# (A bare `torch` requirement with no torch installed would pull a multi-GB CUDA build.)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${1:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "torch==$TORCH_VERSION"
  else
    # The CPU build: pip's configured index serves the rest; PyTorch's CPU wheel index is an extra.
    "$PY" -m pip install "torch==$TORCH_VERSION+cpu" \
      --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$PY" -m pip install -e ".[dev,text]"
echo "metalab is set up in $VENV: activate it with 'source $VENV/bin/activate'"
