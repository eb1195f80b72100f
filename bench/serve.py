"""Serving benchmark: the HTTP server under 1, 4, 16 and 64 concurrent clients, next to HF generate().

In the manner of vLLM's `bench serve`: the server under load, and Hugging Face
`generate()` one request at a time, in one run on one machine.

What it does:
  1. starts `python -m service` on a checkpoint (default: the bundled model) in
     a subprocess exactly as `make serve` does: nothing but the port and the
     checkpoint is set unless a flag asks (`--threads`, `--device`,
     `--compile`), so it runs the server's defaults (compile=auto, threads:
     every CPU but one); it waits up to 600 s until the server is ready (a
     first start compiles for minutes) and records what it runs (/info).
     Every server started here (this one and the peers) runs at nice 10
     (`--server-nice`): the client shares the machine's CPUs with them, and a
     client starved of CPU measures itself (on 2 cores at 64 clients it kept
     about 15 of its 64 requests in flight in some runs);
  2. for each concurrency level, runs that many clients over a fixed set of
     prompts (fixed seed; `--requests` per level, at least eight per
     client: every client starts at once, and that first wave, a burst of
     new connections and prefills, is then an eighth of the requests rather
     than half, so p50 TTFT describes the steady state; the first wave's
     own TTFT is reported beside it). `--workload fixed`:
     Countdown-format prompts streamed with `ignore_eos`, so every request
     yields exactly `--new-tokens` tokens; `--workload task`: the bundled
     task's held-out problems, each ending at EOS as a user's would. Each
     client streams `/v1/generate` and records time to first token (TTFT), the gaps
     between consecutive token events (inter-token latency, ITL) and
     end-to-end latency (E2E). The clients are `bench/loadgen.py`'s lean HTTP
     client (`--client httpx` for httpx's, about four times the CPU per event);
  3. reads the server's peak resident memory (VmHWM in /proc/<pid>/status)
     after the sweep, then stops the server;
  4. loads the same checkpoint in this process and runs `model.generate()` at
     its fastest thread count and dtype (probed first: the server's dtype and
     float32), before the server starts and again after it stops (the
     machine's speed drifts over minutes: bracketing the sweep keeps a drift
     from favouring either side; the baseline row is both runs together, each
     also reported, and the ratio to it uses the faster run),
     (do_sample, top_k=0, temperature 1; with `fixed`, the same number of new
     tokens forced with min_new_tokens; with `task`, ending at EOS) one prompt
     at a time, with TTFT and ITL from a
     streamer's token callbacks;
  4b. with `--samples N` (e.g. 8), the n-samples workload: each prompt once as
     one request of n=N (one prefill, N rows) and once as N separate requests,
     with the same rows in flight (`--samples-concurrency` clients of n=N
     against that many times N clients of one sample), the same output tokens
     (ignore_eos in `fixed`); reported: output tokens/s, TTFT and E2E of both,
     and the prompt tokens each prefilled (the server's
     introllm_prompt_tokens_total, which counts a request's prompt once
     whatever its n): the prefill saving. `--samples-only` skips the sweep;
  5. prints a table (request/s, output tokens/s, TTFT/ITL/E2E mean, p50, p99,
     failures) and two ratios (output tok/s at 16 clients over generate()'s faster run;
     p50 TTFT at 16 clients over 1 client), and writes it all as JSON with the
     machine (threads, load average before and after, torch version, device)
     and the model (parameter count; KV-cache bytes per sequence per token,
     2 * layers * kv_heads * head_dim * bytes per element of the serving dtype,
     computed here from the checkpoint's config since the server does not
     report its KV cache over HTTP). Exits 1 when any request failed.

    python bench/serve.py                         # bundled model, 1/4/16/64 clients, server defaults
    python bench/serve.py --compile false         # the same, server decode step not compiled
    python bench/serve.py --quick --tiny-random   # seconds: a smoke test (1 and 4 clients)
    python bench/serve.py --checkpoint DIR --concurrency 1 16 --requests 128 --json out.json
    python bench/serve.py --samples 8 --samples-only --no-baseline   # n=8 against 8 separate requests

JSON keys: checkpoint, settings (the flags), machine, server (overrides,
info, ready_s, peak_rss_mib, api_peak_rss_mib, ...), model (parameters, kv_bytes_per_token, ...), levels (one
row per concurrency level), baseline (the generate() row, or null), baseline_halves (its
runs before and after the server), samples (the n-samples comparison, or null), summary
(the two ratios, null when a level is missing), records (per request).

What it does not do: tune anything, compare GPUs, or measure GPU memory (the
peak RSS is host memory only; with `--url` it is not measured at all and the
model facts come from `--checkpoint`, which may not be what that server runs).
The baseline is never compiled. The two sides run one after the other (never at
once) so they do not compete for cores, but the clients share the machine with
the server. On a shared machine, compare numbers from the same run only.

With `--peer`, the peer (`transformers serve --continuous-batching`, eager and/or
compiled, each in the server's dtype and in float32 unless `--peer-dtypes` says
otherwise; its fastest variant counts) runs on the same prompts: by default after this server's sweep, one
server after another; with `--rounds R`, every server runs at once (an idle one
takes next to no CPU) and each peer level is measured in R rounds in which the
servers take turns, the order reversed every round, so that the machine's drift
over minutes weighs on both sides of a ratio alike. The JSON keeps each round's
ratio (peer_rounds).
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere

from bench.loadgen import Connection, HttpError  # noqa: E402
from model import load_checkpoint  # noqa: E402
from service.api.scheduler import encode_prompt  # noqa: E402
from service.settings import DEFAULT_CHECKPOINT, resolve_dtype  # noqa: E402
from training.tasks.countdown import DEFAULT_CONFIG, format_prompt, make_problem, split  # noqa: E402

DEFAULT_CONCURRENCY = [1, 4, 16, 64]
QUICK_CONCURRENCY = [1, 4]
READY_TIMEOUT_S = 600.0  # compiling the decode step takes 30-60 s on CPU
REQUEST_TIMEOUT_S = 600.0
CLIENTS = ("lean", "httpx")
DEFAULT_CLIENT = "lean"  # bench/loadgen.py: a fraction of httpx's CPU per event, on CPUs the servers share


@dataclass
class RequestRecord:
    ok: bool
    tokens: int = 0
    first_wave: bool = False  # one of the first `concurrency` requests, sent all at once
    ttft_s: float | None = None
    e2e_s: float | None = None
    error: str | None = None
    # Gaps between consecutive token events, in seconds (not written to the JSON records).
    itl_s: list[float] = field(default_factory=list, repr=False)


@dataclass
class Level:
    name: str
    concurrency: int
    requests: int
    wall_s: float
    records: list[RequestRecord] = field(repr=False)
    # This server's own mean TTFT and queue time over the level (`server_span_means`); empty for the peer
    # and generate(), which keep no such histograms.
    server_spans: dict[str, float | None] = field(default_factory=dict)

    def summary(self) -> dict:
        good = [r for r in self.records if r.ok]
        tokens = sum(r.tokens for r in good)
        ttfts = [r.ttft_s for r in good if r.ttft_s is not None]
        itls = [gap for r in good for gap in r.itl_s]  # pooled over requests
        e2es = [r.e2e_s for r in good if r.e2e_s is not None]
        first_wave = [r.ttft_s for r in good if r.first_wave and r.ttft_s is not None]
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "completed": len(good),
            "failures": len(self.records) - len(good),
            "output_tokens": tokens,
            "wall_s": round(self.wall_s, 3),
            "request_per_s": round(len(good) / self.wall_s, 3) if self.wall_s > 0 else None,
            "output_tokens_per_s": round(tokens / self.wall_s, 1) if self.wall_s > 0 else None,
            **_stats("ttft", ttfts),
            **_stats("itl", itls),
            **_stats("e2e", e2es),
            "ttft_first_wave_p50_ms": _ms(_quantile(first_wave, 0.50)),
            "server_ttft_mean_ms": self.server_spans.get("server_ttft_mean_ms"),
            "server_queue_mean_ms": self.server_spans.get("server_queue_mean_ms"),
            "errors": sorted({r.error for r in self.records if r.error})[:5],
        }


def _stats(prefix: str, values: list[float]) -> dict:
    """Mean, p50 and p99 in milliseconds (None when there is nothing to measure)."""
    mean = sum(values) / len(values) if values else None
    return {
        f"{prefix}_mean_ms": _ms(mean),
        f"{prefix}_p50_ms": _ms(_quantile(values, 0.50)),
        f"{prefix}_p99_ms": _ms(_quantile(values, 0.99)),
    }


def _quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default percentile)."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def fixed_prompts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [format_prompt(make_problem(rng)) for _ in range(count)]


def heldout_prompts(count: int, seed: int) -> list[str]:
    """The bundled task's held-out problems (training's split of that seed), the `task` workload's prompts."""
    _, heldout = split(DEFAULT_CONFIG, n_train=0, n_heldout=count, seed=seed)
    return [format_prompt(problem) for problem in heldout]


