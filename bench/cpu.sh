#!/usr/bin/env bash
# Every CPU benchmark behind BENCHMARKS.md, in one run on one machine (about 25 minutes on 2 cores):
#   1. offline decode, bundled model: engine (learned/fixed/entropy, eager and compiled) vs
#      generate() vs the bare forward, batches 1 8 16 32, prompt 32, 128 new tokens;
#   2. HTTP serving, bundled model, compiled engine: 1 4 16 64 clients, 128 new tokens,
#      with the one-at-a-time generate() baseline and the server's peak memory;
#   3. offline decode on the Qwen2.5-0.5B shape (random weights), kept short for a CPU and eager
#      (compiling the 24-layer model took over 7 minutes on 2 cores);
#   4. the target table (bench/targets.py).
# Run it on an otherwise idle machine; OUT (default bench/results) sets where results go.
# One torch thread for the tiny model, offline and served: on this 2-vCPU machine two threads
# measured slower (batch 16: 1071 against 1563 tok/s) and a served engine needs the other core
# for HTTP. The Qwen shape, whose matmuls are large enough to share, keeps torch's default.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"

"$PYTHON" bench/decode.py --batches 1 8 16 32 --repeats 5 --threads 1 --json "$OUT/decode-cpu.json"
"$PYTHON" bench/serve.py --concurrency 1 4 16 64 --new-tokens 128 --requests 32 --baseline-requests 16 \
    --compile --threads 1 --json "$OUT/serve-cpu.json"
"$PYTHON" bench/decode.py --shape qwen2.5-0.5b --batches 1 4 --new-tokens 16 --repeats 2 \
    --compile off --json "$OUT/decode-cpu-qwen2.5-0.5b.json"
"$PYTHON" bench/targets.py --decode "$OUT/decode-cpu.json" --serve "$OUT/serve-cpu.json" \
    --gpu "$OUT/decode-gpu.json" | tee "$OUT/targets-cpu.md"
