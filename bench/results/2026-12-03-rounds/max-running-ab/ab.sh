#!/usr/bin/env bash
# max_running_requests 32 (the default) against 64, both servers up at once, interleaved A B B A.
# SERVER_PREFIX (e.g. "nice -n 10", as bench/serve.py starts servers since 2026-12-03-niced) goes before each server.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
OUT=${OUT:-/work/runs/ab-running}
start() {  # port, max running
  INTROLLM_PORT=$1 INTROLLM_MAX_RUNNING_REQUESTS=$2 nohup ${SERVER_PREFIX:-} .venv/bin/introllm-serve > "$OUT/server-$2.log" 2>&1 &
}
start 8411 32
start 8412 64
for port in 8411 8412; do
  for i in $(seq 300); do curl -sf http://127.0.0.1:$port/health/ready >/dev/null && break; sleep 1; done
done
run() {  # tag, port
  .venv/bin/python bench/serve.py --url http://127.0.0.1:$2 --workload task --concurrency 16 64 --new-tokens 64 \
      --requests 32 --no-baseline --json "$OUT/task-$1.json" | grep -E "server c=" || true
  .venv/bin/python bench/serve.py --url http://127.0.0.1:$2 --workload fixed --concurrency 64 --new-tokens 128 \
      --requests 32 --no-baseline --json "$OUT/fixed-$1.json" | grep -E "server c=" || true
}
run a1-32 8411; run b1-64 8412; run b2-64 8412; run a2-32 8411
pkill -f "introllm-serve" || true
