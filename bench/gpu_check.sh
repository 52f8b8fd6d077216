#!/usr/bin/env bash
# One device call: bash bench/gpu_check.sh [--carry-dir .gpu_carry] [--skip stage,...]
# Stages, budgets and outputs: bench/gpu_check.py (docstring) and docs/gpu.md.
# On the CPU machine first: python bench/gpu_check.py --prepare  (prints the exact call)
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export OUT="${OUT:-/tmp/affaccel_gpu_check}"
mkdir -p "$OUT"
# the whole run is bounded by its stage budgets (8 min); this is the backstop
exec timeout -k 10 500 python3 bench/gpu_check.py "$@"
