#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA-only tests, a bf16 training step and the
# sampling speed of the shipped model on the GPU, JSON under benchmarks/results/, within
# 8 minutes. On the device machine: bash benchmarks/gpu_check.sh ; anywhere: --dry-run (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
