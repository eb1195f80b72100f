"""n samples over HTTP: `choices` on /v1/generate (streamed or not, each equal to its row's reference), the
official openai client's n= on both OpenAI routes, usage, limits, metrics and the log line per choice."""

from __future__ import annotations

import logging

import openai
import pytest

from service.messages import row_seed
from tests.service.support import (
    LiveServer,
    decode_paused,
    read_sse,
    reference,
    reference_tokens,
    settings_for,
    sse_json,
    start_server,
    stop_server,
)

PROMPT = "3 5 7 2>24\n"
MODEL = "tiny-test"


def generate(server: LiveServer, body: dict) -> dict:
    with server.client() as client:
        reply = client.post("/v1/generate", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_n_8_returns_8_choices_each_the_reference_decode_of_its_row_seed(server, checkpoint):
    body = generate(server, {"prompt": PROMPT, "n": 8, "return_temperatures": True, "seed": 77,
                             "max_new_tokens": 12, "ignore_eos": True})
    assert [c["index"] for c in body["choices"]] == list(range(8))
    for i, choice in enumerate(body["choices"]):
        expected = reference(checkpoint, PROMPT, max_new_tokens=12, seed=row_seed(77, i), stop_at_eos=False)
        assert [t["id"] for t in choice["tokens"]] == reference_tokens(expected), i
        assert [t["temperature"] for t in choice["tokens"]] == pytest.approx(expected.taus[0].tolist())
        assert choice["seed"] == row_seed(77, i) and choice["finish_reason"] == "length"
        assert choice["temperature"]["mean"] == pytest.approx(float(expected.taus[0].mean()))
    first = body["choices"][0]
    assert (body["text"], body["tokens"], body["finish_reason"]) == (first["text"], first["tokens"], "length")
    assert body["usage"]["completion_tokens"] == 8 * 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 8 * 12


def test_n_1_keeps_the_one_sample_shape_streamed_or_not(server):
    body = generate(server, {"prompt": PROMPT, "max_new_tokens": 4, "seed": 1})
    assert "choices" not in body
    with server.client() as client, client.stream(
            "POST", "/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 4, "seed": 1, "stream": True}) as reply:
        events = sse_json(read_sse(reply.iter_lines()))
    assert all("choice" not in e and "choices" not in e for e in events)
    assert events[-1]["text"] == body["text"]


def test_a_streamed_n_request_sends_each_choice_its_tokens_and_equals_the_plain_one(server):
    request = {"prompt": PROMPT, "n": 3, "seed": 5, "max_new_tokens": 10, "return_temperatures": True,
               "ignore_eos": True}
    plain = generate(server, request)
    with server.client() as client, client.stream("POST", "/v1/generate", json={**request, "stream": True}) as reply:
        events = sse_json(read_sse(reply.iter_lines()))
    done = events[-1]
    assert done["type"] == "done" and [c["text"] for c in done["choices"]] == [c["text"] for c in plain["choices"]]
    for i, choice in enumerate(plain["choices"]):
        tokens = [e["token"] for e in events[:-1] if e["choice"] == i]
        assert tokens == choice["tokens"]
        assert "".join(t["text"] for t in tokens) == choice["text"]


def test_n_above_the_limit_in_info_gets_422_naming_n(server):
    with server.client() as client:
        limit = client.get("/info").json()["limits"]["max_n"]
        refused = client.post("/v1/generate", json={"prompt": PROMPT, "n": limit + 1})
    assert limit == 8  # the test server runs 8 rows: min(max_n 16, max_running_requests 8)
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "n"


def test_the_openai_client_n_8_works_on_completions_and_chat_streamed_or_not(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    completion = client.completions.create(model=MODEL, prompt=PROMPT, n=8, max_tokens=6, seed=3)
    assert sorted(c.index for c in completion.choices) == list(range(8))
    assert completion.usage.completion_tokens == sum(len(c.model_extra["temperatures"]) for c in completion.choices)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "3 5>8"}], n=8,
                                          max_tokens=6, seed=3)
    assert sorted(c.index for c in chat.choices) == list(range(8))
    assert len({c.message.content for c in chat.choices}) > 1

    texts = [""] * 8
    finished = set()
    for chunk in client.completions.create(model=MODEL, prompt=PROMPT, n=8, max_tokens=6, seed=3, stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                finished.add(choice.index)
    assert finished == set(range(8)) and texts == [c.text for c in completion.choices]
    replies = [""] * 8
    for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "3 5>8"}], n=8,
                                                max_tokens=6, seed=3, stream=True):
        for choice in chunk.choices:
            replies[choice.index] += choice.delta.content or ""
    assert replies == [c.message.content for c in chat.choices]


