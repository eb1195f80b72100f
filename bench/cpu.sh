#!/usr/bin/env bash
# Every CPU benchmark behind BENCHMARKS.md, in one run on one machine (about 25 minutes on 2 cores).
# Steps 1, 2 and 4 run RUNS times (default 2), so that every ratio has a spread:
#   1. offline decode, bundled model: engine (learned/fixed/entropy, eager and compiled) vs
#      generate() vs the bare forward, batches 1 8 16 32, prompt 32, 128 new tokens;
#   2. HTTP serving, bundled model: the server started as `make serve` starts it at 1 4 16 64
#      clients (at least 8 requests per client per level), the peer `transformers serve
#      --continuous-batching` without and with its --compile at 16 and 64 clients (all three
#      servers up at once, taking turns at those levels in rounds, the order reversed every round,
#      so that the VM's drift over minutes weighs on both sides of a ratio: four rounds of the
#      task workload, whose levels take seconds, two of the 128-token one), and generate()
#      one request at a time at its fastest thread count (probed first; run before and after the
#      servers); the bundled task's held-out problems ending at EOS, then 128 new tokens ignoring
#      EOS with the n=8 workload (one n=8 request per prompt against 8 separate requests);
#   3. offline decode on the Qwen2.5-0.5B shape (random weights), once, kept short for a CPU and
#      eager (compiling the 24-layer model took over 7 minutes on 2 cores);
#   4. start-up to ready as `make serve` starts, with an empty then a warm compile cache (bench/startup.sh);
#   5. the target table (bench/targets.py), with the spread over the runs.
# Every server runs at nice 10 (bench/serve.py --server-nice): the client shares the CPUs, and on 2
# cores a starved client kept only about 15 of its 64 requests in flight in some runs.
# Run it on an otherwise idle machine; OUT (default bench/results) sets where results go, STEPS
# (default "decode serve qwen startup") which of 1-4 run, FIRST_RUN (default 1) the first run's number.
# One torch thread for the tiny model offline: on this 2-vCPU machine two threads measured slower
# (batch 16: 1071 against 1563 tok/s); the server's default gives its engine every CPU but one.
# The Qwen shape, whose matmuls are large enough to share, keeps torch's default.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${OUT:-bench/results}
RUNS=${RUNS:-2}
FIRST_RUN=${FIRST_RUN:-1}
STEPS=${STEPS:-decode serve qwen startup}
mkdir -p "$OUT"
step() { [[ " $STEPS " == *" $1 "* ]]; }

for run in $(seq "$FIRST_RUN" "$RUNS"); do
  if step decode; then
    "$PYTHON" bench/decode.py --batches 1 8 16 32 --repeats 5 --threads 1 --json "$OUT/decode-cpu-$run.json"
  fi
  if step serve; then
    # The server as `make serve` starts it (no overrides: compile=auto, every CPU but one for the
    # engine), in its default learned mode; the peer and generate() sample at temperature 1.
    "$PYTHON" bench/serve.py --workload task --concurrency 1 4 16 64 --new-tokens 64 --requests 32 \
        --baseline-requests 16 --peer eager compiled --rounds 4 --json "$OUT/serve-cpu-task-$run.json"
    "$PYTHON" bench/serve.py --workload fixed --concurrency 1 4 16 64 --new-tokens 128 --requests 32 \
        --baseline-requests 16 --peer eager compiled --rounds 2 --samples 8 --json "$OUT/serve-cpu-$run.json"
  fi
  if step startup; then
    bash bench/startup.sh | tee "$OUT/startup-cpu-$run.txt"
  fi
done
if step qwen; then
  "$PYTHON" bench/decode.py --shape qwen2.5-0.5b --batches 1 4 --new-tokens 16 --repeats 2 \
      --compile off --json "$OUT/decode-cpu-qwen2.5-0.5b.json"
fi
"$PYTHON" bench/targets.py --decode "$OUT"/decode-cpu-[0-9]*.json --serve "$OUT"/serve-cpu-[0-9]*.json \
    --serve-task "$OUT"/serve-cpu-task-[0-9]*.json --startup "$OUT"/startup-cpu-[0-9]*.txt \
    --gpu "$OUT/decode-gpu.json" | tee "$OUT/targets-cpu.md"
