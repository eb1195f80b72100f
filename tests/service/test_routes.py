"""The HTTP API against a real uvicorn server on a loopback port: the contract of
/v1/generate (fields, finish reasons, per-token temperatures), SSE framing,
concurrency against the reference, validation errors, cancellation on
disconnect, the operational endpoints, and the official openai client."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import openai
import pytest

from model import FixedTemperature
from tests.service.support import (
    PROMPTS,
    LiveServer,
    decode_paused,
    read_sse,
    reference,
    reference_tokens,
    sse_json,
)

LONG = 300
MODEL = "tiny-test"  # the checkpoint folder's name


def post(server: LiveServer, body: dict, path: str = "/v1/generate") -> httpx.Response:
    with server.client() as client:
        return client.post(path, json=body)


def stream(server: LiveServer, body: dict) -> tuple[httpx.Response, list[tuple[str | None, str]]]:
    with server.client() as client, client.stream("POST", "/v1/generate", json={**body, "stream": True}) as response:
        return response, read_sse(response.iter_lines())


def decoded(checkpoint, tokens: list[int]) -> str:
    return checkpoint.tokenizer.decode(tokens, skip_special_tokens=True)


# ---------------------------------------------------------------- the contract


def test_generate_answers_with_every_field_of_the_contract(server, checkpoint):
    response = post(server, {"prompt": "3 5 7 2>24\n", "max_new_tokens": 6, "seed": 3, "ignore_eos": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"id", "model", "text", "finish_reason", "seed", "usage", "temperature", "timing"}
    assert body["model"] == MODEL and body["seed"] == 3 and body["finish_reason"] == "length"
    prompt_tokens = 1 + len("3 5 7 2>24\n")  # BOS + one token per character
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 6, "total_tokens": prompt_tokens + 6}
    summary = body["temperature"]
    assert summary["mode"] == "learned" and 0 <= summary["updates"] <= 6
    assert 0.1 <= summary["min"] <= summary["mean"] <= summary["max"] <= 2.0
    timing = body["timing"]
    assert 0 <= timing["queue_s"] <= timing["ttft_s"] <= timing["total_s"]
    expected = reference(checkpoint, "3 5 7 2>24\n", max_new_tokens=6, seed=3, stop_at_eos=False)
    assert body["text"] == decoded(checkpoint, reference_tokens(expected))


@pytest.mark.parametrize(("temperatures", "logprobs"), [(False, False), (True, False), (False, True), (True, True)])
def test_per_token_fields_are_present_exactly_when_asked(server, temperatures, logprobs):
    body = post(server, {
        "prompt": "1 2>3\n", "max_new_tokens": 12, "ignore_eos": True, "seed": 1,
        "return_temperatures": temperatures, "return_logprobs": logprobs,
    }).json()
    if not (temperatures or logprobs):
        assert "tokens" not in body
        return
    tokens = body["tokens"]
    assert len(tokens) == body["usage"]["completion_tokens"] == 12
    assert "".join(t["text"] for t in tokens) == body["text"]
    for token in tokens:
        assert ("temperature" in token) == ("temperature_updated" in token) == temperatures
        assert ("logprob" in token) == logprobs
        if temperatures:
            assert 0.1 <= token["temperature"] <= 2.0
        if logprobs:
            assert token["logprob"] <= 0
    if temperatures:
        taus = [t["temperature"] for t in tokens]
        assert body["temperature"]["mean"] == pytest.approx(sum(taus) / len(taus))
        assert body["temperature"]["updates"] == sum(t["temperature_updated"] for t in tokens)


def test_fixed_mode_reports_its_temperature_for_every_token(server):
    body = post(server, {"prompt": "hello", "temperature": 0.7, "max_new_tokens": 10, "ignore_eos": True,
                         "return_temperatures": True}).json()
    assert body["temperature"]["mode"] == "fixed"
    assert [t["temperature"] for t in body["tokens"]] == pytest.approx([0.7] * 10)
    assert not any(t["temperature_updated"] for t in body["tokens"]) and body["temperature"]["updates"] == 0


@pytest.mark.parametrize("mode", ["learned", "entropy"])
def test_narrowed_tau_range_bounds_every_token(server, mode):
    body = post(server, {"prompt": "9 9>81\n", "temperature_mode": mode, "tau_min": 0.5, "tau_max": 0.8,
                         "max_new_tokens": 16, "ignore_eos": True, "return_temperatures": True}).json()
    assert all(0.5 - 1e-6 <= t["temperature"] <= 0.8 + 1e-6 for t in body["tokens"])
    assert body["temperature"]["mode"] == mode


def test_finish_reason_length(server):
    body = post(server, {"prompt": "x", "max_new_tokens": 5, "ignore_eos": True}).json()
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5


def test_finish_reason_eos_ends_on_the_eos_token_like_the_reference(server, checkpoint):
    # A hot fixed temperature makes EOS likely; find a seed whose reference run ends with it.
    hot = FixedTemperature(5.0)
    seed, expected = next(
        (s, g) for s in range(50)
        if (g := reference(checkpoint, "1 2>3\n", max_new_tokens=120, seed=s, controller=hot)).finish_reasons[0]
        == "eos"
    )
    body = post(server, {"prompt": "1 2>3\n", "temperature": 5.0, "max_new_tokens": 120, "seed": seed,
                         "return_logprobs": True}).json()
    assert body["finish_reason"] == "eos"
    assert [t["id"] for t in body["tokens"]] == reference_tokens(expected)
    assert body["tokens"][-1]["id"] == checkpoint.tokenizer.eos_token_id


def test_finish_reason_stop_cuts_the_text_before_the_stop_string(server, checkpoint):
    expected = reference(checkpoint, "3 5 7 2>24\n", max_new_tokens=40, greedy=True, stop_at_eos=False)
    full = decoded(checkpoint, reference_tokens(expected))
    stop = full[12:15]
    body = post(server, {"prompt": "3 5 7 2>24\n", "greedy": True, "max_new_tokens": 40, "ignore_eos": True,
                         "stop": [stop], "return_temperatures": True}).json()
    assert body["finish_reason"] == "stop"
    assert body["text"] == full[: full.index(stop)]
    assert "".join(t["text"] for t in body["tokens"]) == body["text"]


def test_finish_reason_timeout_returns_the_output_so_far(server):
    body = post(server, {"prompt": "1 2>3\n", "max_new_tokens": LONG, "ignore_eos": True, "timeout_s": 0.001,
                         "return_temperatures": True}).json()
    assert body["finish_reason"] == "timeout"
    assert body["usage"]["completion_tokens"] == len(body["tokens"]) < LONG
    assert "".join(t["text"] for t in body["tokens"]) == body["text"]


# ---------------------------------------------------------------- streaming


def test_sse_events_parse_concatenate_to_the_final_text_and_end_with_done(server):
    response, events = stream(server, {"prompt": "3 5 7 2>24\n", "max_new_tokens": 20, "seed": 5,
                                       "ignore_eos": True, "return_temperatures": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    payloads = sse_json(events)
    tokens, done = payloads[:-1], payloads[-1]
    assert [t["type"] for t in tokens] == ["token"] * 20 and [t["index"] for t in tokens] == list(range(20))
    assert all(0.1 <= t["token"]["temperature"] <= 2.0 for t in tokens)
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert "".join(t["token"]["text"] for t in tokens) == done["text"]
    assert done["usage"]["completion_tokens"] == 20
    assert done["temperature"]["mean"] == pytest.approx(sum(t["token"]["temperature"] for t in tokens) / 20)
    # Same seed, not streamed: the same text and temperatures.
    plain = post(server, {"prompt": "3 5 7 2>24\n", "max_new_tokens": 20, "seed": 5, "ignore_eos": True}).json()
    assert plain["text"] == done["text"] and plain["temperature"] == done["temperature"]


def test_streamed_stop_string_never_leaks_into_the_token_texts(server, checkpoint):
    expected = reference(checkpoint, "hello", max_new_tokens=30, greedy=True, stop_at_eos=False)
    full = decoded(checkpoint, reference_tokens(expected))
    stop = full[8:11]
    _, events = stream(server, {"prompt": "hello", "greedy": True, "max_new_tokens": 30, "ignore_eos": True,
                                "stop": [stop]})
    payloads = sse_json(events)
    text = "".join(p["token"]["text"] for p in payloads[:-1])
    assert payloads[-1]["finish_reason"] == "stop" and text == payloads[-1]["text"] == full[: full.index(stop)]


def test_a_refused_stream_gets_its_status_code_not_a_200(server):
    with server.client() as client:
        with client.stream("POST", "/v1/generate", json={"prompt": "", "stream": True}) as response:
            response.read()
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "validation_error"


# ---------------------------------------------------------------- concurrency


def test_sixteen_concurrent_requests_complete_and_greedy_results_equal_the_reference(server, checkpoint):
    prompts = [PROMPTS[i % len(PROMPTS)] + "z" * (i % 3) for i in range(16)]
    budgets = [4 + (5 * i) % 30 for i in range(16)]

    async def run() -> list[httpx.Response]:
        async with server.async_client() as client:
            return await asyncio.gather(*(
                client.post("/v1/generate", json={"prompt": p, "max_new_tokens": n, "greedy": True,
                                                  "return_logprobs": True, "stream": False})
                for p, n in zip(prompts, budgets, strict=True)
            ))

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * 16
    for prompt, budget, response in zip(prompts, budgets, responses, strict=True):
        expected = reference(checkpoint, prompt, max_new_tokens=budget, greedy=True)
        body = response.json()
        assert [t["id"] for t in body["tokens"]] == reference_tokens(expected), prompt
        assert body["finish_reason"] == expected.finish_reasons[0]
    server.wait_idle()


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"prompt": "a", "max_new_tokens": -5}, "max_new_tokens", "greater than or equal to 1"),
        ({"prompt": "a", "max_new_tokens": 100000}, "max_new_tokens", "max_new_tokens=400"),
        ({"prompt": "a", "tau_min": 1.5, "tau_max": 0.5}, "", "must not exceed tau_max"),
        ({"prompt": "a", "tau_max": 5.0}, "tau_max", "outside the trained tau range"),
        ({"prompt": "a", "colour": "blue"}, "colour", "Extra inputs are not permitted"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "x" * 200}, "prompt", "max_prompt_tokens=128"),
        ({"prompt": "x" * 120, "max_new_tokens": 400}, "max_new_tokens", "context length 512"),
        ({"prompt": "a", "timeout_s": 10000}, "timeout_s", "max_timeout_s"),
        ({"prompt": "a", "temperature_mode": "fixed"}, "", "needs a temperature"),
    ],
)
def test_bad_inputs_get_422_naming_the_problem(server, body, param, says):
    response = post(server, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "validation_error" and says in error["message"]
    if param:
        assert error["param"] == param


def test_malformed_json_gets_400_in_the_same_error_shape(server):
    # 400: the body is not JSON at all; 422 is for JSON that breaks the schema.
    with server.client() as client:
        response = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_json"


def test_a_body_over_the_size_limit_gets_413(server):
    response = post(server, {"prompt": "a" * (300 * 1024)})
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"


def test_unknown_routes_get_404_in_the_same_error_shape(server):
    with server.client() as client:
        response = client.get("/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found"


# ---------------------------------------------------------------- disconnects


def _cancelled(server: LiveServer) -> float:
    return server.metrics()['introllm_request_failure_total{model="tiny-test",reason="cancelled"}']


def _running(server: LiveServer) -> float:
    return server.metrics()['introllm_num_requests_running{model="tiny-test"}']


def test_a_client_dropping_a_stream_midway_has_its_sequence_removed_and_counted_cancelled(server):
    server.wait_idle()
    running_before, cancelled_before = _running(server), _cancelled(server)
    with decode_paused(server.scheduler.engine), server.client() as client:
        with client.stream("POST", "/v1/generate", json={"prompt": "1 2>3\n", "max_new_tokens": LONG,
                                                          "ignore_eos": True, "stream": True}) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # a token arrived: it is running
            assert server.scheduler.engine.load()[0] == 1
        # leaving the block closes the connection mid-stream
        server.wait_idle()  # still paused: only the cancellation can have ended it
    assert _running(server) == running_before
    assert _cancelled(server) == cancelled_before + 1


def test_a_client_dropping_a_plain_request_has_its_sequence_removed_and_counted_cancelled(server):
    server.wait_idle()
    cancelled_before = _cancelled(server)
    body = json.dumps({"prompt": "1 2>3\n", "max_new_tokens": LONG, "ignore_eos": True}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with decode_paused(server.scheduler.engine):
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert server.scheduler.engine.wait_until(lambda running, waiting: running == 1, timeout=60)
        server.wait_idle()  # still paused: only the cancellation can have ended it
    assert _cancelled(server) == cancelled_before + 1
    assert _running(server) == 0


# ---------------------------------------------------------------- operations


def test_health_info_metrics_and_docs_answer(server):
    with server.client() as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/health/ready").status_code == 200
        info = client.get("/info").json()
        assert info["model"] == MODEL and info["base_model"] == "tiny-test"
        assert info["tau_range"] == [0.1, 2.0] and info["device"] == "cpu" and info["dtype"] == "float32"
        assert info["limits"]["max_new_tokens"] == 400 and info["limits"]["max_prompt_tokens"] == 128
        assert info["version"] and info["auth"] is False
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "introllm_time_to_first_token_seconds" in metrics.text
        assert client.get("/docs").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert {"/v1/generate", "/v1/completions", "/health/ready", "/info"} <= set(paths)
        assert client.get("/v1/models").json()["data"][0]["id"] == MODEL


# ---------------------------------------------------------------- openai client


def _openai(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_the_official_openai_client_completes_without_streaming(server, checkpoint):
    completion = _openai(server).completions.create(
        model=MODEL, prompt="3 5 7 2>24\n", max_tokens=8, temperature=0, logprobs=1, extra_body={"ignore_eos": True}
    )
    expected = reference(checkpoint, "3 5 7 2>24\n", max_new_tokens=8, greedy=True, stop_at_eos=False)
    choice = completion.choices[0]
    assert choice.text == decoded(checkpoint, reference_tokens(expected))
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 8 and completion.usage.prompt_tokens == 12
    assert len(choice.logprobs.token_logprobs) == 8
    temperatures = choice.model_extra["temperatures"]
    assert len(temperatures) == 8 and all(0.1 <= t <= 2.0 for t in temperatures)


def test_the_official_openai_client_streams(server):
    client = _openai(server)
    chunks = list(client.completions.create(
        model=MODEL, prompt="1 2>3\n", max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    ))
    plain = client.completions.create(model=MODEL, prompt="1 2>3\n", max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == plain.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert sum(len(c.choices[0].model_extra["temperatures"]) for c in chunks if c.choices) == 10
    assert chunks[-1].usage.completion_tokens == 10


def test_the_openai_client_sees_a_clear_error_for_another_model_name(server):
    with pytest.raises(openai.NotFoundError) as error:
        _openai(server).completions.create(model="gpt-4", prompt="a", max_tokens=2)
    assert "not served here" in str(error.value)


def test_chat_on_a_plain_text_checkpoint_renders_bos_and_the_messages(server, checkpoint):
    # The bundled-style checkpoint has no recorded prompt format: plain text, BOS first, as in training.
    client = _openai(server)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "3 5 7 2>24\n"}],
                                           max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    completion = client.completions.create(model=MODEL, prompt="3 5 7 2>24\n", max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].message.content == completion.choices[0].text
    assert reply.usage.prompt_tokens == completion.usage.prompt_tokens == 12
    # temperature 0 is greedy decoding; the learned head still picks (and reports) tau
    assert reply.id.startswith("chatcmpl-") and reply.model_extra["temperature"]["mode"] == "learned"


def test_chat_refuses_another_model_name_and_n_above_the_limit(server):
    with pytest.raises(openai.NotFoundError):
        _openai(server).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.UnprocessableEntityError):  # max_n: the test server's 8 running rows
        _openai(server).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], n=9)
