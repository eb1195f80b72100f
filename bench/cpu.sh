#!/usr/bin/env bash
# Every CPU benchmark behind BENCHMARKS.md, in one run on one machine (about 20 minutes on 2 cores):
#   1. offline decode, bundled model: engine (learned/fixed/entropy, eager and compiled) vs
#      generate() vs the bare forward, batches 1 8 16 32, prompt 32, 128 new tokens;
#   2. HTTP serving, bundled model, the server started as `make serve` starts it: 1 4 16 64 clients
#      (at least 8 requests per client per level),
#      the bundled task's held-out problems ending at EOS, then 128 new tokens ignoring EOS, each
#      with the one-at-a-time generate() baseline (run before and after the server) and the
#      server's peak memory;
#   3. offline decode on the Qwen2.5-0.5B shape (random weights), kept short for a CPU and eager
#      (compiling the 24-layer model took over 7 minutes on 2 cores);
#   4. start-up to ready as `make serve` starts, with an empty then a warm compile cache (bench/startup.sh);
#   5. the target table (bench/targets.py).
# Run it on an otherwise idle machine; OUT (default bench/results) sets where results go.
# One torch thread for the tiny model offline: on this 2-vCPU machine two threads measured slower
# (batch 16: 1071 against 1563 tok/s); the server's default gives its engine every CPU but one.
# The Qwen shape, whose matmuls are large enough to share, keeps torch's default.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/results}
mkdir -p "$OUT"

"$PYTHON" bench/decode.py --batches 1 8 16 32 --repeats 5 --threads 1 --json "$OUT/decode-cpu.json"
# The server as `make serve` starts it (no overrides: compile=auto, every CPU but one for the engine);
# the baseline generate() keeps torch's default threads, as a user's own script would.
"$PYTHON" bench/serve.py --workload task --concurrency 1 4 16 64 --new-tokens 64 --requests 32 \
    --baseline-requests 16 --json "$OUT/serve-cpu-task.json"
"$PYTHON" bench/serve.py --workload fixed --concurrency 1 4 16 64 --new-tokens 128 --requests 32 \
    --baseline-requests 16 --json "$OUT/serve-cpu.json"
"$PYTHON" bench/decode.py --shape qwen2.5-0.5b --batches 1 4 --new-tokens 16 --repeats 2 \
    --compile off --json "$OUT/decode-cpu-qwen2.5-0.5b.json"
bash bench/startup.sh | tee "$OUT/startup-cpu.txt"
"$PYTHON" bench/targets.py --decode "$OUT/decode-cpu.json" --serve "$OUT/serve-cpu.json" \
    --serve-task "$OUT/serve-cpu-task.json" --startup "$OUT/startup-cpu.txt" \
    --gpu "$OUT/decode-gpu.json" | tee "$OUT/targets-cpu.md"
