"""With the lean client: this server at its defaults (A) against the same with one setting changed (B).

Both servers up at once (an idle one takes next to no CPU), both at nice 10 as bench/serve.py starts them; the
same 1-, 16- and 64-client levels alternate between them, order A, B, B, A (ROUNDS times). Run from the
repository root:

    .venv/bin/python bench/results/2026-12-04-lean-client/ab.py task INTROLLM_TORCH_THREADS=2 > threads-ab-task.txt
    .venv/bin/python bench/results/2026-12-04-lean-client/ab.py task INTROLLM_DTYPE=float32 > ../2026-12-04-bfloat16/dtype-ab-task.txt
"""
import asyncio, os, sys
from pathlib import Path
sys.path.insert(0, os.getcwd())
from bench.serve import ServerProcess, fixed_prompts, heldout_prompts, requests_for, run_level  # noqa: E402
from service.settings import DEFAULT_CHECKPOINT  # noqa: E402

workload = sys.argv[1] if len(sys.argv) > 1 else "task"
rounds = int(os.environ.get("ROUNDS", 2))
fixed = workload == "fixed"
body = {"max_new_tokens": 128 if fixed else 64, "ignore_eos": fixed, "stream": True, "seed": 0,
        "temperature_mode": "learned"}
prompts = (fixed_prompts if fixed else heldout_prompts)(512, 0)
key, _, value = sys.argv[2].partition("=")
changed = f"{key.removeprefix('INTROLLM_').lower()}={value}"
servers = {"default": ServerProcess(Path(DEFAULT_CHECKPOINT), {}, nice=10),
           changed: ServerProcess(Path(DEFAULT_CHECKPOINT), {key: value}, nice=10)}
try:
    for server in servers.values():
        print(f"ready in {server.wait_ready():.1f} s", flush=True)
        asyncio.run(run_level(server.url, prompts[:32], 16, body))
    print(f"{workload}: output tok/s and p50 TTFT ms, lean client")
    print("| clients | server | round | tok/s | p50 TTFT ms |")
    print("|---|---|---|---|---|")
    for concurrency in (1, 16, 64):
        for r in range(rounds):
            for name in ("default", changed, changed, "default"):
                n = requests_for(concurrency, 256) if concurrency > 1 else 32
                s = asyncio.run(run_level(servers[name].url, prompts[:n], concurrency, body)).summary()
                print(f"| {concurrency} | {name} | {r} | {s['output_tokens_per_s']} | {s['ttft_p50_ms']} |", flush=True)
finally:
    for server in servers.values():
        server.stop()