# Requests per client at least, per level: the first wave (every client at once) is then
# at most an eighth of a level's requests.
REQUESTS_PER_CLIENT = 8


def requests_for(concurrency: int, requested: int) -> int:
    """`--requests`, but at least `REQUESTS_PER_CLIENT` per client (see the module docstring)."""
    return max(requested, REQUESTS_PER_CLIENT * concurrency)


def serving_dtype(device: str) -> torch.dtype:
    """The server's dtype "auto" on `device` (service.settings.dtype_decision: bfloat16 on cuda and on a CPU with
    bfloat16 matmul instructions, else float32)."""
    return resolve_dtype("auto", torch.device(device))


def contender_dtypes(device: str) -> list[torch.dtype]:
    """The dtypes the peer and generate() are measured in, to compare against each at its best: the server's
    and float32 (the peer issue's setting), one of them where they are the same."""
    return list(dict.fromkeys([serving_dtype(device), torch.float32]))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def model_facts(checkpoint: Path, dtype: torch.dtype) -> dict:
    """Parameter count and KV-cache bytes per sequence per token, from the checkpoint's config alone.

    The model is built on the meta device: no weights are read and no memory is used.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoint)
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    element = torch.empty((), dtype=dtype).element_size()
    try:
        with torch.device("meta"):
            parameters = AutoModelForCausalLM.from_config(config).num_parameters()
    except Exception as exc:  # an architecture that cannot be built on meta: report, carry on
        print(f"parameter count unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
        parameters = None
    return {
        "model_type": getattr(config, "model_type", None),
        "parameters": parameters,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "dtype": str(dtype).removeprefix("torch."),
        "bytes_per_element": element,
        # keys and values, every layer, every KV head.
        "kv_bytes_per_token": 2 * layers * kv_heads * head_dim * element,
    }


# ---------------------------------------------------------------- the server side


class ServerProcess:
    """A server in a subprocess, on a free loopback port: by default `python -m service` started as
    `make serve` starts it.

    Only the port, the checkpoint and the settings in `overrides` (from this
    script's flags, none by default) are set: everything else is the server's
    default, so the numbers are those a user of `make serve` gets. `command`
    (with `{port}` in it) starts another server instead, e.g. the peer.
    """

    def __init__(self, checkpoint: Path, overrides: dict[str, str], command: list[str] | None = None,
                 health_path: str = "/health/ready", nice: int = 0) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("INTROLLM_")}
        env.update({
            "INTROLLM_CHECKPOINT": str(checkpoint),
            "INTROLLM_HOST": "127.0.0.1",
            "INTROLLM_PORT": str(self.port),
            **overrides,
        })
        argv = [part.format(port=self.port) for part in command] if command else [sys.executable, "-m", "service"]
        if nice:  # inherited by the processes the server starts (our engine process; the peer's threads)
            argv = ["nice", "-n", str(nice), *argv]
        self.health_path = health_path
        self.nice: int | None = None
        self.process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds until the health path answered 200."""
        start = time.monotonic()
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited during start-up:\n" + "".join(self.output[-40:]))
            try:
                if httpx.get(f"{self.url}{self.health_path}", timeout=2).status_code == 200:
                    self.nice = os.getpriority(os.PRIO_PROCESS, self.process.pid)  # as measured, not as asked
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # a benchmark may poll; the tests never do
        raise TimeoutError("server not ready in time:\n" + "".join(self.output[-40:]))

    def peak_rss_mib(self) -> tuple[float | None, float | None]:
        """Peak resident set size so far (VmHWM), in MiB, of the server's processes (the API process
        and its engine process) summed, and of the API process alone; None where /proc has no answer."""
        total = api = 0
        pids = [self.process.pid]
        while pids:
            pid = pids.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                pids += [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                return None, None
            peak = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
            total += peak
            api = api or peak  # the first one read is the API process
        # /proc reports kB.
        return (round(total / 1024, 1) if total else None), (round(api / 1024, 1) if api else None)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class StreamEvent:
    """What one SSE event of a server says: tokens that arrived in it, the final count, an error."""

    tokens: int = 0
    total: int | None = None  # the request's final token count, when the event reports one
    error: str | None = None


def introllm_event(event: dict) -> StreamEvent:
    """This server's `/v1/generate` stream: one `token` event per token."""
    if event.get("type") == "token":
        return StreamEvent(tokens=1)
    if "error" in event:
        return StreamEvent(error=event["error"]["message"][:120])
    return StreamEvent()


def openai_completion_event(event: dict) -> StreamEvent:
    """An OpenAI `/v1/completions` stream (the peer): a chunk of text per event, usage in the last one.

    A chunk may carry more than one token when the server batches them, so the
    token count comes from the final usage and each non-empty chunk is one arrival.
    """
    if "error" in event:
        error = event["error"]
        return StreamEvent(error=str(error.get("message", error) if isinstance(error, dict) else error)[:120])
    choices = event.get("choices") or [{}]
    usage = event.get("usage") or {}
    return StreamEvent(tokens=1 if choices[0].get("text") else 0, total=usage.get("completion_tokens"))


class _Tally:
    """One streamed request's token arrivals, fed an event payload at a time by either client."""

    def __init__(self, read_event: Callable[[dict], StreamEvent]) -> None:
        self.read_event = read_event
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []
        self.tokens = 0
        self.total: int | None = None
        self.error: str | None = None

    def on_event(self, data: bytes, now: float) -> None:
        if data == b"[DONE]" or self.error is not None:  # after an error, read on to the end of the body
            return
        event = self.read_event(json.loads(data))
        if event.error is not None:
            self.error = event.error
            return
        self.total = event.total if event.total is not None else self.total
        if event.tokens:
            self.tokens += event.tokens
            if self.first is None:
                self.first = now
            else:
                self.gaps.append(now - self.last)
            self.last = now

    def record(self, start: float, end: float) -> RequestRecord:
        """The request's record once its stream ended (a failed one if an event carried an error)."""
        if self.error is not None:
            return RequestRecord(ok=False, tokens=self.tokens, error=self.error)
        return RequestRecord(
            ok=True, tokens=self.tokens if self.total is None else self.total,
            ttft_s=None if self.first is None else self.first - start, e2e_s=end - start, itl_s=self.gaps,
        )

    def failed(self, exc: BaseException) -> RequestRecord:
        return RequestRecord(ok=False, tokens=self.tokens, error=f"{type(exc).__name__}: {exc}"[:120])


async def _one_request(
    client: httpx.AsyncClient, body: dict, path: str = "/v1/generate",
    read_event: Callable[[dict], StreamEvent] = introllm_event,
) -> RequestRecord:
    """One streamed request on httpx; token times taken as each event's line is read."""
    tally = _Tally(read_event)
    start = time.perf_counter()
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return RequestRecord(ok=False, error=f"HTTP {response.status_code}: {response.text[:120]}")
            async for line in response.aiter_lines():
                # Read on to the end of the body (past [DONE] and an error), as an SDK does: leaving the stream
                # before its last chunk makes httpx close the connection, and every request would open a new one.
                if line.startswith("data:"):
                    tally.on_event(line[5:].strip().encode(), time.perf_counter())
    except httpx.HTTPError as exc:
        return tally.failed(exc)
    return tally.record(start, time.perf_counter())


async def _one_request_lean(
    connection: Connection, body: dict, path: str, read_event: Callable[[dict], StreamEvent],
) -> RequestRecord:
    """One streamed request on the lean client; token times taken when their bytes arrived."""
    tally = _Tally(read_event)
    start = time.perf_counter()
    try:
        status, text = await connection.post(path, json.dumps(body).encode(), tally.on_event, REQUEST_TIMEOUT_S)
    except (HttpError, OSError, TimeoutError) as exc:
        return tally.failed(exc)
    end = time.perf_counter()
    if status != 200:
        return RequestRecord(ok=False, error=f"HTTP {status}: {text.decode(errors='replace')[:120]}")
    return tally.record(start, end)


async def run_level(
    url: str, prompts: list[str], concurrency: int, body: dict, *, name: str = "server",
    path: str = "/v1/generate", read_event: Callable[[dict], StreamEvent] = introllm_event,
    client: str = DEFAULT_CLIENT,
) -> Level:
    """`concurrency` clients, each taking the next prompt until none is left, each on one keep-alive
    connection; `client` "lean" (`bench/loadgen.py`) or "httpx"."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    records: list[RequestRecord] = []

    def next_request() -> tuple[str, bool]:
        first_wave = queue.qsize() > len(prompts) - concurrency
        return queue.get_nowait(), first_wave

    async def httpx_loop(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            prompt, first_wave = next_request()
            record = await _one_request(http, {**body, "prompt": prompt}, path, read_event)
            record.first_wave = first_wave
            records.append(record)

    async def lean_loop() -> None:
        connection: Connection | None = None
        try:
            while not queue.empty():
                prompt, first_wave = next_request()
                if connection is None or not connection.open:
                    try:
                        connection = await Connection.connect(url)
                    except OSError as exc:
                        records.append(RequestRecord(ok=False, error=f"{type(exc).__name__}: {exc}"[:120]))
                        continue
                record = await _one_request_lean(connection, {**body, "prompt": prompt}, path, read_event)
                record.first_wave = first_wave
                records.append(record)
        finally:
            if connection is not None:
                connection.close()

    if client == "lean":
        start = time.perf_counter()
        await asyncio.gather(*(lean_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    elif client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(REQUEST_TIMEOUT_S), limits=limits) as http:
            start = time.perf_counter()
            await asyncio.gather(*(httpx_loop(http) for _ in range(concurrency)))
            wall = time.perf_counter() - start
    else:
        raise ValueError(f"unknown client {client!r}")
    return Level(f"{name} c={concurrency}", concurrency, len(prompts), wall, records)


# ---------------------------------------------------------------- the peer


# The peer's continuous-batching settings, as the issue that asked for the comparison ran it.
PEER_FLAGS = ["--continuous-batching", "--cb-num-blocks", "256", "--cb-max-batch-tokens", "512"]


def peer_command(checkpoint: Path, device: str, compiled: bool, dtype: torch.dtype) -> list[str]:
    """`transformers serve --continuous-batching` on `checkpoint` (`{port}` is filled in by ServerProcess)."""
    executable = Path(sys.executable).with_name("transformers")
    return [
        str(executable), "serve", str(checkpoint), *PEER_FLAGS, *(["--compile"] if compiled else []),
        "--device", device, "--dtype", dtype_name(dtype),
        "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning",
    ]


def peer_body(checkpoint: Path, new_tokens: int, fixed_length: bool, seed: int) -> dict:
    """The peer's `/v1/completions` body for the same work as this server's requests.

    The peer's continuous batching takes its sampling settings from the first
    request it sees and keeps them, so every request (the warm-up too) sends the
    same full generation config: temperature 1 over the whole distribution
    (top_k 0, as this server samples), `new_tokens` at most, and for the fixed
    workload exactly `new_tokens` with an end-of-sequence id no token has, as
    this server's `ignore_eos` does.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    eos = config.vocab_size if fixed_length else config.eos_token_id
    generation = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": new_tokens,
                  "eos_token_id": eos, "pad_token_id": config.pad_token_id}
    return {"model": str(checkpoint), "stream": True, "max_tokens": new_tokens, "seed": seed,
            "generation_config": json.dumps(generation)}


def peer_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the peer must receive it: it adds no BOS, so the BOS text goes in front (this
    server's `encode_prompt` puts the BOS id there); both then see the same token ids."""
    return prompt if tokenizer.bos_token is None else tokenizer.bos_token + prompt


class Peer:
    """The peer server on the same checkpoint, prompts and sampling as this server's run: started on
    construction, `start` waits until it is ready and warms it up, `level` measures one concurrency level."""

    def __init__(self, checkpoint: Path, prompts: list[str], args: argparse.Namespace, device: str,
                 compiled: bool, dtype: torch.dtype) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.variant = peer_variant(compiled, dtype)
        self.name = f"peer {self.variant}"
        self.body = peer_body(checkpoint, args.new_tokens, args.workload == "fixed", args.seed)
        self.texts = [peer_prompt(tokenizer, prompt) for prompt in prompts]
        self.process = ServerProcess(checkpoint, {}, command=peer_command(checkpoint, device, compiled, dtype),
                                     health_path="/health", nice=args.server_nice)
        self.ready_s: float | None = None
        self.client = args.client

    def start(self) -> None:
        self.ready_s = self.process.wait_ready()
        # The first request fixes the peer's sampling settings (and loads its model): send it now.
        warm = self.level(1, 1, name="warm-up")
        if warm.records[0].error:
            raise RuntimeError(f"peer warm-up failed: {warm.records[0].error}\n" + "".join(self.process.output[-40:]))

    def level(self, concurrency: int, requests: int, name: str | None = None) -> Level:
        return asyncio.run(run_level(self.process.url, self.texts[:requests], concurrency, self.body,
                                     name=name or self.name, path="/v1/completions",
                                     read_event=openai_completion_event, client=self.client))

    def stop(self) -> None:
        self.process.stop()


def peer_variant(compiled: bool, dtype: torch.dtype) -> str:
    """A peer variant's name: "eager float32", "compiled bfloat16", ..."""
    return f"{'compiled' if compiled else 'eager'} {dtype_name(dtype)}"


def peer_variants(args: argparse.Namespace, device: str) -> dict[str, tuple[bool, torch.dtype]]:
    """Every peer variant to measure, by name: `--peer` (eager, compiled) in each of `--peer-dtypes` (default:
    `contender_dtypes`)."""
    dtypes = [getattr(torch, name) for name in args.peer_dtypes] if args.peer_dtypes else contender_dtypes(device)
    return {peer_variant(mode == "compiled", dtype): (mode == "compiled", dtype)
            for mode in args.peer for dtype in dtypes}


def run_peer(
    checkpoint: Path, prompts: list[str], concurrency: list[int], args: argparse.Namespace, device: str,
    compiled: bool, dtype: torch.dtype,
) -> tuple[list[Level], float]:
    """Starts the peer, runs `concurrency` levels on it, stops it. Returns the levels and its ready time."""
    peer = Peer(checkpoint, prompts, args, device, compiled, dtype)
    try:
        peer.start()
        levels = [peer.level(c, requests_for(c, args.requests)) for c in concurrency]
    finally:
        peer.stop()
    assert peer.ready_s is not None
    return levels, peer.ready_s


def run_rounds(
    url: str, peers: list[Peer], prompts: list[str], concurrency: int, body: dict, args: argparse.Namespace,
    ours: bool,
) -> tuple[Level | None, dict[str, Level], dict[str, list[float | None]]]:
    """One concurrency level measured in `args.rounds` rounds on servers that all run at once: this server
    (when `ours`) and each peer take turns, the order reversed every other round (A B C, C B A, ...), so a
    drift of the machine's speed over the rounds weighs on every side alike. Returns this server's level
    and each peer's (the rounds' records together, their walls summed), and per peer the ratio of output
    tok/s in each round."""
    requests = requests_for(concurrency, args.requests)
    turns: list[str] = (["ours"] if ours else []) + [peer.variant for peer in peers]
    by_variant = {peer.variant: peer for peer in peers}
    rounds: dict[str, list[Level]] = {turn: [] for turn in turns}
    before = server_span_totals(url) if ours else {}
    for index in range(args.rounds):
        for turn in turns if index % 2 == 0 else turns[::-1]:
            if turn == "ours":
                level = asyncio.run(run_level(url, prompts[:requests], concurrency, body, client=args.client))
            else:
                level = by_variant[turn].level(concurrency, requests)
            rounds[turn].append(level)
    ratios = {
        variant: [_ratio(a.summary()["output_tokens_per_s"], b.summary()["output_tokens_per_s"])
                  for a, b in zip(rounds["ours"], rounds[variant], strict=True)] if ours else []
        for variant in by_variant
    }
    our_level = None
    if ours:
        our_level = merged(rounds["ours"], f"server c={concurrency}")
        our_level.server_spans = server_span_means(before, server_span_totals(url))  # peers' turns leave it idle
    return our_level, {v: merged(rounds[v], f"{by_variant[v].name} c={concurrency}") for v in by_variant}, ratios


def metric_totals(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The server's samples of each metric name in `names`, summed over every label set."""
    totals = dict.fromkeys(names, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def prompt_tokens_prefilled(url: str) -> float:
    """The server's introllm_prompt_tokens_total, over every label set (a request's prompt counts once)."""
    return metric_totals(url, ("introllm_prompt_tokens_total",))["introllm_prompt_tokens_total"]


# This server's own latency histograms: the span it measures (arrival at the API process to the first token
# reaching it; arrival to the start of prefill), without the client's reading or the HTTP path around it.
SERVER_SPANS = {"server_ttft": "introllm_time_to_first_token_seconds",
                "server_queue": "introllm_request_queue_time_seconds"}


def server_span_totals(url: str) -> dict[str, float]:
    names = tuple(f"{metric}_{part}" for metric in SERVER_SPANS.values() for part in ("sum", "count"))
    return metric_totals(url, names)


def server_span_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """Mean of each server-side span (ms) over the requests between two `server_span_totals`."""
    means = {}
    for key, metric in SERVER_SPANS.items():
        count = after[f"{metric}_count"] - before[f"{metric}_count"]
        total = after[f"{metric}_sum"] - before[f"{metric}_sum"]
        means[f"{key}_mean_ms"] = _ms(total / count) if count > 0 else None
    return means


def run_samples(url: str, prompts: list[str], n: int, concurrency: int, body: dict, client: str) -> dict:
    """Each prompt as one request of n samples, then as n separate requests: the same rows in flight
    (`concurrency` clients of n against concurrency * n clients of one) and the same output tokens."""
    before = prompt_tokens_prefilled(url)
    shared = asyncio.run(run_level(url, prompts, concurrency, {**body, "n": n}, client=client))
    shared.name = f"n={n} x c={concurrency}"
    middle = prompt_tokens_prefilled(url)
    separate = asyncio.run(run_level(url, [p for p in prompts for _ in range(n)], concurrency * n, body,
                                     client=client))
    separate.name = f"{n} separate x c={concurrency}"
    after = prompt_tokens_prefilled(url)
    rows = {"shared": shared.summary(), "separate": separate.summary()}
    rows["shared"]["prompt_tokens_prefilled"] = middle - before
    rows["separate"]["prompt_tokens_prefilled"] = after - middle
    return {
        "n": n, "concurrency": concurrency, "prompts": len(prompts), **rows,
        "prefill_saving": _ratio(after - middle, middle - before),  # separate / shared prompt tokens
        "tokens_per_s_shared_over_separate": _ratio(rows["shared"]["output_tokens_per_s"],
                                                    rows["separate"]["output_tokens_per_s"]),
        "ttft_p50_shared_over_separate": _ratio(rows["shared"]["ttft_p50_ms"], rows["separate"]["ttft_p50_ms"]),
    }


# ---------------------------------------------------------------- the baseline


def merged(levels: list[Level], name: str) -> Level:
    """One level from runs of the same requests at different times: all records, walls summed."""
    return Level(name, levels[0].concurrency, sum(level.requests for level in levels),
                 sum(level.wall_s for level in levels), [r for level in levels for r in level.records])


def run_hf_generate(
    checkpoint: Path, prompts: list[str], new_tokens: int, seed: int, device: str, *, name: str,
    stop_at_eos: bool = False, dtype: torch.dtype | None = None,
) -> Level:
    """The same model with transformers' generate(), one request at a time, on the server's device, in `dtype`
    (default: the server's).

    `stop_at_eos`: end at the model's EOS as the server does (the `task`
    workload); otherwise exactly `new_tokens` are forced.
    """
    from transformers.generation.streamers import BaseStreamer

    ckpt = load_checkpoint(checkpoint, device, dtype or serving_dtype(device))
    model, tokenizer = ckpt.model, ckpt.tokenizer

    class TokenTimes(BaseStreamer):
        """Records when each generated token arrives (the first put() is the prompt; then one per token)."""

        def __init__(self) -> None:
            self.calls = 0
            self.times: list[float] = []

        def put(self, value) -> None:
            self.calls += 1
            if self.calls >= 2:
                self.times.append(time.perf_counter())

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
            streamer = TokenTimes()
            start = time.perf_counter()
            out = model.generate(
                ids, do_sample=True, top_k=0, temperature=1.0, max_new_tokens=new_tokens,
                min_new_tokens=0 if stop_at_eos else new_tokens, pad_token_id=tokenizer.pad_token_id,
                streamer=streamer,
            )
            end = time.perf_counter()
            produced = int(out.shape[1] - ids.shape[1])
            times = streamer.times
            records.append(RequestRecord(
                ok=True, tokens=produced, e2e_s=end - start, ttft_s=times[0] - start if times else None,
                itl_s=[later - earlier for earlier, later in zip(times, times[1:], strict=False)],
            ))
        wall = time.perf_counter() - wall_start
    return Level(name, 1, len(prompts), wall, records)


def fastest_generate(
    checkpoint: Path, prompts: list[str], new_tokens: int, seed: int, device: str, *, stop_at_eos: bool,
    threads: list[int], dtypes: list[torch.dtype],
) -> tuple[int, torch.dtype, list[dict]]:
    """The torch thread count and dtype at which generate() is fastest here, and each probe's row.

    The baseline is compared at its best: on small models more threads can be
    slower (on a 2-vCPU machine, 2 threads ran about three times slower than 1),
    and bfloat16, twice as fast as float32 for the server's batches on a CPU with
    bfloat16 instructions, was slower for generate()'s batch of one there; so each
    combination runs the same few prompts and the highest output tok/s wins.
    """
    rows = []
    for dtype in dtypes:
        for count in threads:
            torch.set_num_threads(count)
            level = run_hf_generate(checkpoint, prompts, new_tokens, seed, device, stop_at_eos=stop_at_eos,
                                    dtype=dtype, name=f"HF generate() probe {count} thread{'s' if count > 1 else ''}"
                                    f" {dtype_name(dtype)}")
            rows.append({**level.summary(), "threads": count, "dtype": dtype_name(dtype)})
    best = max(rows, key=lambda row: row["output_tokens_per_s"] or 0.0)
    torch.set_num_threads(best["threads"])
    return best["threads"], getattr(torch, best["dtype"]), rows


# ---------------------------------------------------------------- main


def _tiny_random_checkpoint(directory: Path) -> Path:
    from model import HeadConfig, TemperatureHead, TinyLMConfig, build_char_tokenizer, build_tiny_lm, save_checkpoint

    tokenizer = build_char_tokenizer()
    config = TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    model = build_tiny_lm(tokenizer, config)
    head = TemperatureHead(HeadConfig(hidden_size=config.hidden_size))
    return save_checkpoint(directory / "tiny-random", model, tokenizer, head, base_model="tiny-random")


TABLE_COLUMNS = [
    "name", "requests", "failures", "request_per_s", "output_tokens_per_s",
    "ttft_mean_ms", "ttft_p50_ms", "ttft_p99_ms", "ttft_first_wave_p50_ms", "itl_mean_ms", "itl_p50_ms", "itl_p99_ms",
    "e2e_mean_ms", "e2e_p50_ms", "e2e_p99_ms",
]


def _print_table(rows: list[dict], header: str) -> None:
    print(header)
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in TABLE_COLUMNS]
    print("  ".join(c.rjust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)))


def summary_ratios(levels: list[dict], baseline: dict | None, peers: dict[str, list[dict]] | None = None) -> dict:
    """The headline ratios: output tok/s at 16 clients over generate() (`baseline`: its faster run), p50 TTFT
    at 16 clients over 1, and per peer variant, output tok/s over the peer's at each concurrency both ran."""
    by_concurrency = {row["concurrency"]: row for row in levels}
    c1, c16 = by_concurrency.get(1), by_concurrency.get(16)
    over_peer = {
        variant: {
            str(row["concurrency"]): _ratio(
                by_concurrency.get(row["concurrency"], {}).get("output_tokens_per_s"), row["output_tokens_per_s"]
            )
            for row in rows
        }
        for variant, rows in (peers or {}).items()
    }
    return {
        "c16_over_generate": _ratio(
            c16 and c16["output_tokens_per_s"], baseline and baseline["output_tokens_per_s"]
        ),
        "ttft_p50_c16_over_c1": _ratio(c16 and c16["ttft_p50_ms"], c1 and c1["ttft_p50_ms"]),
        # The same growth as the server measures its own span (means: its histograms give no exact p50).
        "server_ttft_mean_c16_over_c1": _ratio(c16 and c16.get("server_ttft_mean_ms"),
                                               c1 and c1.get("server_ttft_mean_ms")),
        "over_peer": over_peer,
    }


def _load_avg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--tiny-random", action="store_true", help="use a random tiny checkpoint (smoke tests)")
    parser.add_argument("--url", help="benchmark a server already running here instead of starting one")
    parser.add_argument("--concurrency", type=int, nargs="+", default=DEFAULT_CONCURRENCY)
    parser.add_argument("--requests", type=int, default=64,
                        help="requests per concurrency level (at least 2 x the concurrency)")
    parser.add_argument("--baseline-requests", type=int, default=None, help="default: --requests")
    parser.add_argument("--new-tokens", type=int, default=64, help="max_new_tokens of each request")
    parser.add_argument("--workload", choices=["fixed", "task"], default="fixed",
                        help="fixed: Countdown-format prompts, exactly --new-tokens tokens each (ignore_eos); "
                        "task: the bundled task's held-out problems, each ending at EOS (at most --new-tokens)")
    parser.add_argument("--temperature-mode", choices=["learned", "fixed", "entropy"], default="learned")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads, server and baseline alike (default: each side's own default)")
    parser.add_argument("--baseline-threads", type=int, default=None,
                        help="torch threads of the generate() baseline alone (default: --threads, else the "
                        "fastest of 1 to the CPU count, probed here first)")
    parser.add_argument("--peer", nargs="*", choices=["eager", "compiled"], default=[],
                        help="also run the peer server, `transformers serve --continuous-batching` (eager, and/or "
                        "with its --compile), on the same prompts at temperature 1 over the whole distribution")
    parser.add_argument("--peer-dtypes", nargs="+", choices=["float32", "bfloat16", "float16"], default=None,
                        help="the peer's dtypes, each variant in each (default: the server's dtype and float32, the "
                        "peer at its best whichever is faster here)")
    parser.add_argument("--peer-concurrency", type=int, nargs="+", default=[16, 64],
                        help="the peer's concurrency levels (each also in --concurrency for a ratio)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --peer: run this server and the peers at once and measure each peer level in "
                        "this many rounds, the servers taking turns in an order reversed every round (default 1: "
                        "this server's sweep, then each peer's, one after the other)")
    parser.add_argument("--client", choices=CLIENTS, default=DEFAULT_CLIENT,
                        help="the load generator's HTTP client: 'lean' (bench/loadgen.py, default: an asyncio "
                        "protocol that parses the stream as it arrives, a fraction of httpx's CPU per event) or "
                        "'httpx' (httpx's streaming API, as before 2026-12-04)")
    parser.add_argument("--server-nice", type=int, default=10,
                        help="niceness of every server started here, this one and the peers alike (default 10; 0: "
                        "none). This client shares the machine's CPUs with them; on 2 cores, starved of CPU at 64 "
                        "clients, it kept only about 15 of its 64 requests in flight in some runs (the servers "
                        "decoding batches of 10 instead of 30 at half the throughput). A client on its own "
                        "machine never takes CPU from a server; the niceness gives this one the CPU it needs first.")
    parser.add_argument("--device", default=None,
                        help="server and baseline alike (default: cuda when available, else cpu; dtype: bfloat16 "
                        "on cuda, float32 on cpu)")
    parser.add_argument("--compile", nargs="?", const="true", choices=["auto", "true", "false"], default=None,
                        help="the server's INTROLLM_COMPILE (default: the server's default, auto)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run: concurrency 1 and 4, 4 requests (8 at 4 clients), 8 tokens")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--samples", type=int, default=0,
                        help="also run the n-samples workload with this n (e.g. 8): one request of n=N per "
                        "prompt against N separate requests")
    parser.add_argument("--samples-concurrency", type=int, default=2,
                        help="clients of the n-samples workload (rows in flight: this times --samples)")
    parser.add_argument("--samples-only", action="store_true", help="skip the concurrency sweep")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "runs" / "bench" / "serve.json")
    args = parser.parse_args()
    if args.quick:
        args.concurrency, args.requests, args.new_tokens = QUICK_CONCURRENCY, 4, 8
        args.baseline_requests = args.baseline_requests or 2
    if args.samples_only:
        args.concurrency = []
    if min(args.concurrency, default=1) < 1 or args.requests < 1 or args.new_tokens < 1 or args.rounds < 1:
        sys.exit("--concurrency, --requests, --new-tokens and --rounds must be at least 1")
    if args.rounds > 1 and args.url:
        sys.exit("--rounds runs the peers beside a server this script starts: it cannot take --url")
    if not 0 <= args.server_nice <= 19:
        sys.exit("--server-nice must be from 0 to 19")
    baseline_threads = args.baseline_threads or args.threads
    if baseline_threads is not None:
        torch.set_num_threads(baseline_threads)
    sweep_threads = baseline_threads is None and not args.no_baseline
    load_before = _load_avg()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = serving_dtype(device)
    # Only what the flags ask for; the rest is the server's default (what `make serve` runs).
    overrides = {
        **({} if args.threads is None else {"INTROLLM_TORCH_THREADS": str(args.threads)}),
        **({} if args.device is None else {"INTROLLM_DEVICE": args.device}),
        **({} if args.compile is None else {"INTROLLM_COMPILE": args.compile}),
    }

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _tiny_random_checkpoint(Path(scratch)) if args.tiny_random else args.checkpoint
        if not args.url and not checkpoint.is_dir():
            sys.exit(f"checkpoint not found: {checkpoint} (train it, pass --checkpoint, or use --tiny-random)")
        facts = model_facts(checkpoint, dtype) if checkpoint.is_dir() else None
        fixed_length = args.workload == "fixed"
        body: dict = {"max_new_tokens": args.new_tokens, "ignore_eos": fixed_length, "stream": True,
                      "seed": args.seed}
        if args.temperature_mode == "fixed":
            body["temperature"] = 1.0
        else:
            body["temperature_mode"] = args.temperature_mode
        samples_prompts = max(2 * args.samples_concurrency, args.requests // max(args.samples, 1))
        levels_run = [*args.concurrency, *(args.peer_concurrency if args.peer else [])]
        count = max(max((requests_for(c, args.requests) for c in levels_run), default=0),
                    args.baseline_requests or 0, samples_prompts)
        prompts = fixed_prompts(count, args.seed) if fixed_length else heldout_prompts(count, args.seed)

        baseline_prompts = prompts[: args.baseline_requests or args.requests]
        thread_probes: list[dict] = []
        baseline_dtype = dtype
        if sweep_threads:
            _, baseline_dtype, thread_probes = fastest_generate(
                checkpoint, baseline_prompts[:4], args.new_tokens, args.seed, device, stop_at_eos=not fixed_length,
                threads=list(range(1, (os.cpu_count() or 1) + 1)), dtypes=contender_dtypes(device),
            )

        def baseline_run(when: str) -> Level | None:
            if args.no_baseline:
                return None
            return run_hf_generate(checkpoint, baseline_prompts, args.new_tokens, args.seed, device,
                                   stop_at_eos=not fixed_length, dtype=baseline_dtype, name=f"HF generate() {when}")

        # The baseline runs before and after the server, never beside it: this VM's speed drifts
        # over minutes, and bracketing the sweep keeps a drift from favouring either side.
        baseline_before = baseline_run("before")
        server = None
        if not args.url:
            server = ServerProcess(checkpoint, overrides, nice=args.server_nice)
        # With --rounds the peers run beside this server, each idle while another is measured (after a warm-up
        # request, 10 s idle took 3 ticks of CPU for the peer's process and 2 for this server's processes
        # together: 0.2 to 0.3% of a CPU), and their levels are measured in turns.
        side_by_side = args.rounds > 1 and bool(args.peer)
        running_peers: list[Peer] = []
        levels: list[Level] = []
        variants = peer_variants(args, device)
        peers: dict[str, list[Level]] = {variant: [] for variant in variants}
        peer_ready_s: dict[str, float] = {}
        round_ratios: dict[str, dict[str, list[float | None]]] = {variant: {} for variant in variants}
        ready_s = peak_rss_mib = api_peak_rss_mib = info = samples = None
        try:
            url = args.url or server.url
            if server is not None:
                ready_s = server.wait_ready()
            if side_by_side:  # after this server is ready, so that its ready time is a start-up's alone
                running_peers = [Peer(checkpoint, prompts, args, device, compiled, peer_dtype)
                                 for compiled, peer_dtype in variants.values()]
            info = httpx.get(f"{url}/info", timeout=30).json()  # what the server runs with (threads aside)
            for peer in running_peers:
                peer.start()
                peer_ready_s[peer.variant] = peer.ready_s
            in_turns = set(args.peer_concurrency) if side_by_side else set()
            for concurrency in args.concurrency:
                if concurrency in in_turns:
                    continue
                level_prompts = prompts[: requests_for(concurrency, args.requests)]
                before = server_span_totals(url)
                level = asyncio.run(run_level(url, level_prompts, concurrency, body, client=args.client))
                level.server_spans = server_span_means(before, server_span_totals(url))
                levels.append(level)
            for concurrency in sorted(in_turns):
                our_level, peer_levels, ratios_by_round = run_rounds(
                    url, running_peers, prompts, concurrency, body, args, ours=concurrency in args.concurrency)
                if our_level is not None:
                    levels.append(our_level)
                for variant, level in peer_levels.items():
                    peers[variant].append(level)
                    round_ratios[variant][str(concurrency)] = ratios_by_round[variant]
            levels.sort(key=lambda level: level.concurrency)
            if args.samples > 1:
                samples = run_samples(url, prompts[:samples_prompts], args.samples, args.samples_concurrency, body,
                                      args.client)
            if server is not None:
                peak_rss_mib, api_peak_rss_mib = server.peak_rss_mib()
        finally:
            for peer in running_peers:
                peer.stop()
            if server is not None:
                server.stop()
        if not side_by_side:
            for variant, (compiled, peer_dtype) in variants.items():
                peers[variant], peer_ready_s[variant] = run_peer(
                    checkpoint, prompts, args.peer_concurrency, args, device, compiled, peer_dtype)
        baseline_after = baseline_run("after")
        baseline_halves = [level for level in (baseline_before, baseline_after) if level is not None]
        baseline = merged(baseline_halves, "HF generate() c=1") if baseline_halves else None
    load_after = _load_avg()

    rows = [level.summary() for level in levels]
    baseline_row = baseline.summary() if baseline is not None else None
    halves = [level.summary() for level in baseline_halves]
    # generate() at its best: the faster of its runs before and after the servers (on 2 cores its 2-thread runs
    # after them ran at half the speed of those before in some runs, with nothing else running).
    fastest_half = max(halves, key=lambda row: row["output_tokens_per_s"] or 0.0) if halves else None
    peer_rows = {variant: [level.summary() for level in levels] for variant, levels in peers.items()}
    ratios = summary_ratios(rows, fastest_half, peer_rows)
    checkpoint_name = "tiny-random" if args.tiny_random else str(checkpoint)
    # The server's own dtype when it reports one (a server at --url runs its settings, not this script's).
    server_dtype = (info or {}).get("dtype") or str(dtype).removeprefix("torch.")
    header = (
        f"checkpoint={checkpoint_name}  workload={args.workload}  new_tokens={args.new_tokens}  "
        f"mode={args.temperature_mode}  "
        f"device={device}  server dtype={server_dtype}  server overrides={overrides or 'none'}  "
        f"baseline threads={torch.get_num_threads()}  cpus={os.cpu_count()}  load={load_before} -> {load_after}  "
        f"torch={torch.__version__}"
    )
    all_peer_rows = [row for variant_rows in peer_rows.values() for row in variant_rows]
    table = rows + all_peer_rows + ([baseline_row] if baseline_row else []) + halves + thread_probes
    if table:
        _print_table(table, header)
    else:
        print(header)
    if facts is not None:
        print(f"model: {facts['parameters']} parameters, KV cache {facts['kv_bytes_per_token']} bytes "
              f"per sequence per token ({facts['dtype']})")
    print(f"server: peak RSS {peak_rss_mib} MiB (API process {api_peak_rss_mib} MiB), "
          f"ready after {None if ready_s is None else round(ready_s, 1)} s")
    print(f"output tok/s at 16 clients / generate() (its faster run): {ratios['c16_over_generate']}   "
          f"p50 TTFT at 16 clients / 1 client: {ratios['ttft_p50_c16_over_c1']}")
    print("mean TTFT, client-measured / as the server measures it (its histogram; queue to prefill in brackets): "
          + "   ".join(f"c={row['concurrency']}: {row['ttft_mean_ms']} / {row['server_ttft_mean_ms']} "
                       f"({row['server_queue_mean_ms']}) ms" for row in rows)
          + f"   server-side c16/c1: {ratios['server_ttft_mean_c16_over_c1']}")
    for variant, by_level in ratios["over_peer"].items():
        in_rounds = round_ratios.get(variant, {})
        print(f"output tok/s / peer ({variant}): "
              + "   ".join(f"{clients} clients: {ratio}" + (f" (rounds: {in_rounds[clients]})" if clients in
                                                          in_rounds else "")
                         for clients, ratio in by_level.items()))
    if samples is not None:
        _print_table([samples["shared"], samples["separate"]], f"n-samples workload: n={samples['n']}, "
                     f"{samples['prompts']} prompts, {samples['concurrency'] * samples['n']} rows in flight")
        print(f"prompt tokens prefilled: shared {samples['shared']['prompt_tokens_prefilled']:.0f}, separate "
              f"{samples['separate']['prompt_tokens_prefilled']:.0f} (saving x{samples['prefill_saving']}); "
              f"output tok/s shared / separate: {samples['tokens_per_s_shared_over_separate']}; "
              f"p50 TTFT shared / separate: {samples['ttft_p50_shared_over_separate']}")

    all_levels = levels + [lv for variant in peers.values() for lv in variant] + (
        [baseline] if baseline is not None else [])
    result = {
        "checkpoint": checkpoint_name,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "baseline_dtype": dtype_name(baseline_dtype),  # generate()'s, with "threads": the fastest probed
            "load_avg_before": load_before, "load_avg_after": load_after,
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "device": device,
        },
        "server": {
            "started_here": server is not None, "url": args.url, "overrides": overrides,
            "nice": None if server is None else server.nice,
            "ready_s": None if ready_s is None else round(ready_s, 2), "peak_rss_mib": peak_rss_mib,
            "api_peak_rss_mib": api_peak_rss_mib, "info": info,
        },
        "model": facts,
        "levels": rows,
        "baseline": baseline_row,
        "baseline_halves": halves,  # the baseline's run before the server and its run after
        "samples": samples,
        "baseline_thread_probes": thread_probes,  # generate() per thread count and dtype; the fastest is the baseline
        "peers": peer_rows,  # per variant ("eager float32", ...): transformers serve --continuous-batching
        "peer_ready_s": {variant: round(value, 2) for variant, value in peer_ready_s.items()},
        # With --rounds: per variant and concurrency, this server's output tok/s over the peer's in each round.
        "peer_rounds": {"rounds": args.rounds, "side_by_side": side_by_side, "ratios": round_ratios},
        "peer_command": {variant: peer_command(checkpoint, device, *variants[variant]) for variant in peers},
        "summary": ratios,
        "records": {
            level.name: [{k: v for k, v in asdict(r).items() if k != "itl_s"} for r in level.records]
            for level in all_levels
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    sample_rows = [samples["shared"], samples["separate"]] if samples is not None else []
    if any(row["failures"] for row in rows + all_peer_rows + sample_rows + ([baseline_row] if baseline_row else [])):
        sys.exit(1)


if __name__ == "__main__":
    main()
