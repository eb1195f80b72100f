#!/usr/bin/env bash
# GPU benchmark in one go (target 8 of BENCHMARKS.md), under 5 minutes on one H100/H200:
# the engine (compiled decode step, CUDA graphs) against Hugging Face generate() on the
# Qwen2.5-0.5B shape in bfloat16, batches 1, 8 and 64, then the target check.
#
#   bash bench/gpu.sh               # on a CUDA machine; writes bench/results/decode-gpu.json
#   bash bench/gpu.sh --cpu-smoke   # the same steps on CPU with the tiny model, in seconds
#
# OUT (default bench/results) sets where results go; PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"

if [[ "${1:-}" == "--cpu-smoke" ]]; then
    name=decode-gpu-smoke
    args=(--shape tiny --device cpu --dtype float32 --batches 1 4 --new-tokens 8 --prompt-tokens 8
          --repeats 1 --compile off --modes learned fixed --threads 1)
else
    name=decode-gpu
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    args=(--shape qwen2.5-0.5b --device cuda --dtype bfloat16 --batches 1 8 64 --new-tokens 128
          --repeats 3 --compile on --modes learned fixed)
fi

timeout 290 "$PYTHON" bench/decode.py "${args[@]}" --json "$OUT/$name.json"
"$PYTHON" bench/targets.py --gpu "$OUT/$name.json"
