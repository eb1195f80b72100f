"""Scratch: 64 clients on the task workload against one server (started here, at SERVER_PREFIX="nice -n 10" or not), RUNS times:
through bench/serve.py --url, the server's running/waiting gauges polled every 50 ms, its decode steps and mean rows, and each
process's CPU seconds. Run from the repository root. Outputs: server-nice-0.txt, server-nice-10.txt."""
import json, os, subprocess, sys, time, urllib.request
PORT = 8431
conc, req, runs = int(os.environ.get("CONC", 64)), int(os.environ.get("REQ", 640)), int(os.environ.get("RUNS", 3))
env = {k: v for k, v in os.environ.items() if not k.startswith("INTROLLM_")} | {"INTROLLM_PORT": str(PORT)}
server = subprocess.Popen(os.environ.get("SERVER_PREFIX", "").split() + [".venv/bin/introllm-serve"], env=env, stdout=open("bench/results/2026-12-03-niced/client-starvation/server.log", "w"),
                          stderr=subprocess.STDOUT, cwd=os.getcwd())
for _ in range(180):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health/ready", timeout=1); break
    except Exception:
        time.sleep(1)
def procs():
    out = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
                if "introllm" in cmd or "multiprocessing" in cmd:
                    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                    out[pid] = (int(f[11]) + int(f[12]), cmd[:70])
            except OSError:
                pass
    return out
def batches():
    text = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode()
    vals = {}
    for line in text.splitlines():
        if line.startswith("introllm_batch_size_count") or line.startswith("introllm_batch_size_sum"):
            vals[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return vals
import threading
def gauges(stop, out):
    while not stop.is_set():
        text = urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode()
        g = {}
        for line in text.splitlines():
            for name in ("introllm_num_requests_running", "introllm_num_requests_waiting"):
                if line.startswith(name + "{"):
                    g[name] = float(line.rsplit(" ", 1)[1])
        out.append((time.time(), g.get("introllm_num_requests_running", -1), g.get("introllm_num_requests_waiting", -1)))
        time.sleep(0.05)
for run in range(runs):
    stop, samples = threading.Event(), []
    th = threading.Thread(target=gauges, args=(stop, samples)); th.start()
    b0 = batches()
    before = procs()
    t0 = time.time()
    client = subprocess.run([".venv/bin/python", "bench/serve.py", "--url", f"http://127.0.0.1:{PORT}", "--workload",
                             "task", "--concurrency", str(conc), "--requests", str(req), "--no-baseline", "--json",
                             f"bench/results/2026-12-03-niced/client-starvation/run-{run}.json"], cwd=os.getcwd(), capture_output=True, text=True)
    wall = time.time() - t0
    after = procs()
    stop.set(); th.join()
    busy = [(r, w) for _, r, w in samples if r > 0 or w > 0]
    if busy:
        import statistics
        print(f"  gauges while busy ({len(busy)} samples): running mean {statistics.mean(r for r, _ in busy):.1f}, "
              f"waiting mean {statistics.mean(w for _, w in busy):.1f}, running+waiting mean "
              f"{statistics.mean(r + w for r, w in busy):.1f}")
    b1 = batches()
    steps = b1.get("introllm_batch_size_count", 0) - b0.get("introllm_batch_size_count", 0)
    rows = b1.get("introllm_batch_size_sum", 0) - b0.get("introllm_batch_size_sum", 0)
    print(f"  decode steps {steps:.0f}, mean rows {rows / max(steps, 1):.1f}")
    ru = os.times()
    data = json.load(open(f"bench/results/2026-12-03-niced/client-starvation/run-{run}.json"))
    level = data["levels"][0]
    print(f"run {run}: wall {wall:.1f}s", {k: level.get(k) for k in ("output_tokens_per_s", "ttft_p50_ms", "wall_s", "server_queue_mean_ms")
                                        if k in level} if isinstance(level, dict) else "")
    print(f"  client cpu (children so far) user+sys {ru.children_user + ru.children_system:.1f}s")
    for pid, (t, cmd) in after.items():
        if pid in before:
            print(f"  {pid} {cmd!r}: {(t - before[pid][0]) / 100:.1f} s cpu")
server.terminate(); server.wait()
