"""Scratch: start the server (compile off, one thread, INTROLLM_DTYPE=argv[1]) on $CKPT, send 4 requests, SIGTERM it;
argv[2] times. Counts the stops whose output holds "terminate called" (the engine process aborting in interpreter
teardown). Run from anywhere with the venv, e.g. with `yes > /dev/null &` beside it for load:
    CKPT=<the tests' tiny checkpoint> .venv/bin/python bench/results/2026-12-04-bfloat16/stop_loop.py bfloat16 40
Before 30fd328: 1 of 40; after: 0 of 80."""
import os, signal, subprocess, sys, time, httpx, socket
dtype, n = sys.argv[1], int(sys.argv[2])
hits = 0
for i in range(n):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    env = {**os.environ, "INTROLLM_CHECKPOINT": os.environ.get("CKPT", "/work/main/checkpoints/introllm-countdown-tiny"), "INTROLLM_PORT": str(port), "INTROLLM_DEVICE": "cpu", "INTROLLM_TORCH_THREADS": "1",
           "INTROLLM_COMPILE": "false", "INTROLLM_DTYPE": dtype, "OMP_NUM_THREADS": "1", "INTROLLM_LOG_LEVEL": "debug",
           "INTROLLM_DRAIN_GRACE_S": "5"}
    out = open(f"/tmp/term_{dtype}_{i}.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=os.path.dirname(os.path.abspath(__file__)) + "/../../..")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        for _ in range(300):
            try:
                if c.get("/health/ready").status_code == 200: break
            except httpx.TransportError: pass
            time.sleep(0.1)
        for k in range(4):
            c.post("/v1/generate", json={"prompt": "hello", "max_new_tokens": 16, "seed": k})
    p.send_signal(signal.SIGTERM); rc = p.wait(60); out.close()
    text = open(f"/tmp/term_{dtype}_{i}.log").read()
    hit = "terminate called" in text
    hits += hit
    if hit or rc != 0: print(i, "rc", rc, "terminate" if hit else "", flush=True)
print(dtype, "hits", hits, "of", n, flush=True)
