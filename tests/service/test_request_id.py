"""Request ids on real servers: the client's X-Request-Id is echoed, a missing or
implausible one is replaced by a fresh one, and every response carries it:
successes, streams, and errors (401, 404, 413, 422, 429) alike.

The ids in log lines are checked on a real process in test_logs.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.service.support import (
    LiveServer,
    decode_paused,
    read_sse,
    settings_for,
    sse_json,
    start_server,
    stop_server,
)

KEY = "rid-test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def auth_server(checkpoint_dir) -> Iterator[LiveServer]:
    live = start_server(settings_for(checkpoint_dir, api_key=KEY, max_body_bytes=4096))
    yield live
    stop_server(live)


def test_a_supplied_request_id_is_echoed_on_results_and_streams(auth_server):
    with auth_server.client(headers=AUTH) as client:
        plain = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 2},
                            headers={"X-Request-Id": "trace-0001"})
        models = client.get("/v1/models", headers={"X-Request-Id": "a/b:c=d;~!"})
        health = client.get("/health/ready", headers={"X-Request-Id": "x" * 128})
        with client.stream("POST", "/v1/generate", json={"prompt": "a", "max_new_tokens": 3, "stream": True},
                           headers={"X-Request-Id": "trace-stream"}) as stream:
            events = sse_json(read_sse(stream.iter_lines()))
    assert plain.status_code == 200 and plain.headers["x-request-id"] == "trace-0001"
    # The body id stays the server's own (documented in routes.py).
    assert plain.json()["id"].startswith("gen-")
    assert models.headers["x-request-id"] == "a/b:c=d;~!"
    assert health.headers["x-request-id"] == "x" * 128
    assert stream.headers["x-request-id"] == "trace-stream" and events[-1]["type"] == "done"
    assert stream.headers.get_list("x-request-id") == ["trace-stream"]


def test_without_a_request_id_each_response_gets_a_fresh_one(auth_server):
    with auth_server.client() as client:
        ids = [client.get("/health/live").headers["x-request-id"] for _ in range(5)]
    assert all(GENERATED.fullmatch(rid) for rid in ids), ids
    assert len(set(ids)) == 5


@pytest.mark.parametrize(
    "supplied",
    [b"", b"x" * 129, b"has space", b"tab\there", b"caf\xc3\xa9", b"\xff\xfe", KEY.encode()],
    ids=["empty", "too-long", "space", "tab", "utf8", "bytes", "the-api-key"],
)
def test_an_implausible_request_id_or_an_api_key_is_replaced_not_reflected(auth_server, supplied):
    with auth_server.client() as client:
        response = client.get("/health/live", headers=[(b"X-Request-Id", supplied)])
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"])


def test_a_control_character_in_a_header_is_refused_by_the_http_parser(auth_server):
    # RFC 9110 5.5: a field value holds no control characters. The HTTP parser
    # (httptools) answers 400 before the app runs, so nothing is reflected.
    with auth_server.client() as client:
        response = client.get("/health/live", headers=[(b"X-Request-Id", b"del\x7f")])
    assert response.status_code == 400
    assert b"\x7f" not in response.content and "del" not in response.headers.get("x-request-id", "")


def test_errors_carry_the_request_id(auth_server):
    rid = {"X-Request-Id": "err-1"}
    with auth_server.client() as client:
        unauthorized = client.post("/v1/generate", json={"prompt": "a"}, headers=rid)
        not_found = client.get("/nope", headers=rid)
        too_large = client.post("/v1/generate", content=b"{" + b" " * 8192 + b"}",
                                headers={**AUTH, **rid, "content-type": "application/json"})
        invalid = client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": -1}, headers={**AUTH, **rid})
        wrong_model = client.post("/v1/completions", json={"model": "other", "prompt": "a"}, headers={**AUTH, **rid})
    for response, status in [(unauthorized, 401), (not_found, 404), (too_large, 413), (invalid, 422),
                             (wrong_model, 404)]:
        assert response.status_code == status, response.text
        assert response.headers.get_list("x-request-id") == ["err-1"], status
    assert "other" not in wrong_model.json()["error"]["message"]  # a body's value is not quoted back


def test_a_429_carries_the_request_id(checkpoint_dir):
    live = start_server(settings_for(checkpoint_dir, max_running_requests=1, max_waiting_requests=0))
    long = {"prompt": "1 2>3\n", "max_new_tokens": 300, "ignore_eos": True, "stream": True}
    try:
        with decode_paused(live.scheduler.engine), live.client() as first, live.client() as second:
            with first.stream("POST", "/v1/generate", json=long) as running:
                lines = running.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                refused = second.post("/v1/generate", json={"prompt": "a"}, headers={"X-Request-Id": "busy-1"})
                refused_stream = second.post("/v1/generate", json=long, headers={"X-Request-Id": "busy-2"})
            live.wait_idle()
        assert refused.status_code == 429 and refused.headers["x-request-id"] == "busy-1"
        assert refused_stream.status_code == 429 and refused_stream.headers["x-request-id"] == "busy-2"
    finally:
        stop_server(live)
