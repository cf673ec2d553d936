#!/usr/bin/env bash
# GPT-2 124M on a CUDA GPU: training tokens/s and MFU (bf16 autocast, SDPA, fused AdamW, eager and
# torch.compile, at the largest batch that fits at T=1024) and batch-1 decoding tokens/s; writes
# OUT_DIR/gpu.md and OUT_DIR/gpu.json (benchmarks/gpu_bench.py has the method).
#
#     benchmarks/gpu.sh [OUT_DIR] [gpu_bench options]      # OUT_DIR defaults to bench_results/gpu
#
# Refuses (exit 2) on a machine without CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench_results/gpu}"
shift || true
python=${PYTHON:-python}
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "benchmarks/gpu.sh: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with an" \
         "NVIDIA GPU and a CUDA build of torch" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m benchmarks.gpu_bench --out "$out" "$@"
