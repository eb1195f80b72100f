"""The load generator's own cost: the lean client (bench/loadgen.py) against httpx on the same server.

Starts this server once as bench/serve.py does (defaults, nice 10), then runs the same 16-client level with each
client in turn, order lean, httpx, httpx, lean (ROUNDS times), recording this process's CPU seconds per SSE event,
the output tok/s, p50 TTFT and the server processes' CPU seconds. Run from the repository root:

    .venv/bin/python bench/results/2026-12-04-lean-client/client_cost.py [task|fixed]  > .../client-cost-<workload>.txt
"""
import asyncio, os, sys, time
from pathlib import Path
sys.path.insert(0, os.getcwd())
from bench.serve import (ServerProcess, fixed_prompts, heldout_prompts, run_level)  # noqa: E402
from service.settings import DEFAULT_CHECKPOINT  # noqa: E402

workload = sys.argv[1] if len(sys.argv) > 1 else "fixed"
rounds = int(os.environ.get("ROUNDS", 2))
concurrency, requests = int(os.environ.get("CONC", 16)), int(os.environ.get("REQ", 256))
fixed = workload == "fixed"
body = {"max_new_tokens": 128 if fixed else 64, "ignore_eos": fixed, "stream": True, "seed": 0,
        "temperature_mode": "learned"}
prompts = (fixed_prompts if fixed else heldout_prompts)(requests, 0)


def server_cpu_s(root: int) -> float:
    """CPU seconds of `root` and its descendants (the API process and its engine process)."""
    total, pids = 0.0, [root]
    while pids:
        pid = pids.pop()
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            for task in os.listdir(f"/proc/{pid}/task"):
                pids += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
        except OSError:
            pass
    return total


server = ServerProcess(Path(DEFAULT_CHECKPOINT), {}, nice=10)
try:
    print(f"ready in {server.wait_ready():.1f} s; {workload}, {concurrency} clients, {requests} requests a level")
    asyncio.run(run_level(server.url, prompts[:32], concurrency, body))  # warm-up
    print("| client | output tok/s | events | client CPU s | client CPU us/event | server CPU s | p50 TTFT ms | p50 ITL ms | failures |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _ in range(rounds):
        for client in ("lean", "httpx", "httpx", "lean"):
            cpu0, srv0 = time.process_time(), server_cpu_s(server.process.pid)
            level = asyncio.run(run_level(server.url, prompts, concurrency, body, client=client))
            cpu, srv = time.process_time() - cpu0, server_cpu_s(server.process.pid) - srv0
            s = level.summary()
            events = sum(len(r.itl_s) + 1 for r in level.records if r.ok)
            print(f"| {client} | {s['output_tokens_per_s']} | {events} | {cpu:.2f} | {1e6 * cpu / events:.0f} | {srv:.2f} "
                  f"| {s['ttft_p50_ms']} | {s['itl_p50_ms']} | {s['failures']} |", flush=True)
finally:
    server.stop()
