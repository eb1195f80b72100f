#!/usr/bin/env bash
# The Kubernetes capacity plan's table (docker/kubernetes/README.md): one replica as the CPU overlay runs it
# (max_running_requests 32, as the base ConfigMap; every other setting the default), streaming, learned tau,
# 128 output tokens per request, at 16, 26 (where the HPA's target settles) and 64 concurrent requests, in
# dtype auto (bfloat16 on this CPU) and in float32 (what auto picks on a CPU without bfloat16 instructions).
# The server runs at nice 10 as bench/serve.py starts its servers. Run from the repository root.
set -euo pipefail
OUT=bench/results/2026-12-04-capacity
RUN=${RUN:-1}  # suffix of the output files
PORT=8141
for dtype in auto float32; do
  INTROLLM_PORT=$PORT INTROLLM_MAX_RUNNING_REQUESTS=32 INTROLLM_DTYPE=$dtype nice -n 10 .venv/bin/introllm-serve \
    > "$OUT/server-$dtype-$RUN.log" 2>&1 &
  server=$!
  for _ in $(seq 1 120); do curl -sf "localhost:$PORT/health/ready" > /dev/null && break; sleep 2; done
  .venv/bin/python bench/serve.py --url "http://127.0.0.1:$PORT" --no-baseline --workload fixed --new-tokens 128 \
    --concurrency 16 26 64 --requests 256 --json "$OUT/capacity-$dtype-$RUN.json" | tee "$OUT/capacity-$dtype-$RUN.txt"
  kill -TERM $server; wait $server || true
done