def test_metrics_count_choices_and_the_log_line_summarises_each(server, caplog):
    def successes() -> float:
        return sum(v for k, v in server.metrics().items() if k.startswith("introllm_request_success_total{"))

    before = successes()
    with caplog.at_level(logging.INFO, logger="service.api.routes"):
        body = generate(server, {"prompt": PROMPT, "n": 3, "max_new_tokens": 5, "seed": 2})
    assert successes() - before == 3
    line = next(r.getMessage() for r in caplog.records if body["id"] in r.getMessage())
    assert "choices [0: " in line and "; 2: " in line and "tau mean" in line


def cancelled(server: LiveServer) -> float:
    return server.metrics()['introllm_request_failure_total{model="tiny-test",reason="cancelled"}']


def test_a_client_dropping_an_n_stream_ends_all_its_rows_together(server):
    server.wait_idle()
    before = cancelled(server)
    body = {"prompt": PROMPT, "n": 4, "max_new_tokens": 300, "ignore_eos": True, "stream": True}
    with decode_paused(server.scheduler.engine), server.client() as client:
        with client.stream("POST", "/v1/generate", json=body) as response:
            lines = response.iter_lines()  # kept: a dropped iterator would close the stream here
            assert next(line for line in lines if line.startswith("data:"))
            assert server.scheduler.engine.load() == (4, 0)  # four rows running, from one request
        server.wait_idle()  # still paused: only the cancellation can have ended the rows
    assert server.scheduler.engine.load() == (0, 0)
    assert cancelled(server) == before + 4  # counted per choice


def test_a_deadline_ends_every_choice_of_a_request(server):
    body = generate(server, {"prompt": PROMPT, "n": 3, "max_new_tokens": 400, "ignore_eos": True,
                             "timeout_s": 0.05})
    assert [c["finish_reason"] for c in body["choices"]] == ["timeout"] * 3
    assert body["finish_reason"] == "timeout" and body["usage"]["completion_tokens"] < 3 * 400


def test_the_engine_process_counts_an_n_request_as_n_rows_and_answers_429_when_they_do_not_fit(checkpoint_dir):
    small = start_server(settings_for(checkpoint_dir, max_running_requests=4, max_waiting_requests=2))
    try:
        long = {"prompt": PROMPT, "max_new_tokens": 300, "ignore_eos": True, "stream": True}
        engine = small.scheduler.engine
        with decode_paused(engine), small.client() as client:
            with client.stream("POST", "/v1/generate", json={**long, "n": 4}) as running:
                lines = running.iter_lines()  # kept: a dropped iterator would close the stream
                assert next(line for line in lines if line.startswith("data:"))
                refused = client.post("/v1/generate", json={"prompt": PROMPT, "n": 3})  # 4 + 3 rows > 4 + 2
                assert refused.status_code == 429 and refused.headers["retry-after"]
                with client.stream("POST", "/v1/generate", json={**long, "n": 2}) as waiting:
                    assert waiting.status_code == 200
                    assert engine.wait_until(lambda r, w: (r, w) == (4, 2), 30)  # rows, not requests
                    assert client.post("/v1/generate", json={"prompt": PROMPT}).status_code == 429
            small.wait_idle()
        assert engine.load() == (0, 0)
    finally:
        stop_server(small)
