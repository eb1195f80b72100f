"""Serving benchmark: the HTTP server under 1, 4 and 16 concurrent clients, next to
Hugging Face `generate()` one request at a time, in one run on one machine.

What it does:
  1. starts `python -m service` on a checkpoint (default: the bundled model) in
     a subprocess and waits until it is ready;
  2. for each concurrency level, runs that many clients over a fixed set of
     Countdown prompts (fixed seed); each client streams `/v1/generate` with
     `ignore_eos` so every request yields exactly `--new-tokens` tokens, and
     records time to first token (TTFT) and end-to-end latency;
  3. stops the server, loads the same checkpoint in this process and runs
     `model.generate()` (do_sample, top_k=0, temperature 1, the same number of
     new tokens forced with min_new_tokens) one prompt at a time, with TTFT
     from a streamer;
  4. prints a table (output tokens/s, TTFT p50/p99, E2E p50, failures) and
     writes it as JSON with the machine's thread count and load.

    python bench/serve.py                     # bundled model, 1/4/16 clients
    python bench/serve.py --quick --tiny-random   # seconds: a smoke test
    python bench/serve.py --checkpoint DIR --concurrency 1 4 16 64 --json out.json

What it does not do: tune anything or compare GPUs; the two sides run one
after the other (never at once) so they do not compete for cores. On a shared
machine, compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere

from model import load_checkpoint  # noqa: E402
from service.scheduler import encode_prompt  # noqa: E402
from service.settings import DEFAULT_CHECKPOINT  # noqa: E402
from training.tasks.countdown import format_prompt, make_problem  # noqa: E402


@dataclass
class RequestRecord:
    ok: bool
    tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    error: str | None = None


@dataclass
class Level:
    name: str
    concurrency: int
    requests: int
    wall_s: float
    records: list[RequestRecord] = field(repr=False)

    def summary(self) -> dict:
        good = [r for r in self.records if r.ok]
        tokens = sum(r.tokens for r in good)
        ttfts = [r.ttft_s for r in good if r.ttft_s is not None]
        e2es = [r.e2e_s for r in good if r.e2e_s is not None]
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "failures": len(self.records) - len(good),
            "output_tokens": tokens,
            "wall_s": round(self.wall_s, 3),
            "output_tokens_per_s": round(tokens / self.wall_s, 1) if self.wall_s > 0 else None,
            "request_per_s": round(len(good) / self.wall_s, 2) if self.wall_s > 0 else None,
            "ttft_p50_ms": _ms(_quantile(ttfts, 0.5)),
            "ttft_p99_ms": _ms(_quantile(ttfts, 0.99)),
            "e2e_p50_ms": _ms(_quantile(e2es, 0.5)),
            "errors": sorted({r.error for r in self.records if r.error})[:5],
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def fixed_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [format_prompt(make_problem(rng)) for _ in range(count)]


# ---------------------------------------------------------------- the server side


class ServerProcess:
    """`python -m service` in a subprocess, on a free loopback port."""

    def __init__(self, checkpoint: Path, threads: int, max_running: int, device: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {
            **os.environ,
            "INTROLLM_CHECKPOINT": str(checkpoint),
            "INTROLLM_HOST": "127.0.0.1",
            "INTROLLM_PORT": str(self.port),
            "INTROLLM_TORCH_THREADS": str(threads),
            "INTROLLM_MAX_RUNNING_REQUESTS": str(max_running),
            "INTROLLM_MAX_WAITING_REQUESTS": "1024",
            "INTROLLM_LOG_LEVEL": "warning",
            "INTROLLM_DEVICE": device,
            "OMP_NUM_THREADS": str(threads),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited during start-up:\n" + "".join(self.output[-40:]))
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # a benchmark may poll; the tests never do
        raise TimeoutError("server not ready in time:\n" + "".join(self.output[-40:]))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def _one_request(client: httpx.AsyncClient, body: dict) -> RequestRecord:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        async with client.stream("POST", "/v1/generate", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return RequestRecord(ok=False, error=f"HTTP {response.status_code}: {response.text[:120]}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if event.get("type") == "token":
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
                elif "error" in event:
                    return RequestRecord(ok=False, tokens=tokens, error=event["error"]["message"][:120])
    except httpx.HTTPError as exc:
        return RequestRecord(ok=False, tokens=tokens, error=f"{type(exc).__name__}: {exc}"[:120])
    end = time.perf_counter()
    return RequestRecord(ok=True, tokens=tokens, ttft_s=None if first is None else first - start, e2e_s=end - start)


async def run_level(url: str, prompts: list[str], concurrency: int, body: dict) -> Level:
    """`concurrency` clients, each taking the next prompt until none is left."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    records: list[RequestRecord] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            records.append(await _one_request(client, {**body, "prompt": prompt}))

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return Level(f"server c={concurrency}", concurrency, len(prompts), wall, records)


