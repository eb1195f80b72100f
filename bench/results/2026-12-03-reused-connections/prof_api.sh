#!/usr/bin/env bash
# Run as: REQ=1600 DUR=15 bash bench/results/2026-12-03-reused-connections/prof_api.sh (needs py-spy: pip install py-spy; not a project dependency).
# Then aggregate $OUT/api.txt and $OUT/client.txt (py-spy raw, collapsed stacks) by frame.
# Profile the API process (and the engine process) under 16 closed-loop clients on the task workload.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/introllm-prof}
mkdir -p $OUT
INTROLLM_PORT=8397 .venv/bin/introllm-serve > $OUT/server.log 2>&1 &
api=$!
until curl -sf localhost:8397/health/ready > /dev/null; do kill -0 $api || exit 1; sleep 0.5; done
engine=$(pgrep -P $api -f "multiprocessing" | head -1 || true)
echo "api $api engine $engine"
.venv/bin/python bench/serve.py --url http://127.0.0.1:8397 --workload ${WORKLOAD:-task} --concurrency 16 --requests ${REQ:-800} --no-baseline --json $OUT/serve.json > $OUT/serve.out 2>&1 &
client=$!
sleep ${DELAY:-15}
.venv/bin/py-spy record -p $api -d ${DUR:-12} -r 200 -f raw -o $OUT/api.txt --nonblocking > /dev/null 2>&1 &
.venv/bin/py-spy record -p $client -d ${DUR:-12} -r 200 -f raw -o $OUT/client.txt --nonblocking > /dev/null 2>&1 &
wait $client || true
sleep 1
kill -TERM $api; wait $api || true
grep -E "server c=16" -A0 $OUT/serve.out || tail -5 $OUT/serve.out
