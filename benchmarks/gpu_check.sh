#!/usr/bin/env bash
# The CUDA-path check in one script (aims at 8 minutes on one GPU; see benchmarks/results/gpu_check.md): AMP (bf16, fp16), channels_last, compile,
# CRD on the device, DDP with one process (torchrun, NCCL), SyncBN, and teach/distill throughput.
# Needs a CUDA machine with the project's requirements (no data, no internet: it builds its own offline data).
#   bash benchmarks/gpu_check.sh --out benchmarks/results/gpu_check.md
# Extra arguments go to benchmarks/gpu_check.py (see --help there); exit status = number of failed checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m benchmarks.gpu_check "$@"
