#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): CUDA-only tests, a bf16 training step, the
# sampling speed of the shipped model, the normal-size rows (fp32 and bf16, with MFU), packages
# vs Earth2Studio and the loader's taiwan and conus presets, JSON under benchmarks/results/, within 8 minutes. On the device machine: bash benchmarks/gpu_check.sh ; anywhere: --dry-run (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
