#!/usr/bin/env bash
# Start-up to ready, as `make serve` starts the server (its defaults: compile=auto), twice: with an
# empty compile cache (cold), then again with the cache the first start wrote (warm). The cache is
# a temporary folder, so the user's own cache is neither used nor touched. Prints one line per start.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVE=${SERVE:-.venv/bin/introllm-serve}
PORT=${PORT:-8395}
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT
for run in cold warm; do
  start=$(date +%s.%N)
  INTROLLM_PORT=$PORT INTROLLM_COMPILE_CACHE_DIR=$cache TORCHINDUCTOR_CACHE_DIR=$cache "$SERVE" > "$cache/$run.log" 2>&1 &
  pid=$!
  until curl -sf "localhost:$PORT/health/ready" > /dev/null; do
    kill -0 $pid 2> /dev/null || { cat "$cache/$run.log"; exit 1; }
    sleep 0.2
  done
  end=$(date +%s.%N)
  echo "$run: ready in $(echo "$end - $start" | bc) s"
  kill -TERM $pid
  wait $pid
done
