#!/bin/bash
# A/B: the sampler inside the step graph (old, ae927c5) against one sampler graph after the forward (new).
set -u
OUT=/work/runs/ab-split
PY=/work/main/.venv/bin/python
serve() {  # $1 worktree, $2 log; starts a server and echoes its pid and port
  local port=$((18000 + RANDOM % 1000))
  (cd $1 && PYTHONPATH=$1 env -u INTROLLM_PREFILL_IN_STEP INTROLLM_CHECKPOINT=$1/checkpoints/introllm-countdown-tiny INTROLLM_HOST=127.0.0.1 INTROLLM_PORT=$port $PY -m service > $2 2>&1) &
  local pid=$!
  for i in $(seq 1 1200); do curl -sf localhost:$port/health/ready >/dev/null && break; sleep 0.25; done
  echo "$pid $port"
}
for tree in old new; do
  read pid port < <(serve /work/ab/$tree $OUT/cold-$tree.log)
  echo "$tree cold start done"; pkill -TERM -f "python -m service"; sleep 6
done
for pair in "1 old" "1 new" "2 new" "2 old"; do
  set -- $pair; round=$1; tree=$2
  read pid port < <(serve /work/ab/$tree $OUT/server-$tree-$round.log)
  echo "round $round $tree on $port"
  $PY /work/main/bench/serve.py --url http://127.0.0.1:$port --workload fixed --new-tokens 128 --concurrency 1 16 --requests 24 --no-baseline --json $OUT/fixed-$tree-$round.json 2>&1 | grep "server c="
  $PY /work/main/bench/serve.py --url http://127.0.0.1:$port --workload task --concurrency 1 16 --requests 40 --no-baseline --json $OUT/task-$tree-$round.json 2>&1 | grep "server c="
  pkill -TERM -f "python -m service"; sleep 5
done
