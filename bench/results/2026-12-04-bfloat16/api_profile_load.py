"""Start the server (defaults, nice 10), load it with 16 lean clients on 128 tokens, three levels of 256 requests; the
API process pid goes to /work/runs/prof/pids for py-spy (see api-profile.txt). Run from the repository root."""
import asyncio, os, sys, time, subprocess
from pathlib import Path
sys.path.insert(0, os.getcwd())
from bench.serve import ServerProcess, fixed_prompts, run_level
from service.settings import DEFAULT_CHECKPOINT
body = {"max_new_tokens": 128, "ignore_eos": True, "stream": True, "seed": 0, "temperature_mode": "learned"}
prompts = fixed_prompts(512, 0)
server = ServerProcess(Path(DEFAULT_CHECKPOINT), {}, nice=10)
try:
    server.wait_ready()
    kids = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout.split()
    print("api", server.process.pid, "children", kids, flush=True)
    open("/work/runs/prof/pids", "w").write(f"{server.process.pid} {' '.join(kids)}\n")
    for _ in range(3):
        s = asyncio.run(run_level(server.url, prompts[:256], 16, body)).summary()
        print(s["output_tokens_per_s"], s["ttft_p50_ms"], flush=True)
finally:
    server.stop()