# ---------------------------------------------------------------- the baseline


def run_hf_generate(checkpoint: Path, prompts: list[str], new_tokens: int, seed: int, device: str) -> Level:
    """The same model with transformers' generate(), one request at a time, on the server's device and dtype."""
    from transformers.generation.streamers import BaseStreamer

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32  # the server's "auto"
    ckpt = load_checkpoint(checkpoint, device, dtype)
    model, tokenizer = ckpt.model, ckpt.tokenizer

    class FirstToken(BaseStreamer):
        """Records when the first generated token arrives (the first put() is the prompt)."""

        def __init__(self) -> None:
            self.calls = 0
            self.first: float | None = None

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2 and self.first is None:
                self.first = time.perf_counter()

        def end(self) -> None:
            pass

    torch.manual_seed(seed)
    records: list[RequestRecord] = []
    with torch.inference_mode():
        # Warm-up, as the server's lifespan does.
        model.generate(torch.tensor([encode_prompt(tokenizer, prompts[0])], device=device), max_new_tokens=2,
                       do_sample=True,
                       top_k=0, pad_token_id=tokenizer.pad_token_id)
        wall_start = time.perf_counter()
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
            streamer = FirstToken()
            start = time.perf_counter()
            out = model.generate(
                ids, do_sample=True, top_k=0, temperature=1.0, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id, streamer=streamer,
            )
            end = time.perf_counter()
            produced = int(out.shape[1] - ids.shape[1])
            first = streamer.first
            records.append(RequestRecord(ok=True, tokens=produced, e2e_s=end - start,
                                         ttft_s=None if first is None else first - start))
        wall = time.perf_counter() - wall_start
    return Level("HF generate() c=1", 1, len(prompts), wall, records)


# ---------------------------------------------------------------- main


def _tiny_random_checkpoint(directory: Path) -> Path:
    from model import HeadConfig, TemperatureHead, TinyLMConfig, build_char_tokenizer, build_tiny_lm, save_checkpoint

    tokenizer = build_char_tokenizer()
    config = TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    model = build_tiny_lm(tokenizer, config)
    head = TemperatureHead(HeadConfig(hidden_size=config.hidden_size))
    return save_checkpoint(directory / "tiny-random", model, tokenizer, head, base_model="tiny-random")


def _print_table(rows: list[dict], header: str) -> None:
    print(header)
    columns = ["name", "requests", "failures", "output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--tiny-random", action="store_true", help="use a random tiny checkpoint (smoke tests)")
    parser.add_argument("--url", help="benchmark a server already running here instead of starting one")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--baseline-requests", type=int, default=None, help="default: --requests")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--temperature-mode", choices=["learned", "fixed", "entropy"], default="learned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, server and baseline alike")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="server and baseline alike (dtype: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--quick", action="store_true", help="tiny run: concurrency 1 and 2, 4 requests, 8 tokens")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "runs" / "bench" / "serve.json")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.requests, args.new_tokens = [1, 2], 4, 8
        args.baseline_requests = args.baseline_requests or 2
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _tiny_random_checkpoint(Path(scratch)) if args.tiny_random else args.checkpoint
        if not args.url and not checkpoint.is_dir():
            sys.exit(f"checkpoint not found: {checkpoint} (train it, pass --checkpoint, or use --tiny-random)")
        body: dict = {"max_new_tokens": args.new_tokens, "ignore_eos": True, "stream": True, "seed": args.seed}
        if args.temperature_mode == "fixed":
            body["temperature"] = 1.0
        else:
            body["temperature_mode"] = args.temperature_mode
        prompts = fixed_prompts(args.requests, args.seed)

        server = None if args.url else ServerProcess(checkpoint, args.threads, max(args.concurrency), args.device)
        levels: list[Level] = []
        try:
            url = args.url or server.url
            if server is not None:
                server.wait_ready()
            for concurrency in args.concurrency:
                levels.append(asyncio.run(run_level(url, prompts, concurrency, body)))
        finally:
            if server is not None:
                server.stop()
        if not args.no_baseline:
            baseline_prompts = prompts[: args.baseline_requests or args.requests]
            levels.append(run_hf_generate(checkpoint, baseline_prompts, args.new_tokens, args.seed, args.device))

    rows = [level.summary() for level in levels]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    header = (
        f"checkpoint={'tiny-random' if args.tiny_random else checkpoint}  new_tokens={args.new_tokens}  "
        f"mode={args.temperature_mode}  device={args.device}  threads={args.threads}  cpus={os.cpu_count()}  "
        f"load={load}"
    )
    _print_table(rows, header)
    result = {
        "checkpoint": "tiny-random" if args.tiny_random else str(checkpoint),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg": load,
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "levels": rows,
        "records": {level.name: [asdict(r) for r in level.records] for level in levels},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if any(row["failures"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
