#!/usr/bin/env bash
# GPU check (issue 7, item 5): GLINT-RU step + top-K for batch sizes 1..8192 and a short
# training run on one CUDA device; prints one table (bench/gpu.py). Installs nothing: it uses
# $PYTHON, else .venv/bin/python, else python3, which must already have torch (CUDA) + numpy.
# Exits 69 (EX_UNAVAILABLE) with a message when there is no GPU. Bounded to 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

LIMIT_S=290  # the whole check must finish in under 5 minutes
python=${PYTHON:-}
if [[ -z "$python" ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi missing or sees none); nothing measured." >&2
    exit 69
fi
if ! "$python" -c 'import torch, numpy' >/dev/null 2>&1; then
    echo "bench/gpu.sh: $python cannot import torch and numpy; this script installs nothing." >&2
    exit 69
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# PYTHONPATH: the repository's modules, without installing the project
PYTHONPATH=. exec timeout "$LIMIT_S" "$python" -m bench.gpu "$@"
