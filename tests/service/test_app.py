"""App-level behaviour on real servers: bearer auth, admission bounds (429),
draining, and a killed engine process."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from service.api.app import token_limits
from tests.service.support import (
    LiveServer,
    decode_paused,
    read_sse,
    settings_for,
    sse_json,
    start_server,
    stop_server,
)

LONG = 400
KEY = "test-key-123"


@pytest.fixture(scope="module")
def auth_server(checkpoint_dir) -> Iterator[LiveServer]:
    live = start_server(settings_for(checkpoint_dir, api_key=KEY))
    yield live
    stop_server(live)


@pytest.fixture()
def own_server(checkpoint_dir) -> Iterator[LiveServer]:
    """A server a test may break (drain, kill the engine)."""
    live = start_server(settings_for(checkpoint_dir, drain_grace_s=0.5))
    yield live
    stop_server(live)


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize("header", [None, "Bearer wrong-key", f"Basic {KEY}", KEY])
def test_generation_needs_the_right_bearer_key_when_auth_is_on(auth_server, header):
    headers = {} if header is None else {"Authorization": header}
    with auth_server.client() as client:
        response = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 2}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "unauthorized"


def test_the_right_key_is_accepted_and_health_and_metrics_stay_open(auth_server):
    with auth_server.client() as client:
        ok = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 2},
                         headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
        for path in ("/health/live", "/health/ready", "/metrics", "/info"):
            assert client.get(path).status_code == 200, path
    completion = openai.OpenAI(base_url=f"{auth_server.url}/v1", api_key=KEY, max_retries=0).completions.create(
        model="tiny-test", prompt="a", max_tokens=2
    )
    assert completion.usage.completion_tokens <= 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{auth_server.url}/v1", api_key="nope", max_retries=0).completions.create(
            model="tiny-test", prompt="a", max_tokens=2
        )
    assert auth_server.metrics()['introllm_request_failure_total{model="tiny-test",reason="unauthorized"}'] >= 1


# ---------------------------------------------------------------- admission bounds


def test_a_full_server_answers_429_at_once_even_for_streams_and_refusals_hold_no_slot(checkpoint_dir):
    live = start_server(settings_for(checkpoint_dir, max_running_requests=1, max_waiting_requests=1))
    long = {"prompt": "1 2>3\n", "max_new_tokens": LONG, "ignore_eos": True, "stream": True}
    engine = live.scheduler.engine
    try:
        with decode_paused(engine), live.client() as first, live.client() as second, live.client() as third:
            with first.stream("POST", "/v1/generate", json=long) as running:
                lines = running.iter_lines()  # kept: dropping the iterator closes the connection
                assert next(line for line in lines if line.startswith("data:"))  # it runs
                with second.stream("POST", "/v1/generate", json=long) as waiting:
                    assert waiting.status_code == 200  # admitted before its stream opened: it waits
                    assert engine.wait_until(lambda running, waiting: (running, waiting) == (1, 1), timeout=60)
                    refused = third.post("/v1/generate", json={"prompt": "a"})
                    with third.stream("POST", "/v1/generate", json=long) as refused_stream:
                        refused_stream.read()
            # all streams closed: the two admitted requests are cancelled (still paused: nothing else ends them)
            live.wait_idle()
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded"
        assert refused_stream.status_code == 429 and refused_stream.json()["error"]["type"] == "overloaded"
        assert engine.load() == (0, 0)
        with live.client() as client:
            assert client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 2}).status_code == 200
        metrics = live.metrics()
        assert metrics['introllm_request_failure_total{model="tiny-test",reason="overloaded"}'] == 2
        assert metrics['introllm_request_failure_total{model="tiny-test",reason="cancelled"}'] == 2
    finally:
        stop_server(live)


# ---------------------------------------------------------------- lifecycle


def test_draining_fails_readiness_refuses_new_requests_and_times_out_running_ones(own_server):
    long = {"prompt": "1 2>3\n", "max_new_tokens": LONG, "ignore_eos": True, "stream": True}
    engine = own_server.scheduler.engine
    with (
        decode_paused(engine), own_server.client() as client,
        client.stream("POST", "/v1/generate", json=long) as running,
    ):
        lines = running.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        own_server.scheduler.begin_drain(grace_s=0.0)
        with own_server.client() as other:
            ready = other.get("/health/ready")
            live = other.get("/health/live")
            refused = other.post("/v1/generate", json={"prompt": "a"})
        engine.resume()  # the next step finds the deadline passed
        rest = sse_json(read_sse(lines))
    assert ready.status_code == 503 and ready.text == "draining"
    assert live.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["type"] == "unavailable"
    assert rest[-1]["finish_reason"] == "timeout" and rest[-1]["usage"]["completion_tokens"] < LONG


def test_a_killed_engine_process_fails_requests_in_flight_at_once_and_health_and_new_requests(own_server):
    engine = own_server.scheduler.engine
    long = {"prompt": "1 2>3\n", "max_new_tokens": LONG, "ignore_eos": True}
    with decode_paused(engine), own_server.client() as client, own_server.client() as other:
        with client.stream("POST", "/v1/generate", json={**long, "stream": True}) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # running
            plain = ThreadPoolExecutor(1).submit(other.post, "/v1/generate", json=long)
            assert engine.wait_until(lambda running, waiting: running + waiting == 2, timeout=60)
            os.kill(engine.pid, signal.SIGKILL)
            events = read_sse(lines)  # the stream ends: no [DONE], an error event
        victim = plain.result(timeout=60)
        ready, live = client.get("/health/ready"), client.get("/health/live")
        late = client.post("/v1/generate", json={"prompt": "a"})
    name, data = events[-1]
    assert name == "error" and json.loads(data)["error"]["type"] == "unavailable"
    assert "engine process died" in json.loads(data)["error"]["message"]
    assert victim.status_code == 503 and victim.json()["error"]["type"] == "unavailable"
    assert ready.status_code == 503 and live.status_code == 503 and live.text == "engine process died"
    assert late.status_code == 503 and late.headers["retry-after"]
    assert engine.load() == (0, 0)


@pytest.mark.parametrize(
    ("context", "expected"),
    [(None, (128, 400, 16)), (512, (128, 400, 16)), (256, (128, 255, 16)), (100, (99, 99, 16)), (10, (9, 9, 9))],
    ids=["no-context", "context-above-the-settings", "context-256", "context-100", "context-10"],
)
def test_token_limits_are_the_settings_cut_to_what_the_context_allows(checkpoint_dir, context, expected):
    # The settings: 128 prompt tokens, 400 new tokens, 16 by default.
    assert token_limits(settings_for(checkpoint_dir), context) == expected
