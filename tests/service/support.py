"""Helpers of the service tests: the reference decode, real servers, metrics and SSE parsing.

`LiveServer` runs the app under uvicorn in a background thread on a loopback
socket that is bound and listening before the thread starts, so a client can
connect at once: its first request is answered when start-up (load, warm-up)
is done, and a failed start-up closes the socket. No sleeping, no polling.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from fastapi import FastAPI

from model import (
    Checkpoint,
    CounterNoise,
    Generation,
    HeadConfig,
    LearnedTemperature,
    SamplingParams,
    TemperatureController,
    TemperatureHead,
    TinyLMConfig,
    build_char_tokenizer,
    build_tiny_lm,
    draft_summary_size,
    generate,
    save_checkpoint,
)
from service.api.app import create_app
from service.api.scheduler import Scheduler, encode_prompt
from service.settings import Settings

TEST_LM = TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


def save_draft_head_checkpoint(path: Path, *, perturb_draft_linear: bool = False) -> Path:
    """A tiny checkpoint whose head reads the greedy draft (hidden, tau_prev, draft summary), its output layer
    (and, when asked, the zero-initialised draft path) perturbed so that its inputs move its temperatures."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_lm(tokenizer, TEST_LM, seed=0)
    torch.manual_seed(0)
    d = TEST_LM.hidden_size
    head = TemperatureHead(HeadConfig(hidden_size=d, inputs=("hidden", "tau_prev", "draft"),
                                      draft_size=draft_summary_size(d), draft_linear=8))
    with torch.no_grad():
        head.fc2.weight.normal_(0, 0.5)
        if perturb_draft_linear:
            head.draft_linear.weight.normal_(0, 0.5)
    return save_checkpoint(path, model, tokenizer, head, base_model=path.name)


# Tests that compile the engine's step for the session checkpoint (8 slots of 512 tokens): one xdist worker
# runs them all (tests/conftest.py), so the first compiles the graph (about a minute on a cold inductor cache)
# and the rest reuse it in that process.
COMPILED_ENGINE = pytest.mark.xdist_group("compiled-engine")


HTTP_TIMEOUT = httpx.Timeout(120.0)  # generous: the machine may be shared with a training job
# Prompts of different lengths, in the default model's format and not.
PROMPTS = [
    "3 5 7 2>24\n",
    "1 2>3\n",
    "10 20 30 40 50>150\n",
    "hello",
    "x",
    "The quick brown fox jumps over the lazy dog.",
    "9 9>81\n",
    "12 7 3>2\n",
]


def reference(
    checkpoint: Checkpoint,
    prompt: str,
    *,
    max_new_tokens: int,
    seed: int = 0,
    controller: TemperatureController | None = None,
    greedy: bool = False,
    stop_at_eos: bool = True,
    top_k: int = 0,
    top_p: float = 1.0,
) -> Generation:
    """model.decode.generate on one prompt alone: what the server must reproduce."""
    ids = torch.tensor([encode_prompt(checkpoint.tokenizer, prompt)])
    params = SamplingParams(
        max_new_tokens=max_new_tokens, greedy=greedy, top_k=top_k, top_p=top_p,
        eos_token_id=checkpoint.tokenizer.eos_token_id if stop_at_eos else None,
    )
    controller = controller or LearnedTemperature(checkpoint.head)
    return generate(checkpoint.model, controller, ids, params, CounterNoise.for_rows([seed], 0))


def reference_tokens(generation: Generation) -> list[int]:
    return generation.tokens[0, : int(generation.lengths[0])].tolist()


def settings_for(checkpoint_dir: Path, **overrides) -> Settings:
    values = dict(
        # compile off and one thread: the defaults compile for minutes and take every CPU but one.
        # forkserver: every engine process after the first starts without importing torch again.
        checkpoint=checkpoint_dir, device="cpu", dtype="float32", compile=False, torch_threads=1,
        engine_start_method="forkserver",
        max_running_requests=8, max_waiting_requests=32,
        max_new_tokens=400, default_max_new_tokens=16, max_prompt_tokens=128, drain_grace_s=5.0,
    )
    values.update(overrides)
    return Settings(**values)



@dataclass
class LiveServer:
    app: FastAPI
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def scheduler(self) -> Scheduler:
        return self.app.state.scheduler

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT, **kwargs)

    def async_client(self, **kwargs) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=HTTP_TIMEOUT, **kwargs)

    def metrics(self) -> dict[str, float]:
        return scrape(self.url)

    def wait_idle(self) -> None:
        assert self.scheduler.engine.wait_idle(timeout=60), "requests still in the engine"


def start_server(settings: Settings) -> LiveServer:
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    live = LiveServer(app=app, url=f"http://127.0.0.1:{port}", server=server, thread=thread)
    with live.client() as client:  # answered once start-up is complete
        assert client.get("/health/ready").status_code == 200
    return live



@contextmanager
def reaped(process: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """A child server, killed at the end unless it already exited: a failing test leaves no orphan."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stop_server(live: LiveServer) -> None:
    live.server.should_exit = True
    live.thread.join(timeout=60)
    assert not live.thread.is_alive(), "server did not stop"


def scrape(url: str) -> dict[str, float]:
    """/metrics as {'name{label="v",...}': value}, labels sorted, for exact lookups."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=HTTP_TIMEOUT).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def read_sse(lines: Iterator[str]) -> list[tuple[str | None, str]]:
    """(event name, data) per Server-Sent Event, in order."""
    events: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())
    if data:
        events.append((name, "\n".join(data)))
    return events


def sse_json(events: list[tuple[str | None, str]]) -> list[dict]:
    """The JSON payloads of a stream that ended with [DONE] (asserted)."""
    assert events and events[-1][1] == "[DONE]", events[-3:]
    return [json.loads(data) for _, data in events[:-1]]


@contextmanager
def decode_paused(engine) -> Iterator[None]:
    """Decode steps of `engine` paused for the block (resumed at its end, whatever happens).

    Deterministic stand-in for "a request that is still running": while
    paused, a request is admitted, prefilled and gets its first token, then
    stays in the batch until the test has done what it needs (cancel, drain,
    stop). Works on `engine.Engine` and on the engine process's client alike
    (there a message, applied in order with the requests sent after it).
    """
    engine.pause()
    try:
        yield
    finally:
        if engine.alive:
            engine.resume()

