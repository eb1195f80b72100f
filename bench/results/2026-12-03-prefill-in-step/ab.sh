#!/bin/bash
# A/B of INTROLLM_PREFILL_IN_STEP on one server build: alternating, same commands.
set -u
cd /work/main
OUT=${OUT:-/work/runs/ab-pis}
mkdir -p $OUT
# A first start compiles (cold) and saves the graphs; the A/B starts load them.
port=$((17000 + RANDOM % 1000))
start=$(date +%s.%N)
INTROLLM_CHECKPOINT=checkpoints/introllm-countdown-tiny INTROLLM_HOST=127.0.0.1 INTROLLM_PORT=$port .venv/bin/python -m service > $OUT/server-cold.log 2>&1 &
pid=$!
for i in $(seq 1 1200); do curl -sf localhost:$port/health/ready >/dev/null && break; sleep 0.25; done
echo "cold start ready after $(echo "$(date +%s.%N) - $start" | bc) s"
kill -TERM $pid; wait $pid
for pair in "1 true" "1 false" "2 false" "2 true"; do
  set -- $pair; round=$1; flag=$2
  {
    port=$((18000 + RANDOM % 1000))
    env -u INTROLLM_PREFILL_IN_STEP INTROLLM_CHECKPOINT=checkpoints/introllm-countdown-tiny INTROLLM_HOST=127.0.0.1 INTROLLM_PORT=$port INTROLLM_PREFILL_IN_STEP=$flag .venv/bin/python -m service > $OUT/server-$flag-$round.log 2>&1 &
    pid=$!
    for i in $(seq 1 600); do curl -sf localhost:$port/health/ready >/dev/null && break; sleep 0.5; done
    echo "round $round flag $flag ready after $i polls"
    .venv/bin/python bench/serve.py --url http://127.0.0.1:$port --workload task --concurrency 1 16 --requests 48 --no-baseline --json $OUT/task-$flag-$round.json 2>&1 | tail -6
    .venv/bin/python bench/serve.py --url http://127.0.0.1:$port --workload fixed --new-tokens 128 --concurrency 1 16 --requests 32 --no-baseline --json $OUT/fixed-$flag-$round.json 2>&1 | tail -6
    kill -TERM $pid; wait $pid
  }
done
