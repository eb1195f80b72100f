"""The served OpenAPI document is the contract: every response, streamed events
included, validates against it, and every status an operation returns is
documented there with the project's error shape.

Generated clients (openapi-generator, openapi-python-client, orval) trust the
document; these tests hold the server to it on the cases a schema-driven fuzz
(test_fuzz.py) reaches rarely or never: a request that times out before its
first token, bodies that are not JSON, wrong content types, an unknown model.
"""

from __future__ import annotations

import pytest

from tests.service.contract import check_response, check_sse_event, documented_response, published
from tests.service.support import LiveServer, read_sse

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
POST_ROUTES = ["/v1/generate", "/v1/completions", "/v1/chat/completions"]


@pytest.fixture(scope="module")
def document(server: LiveServer) -> dict:
    return published(server.url)


def _minimal(path: str) -> dict:
    if path == "/v1/chat/completions":
        return {"model": "tiny-test", "messages": [{"role": "user", "content": "1 2>3\n"}]}
    return {"prompt": "1 2>3\n"} if path == "/v1/generate" else {"model": "tiny-test", "prompt": "1 2>3\n"}


# ---------------------------------------------------------------- bodies match their schema


@pytest.mark.parametrize("path", POST_ROUTES)
def test_a_request_that_times_out_before_its_first_token_still_returns_every_required_field(server, document, path):
    # The smallest positive deadline: the request ends before any token, so
    # the temperature summary and time to first token are null, not absent.
    with server.client() as client:
        response = client.post(path, json={**_minimal(path), "timeout_s": 5e-324})
    assert response.status_code == 200, response.text
    check_response(document, "POST", path, response)
    if path == "/v1/generate":
        assert response.json()["temperature"]["mean"] is None and response.json()["timing"]["ttft_s"] is None


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/generate", {}),
        ("/v1/generate", {"return_temperatures": True, "return_logprobs": True}),
        ("/v1/generate", {"timeout_s": 5e-324}),
        ("/v1/generate", {"temperature": 0.7, "stop": ["4"], "max_new_tokens": 40}),
        ("/v1/completions", {}),
        ("/v1/completions", {"logprobs": 1, "stream_options": {"include_usage": True}}),
        ("/v1/completions", {"timeout_s": 5e-324}),
        ("/v1/chat/completions", {}),
        ("/v1/chat/completions", {"stream_options": {"include_usage": True}, "max_tokens": 4}),
        ("/v1/chat/completions", {"timeout_s": 5e-324}),
    ],
)
def test_every_streamed_event_validates_against_the_published_event_schema(server, document, path, extra):
    body = {**_minimal(path), "stream": True, "seed": 0, **extra}
    with server.client() as client, client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "text/event-stream" in documented_response(document, "POST", path, 200)["content"]
        events = read_sse(response.iter_lines())
    assert events[-1] == (None, "[DONE]")
    for name, data in events:
        check_sse_event(document, path, name, data)


@pytest.mark.parametrize("path", ["/v1/models", "/info", "/health/live", "/health/ready", "/metrics", "/openapi.json"])
def test_get_operations_answer_as_documented(server, document, path):
    with server.client() as client:
        response = client.get(path)
    assert response.status_code == 200
    if path != "/openapi.json":  # the document itself is not in the document
        check_response(document, "GET", path, response)


# ---------------------------------------------------------------- every status is documented


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\xff\xfe\xfd", id="not-utf8"),
        pytest.param(b'{"prompt": "\xff"}', id="not-utf8-inside-a-string"),
        pytest.param(b'{"prompt": ', id="truncated"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"[" * 50_000 + b"]" * 50_000, id="nested-too-deep"),
    ],
)
def test_a_body_that_is_not_json_gets_a_documented_400_in_the_error_shape(server, document, path, content):
    with server.client() as client:
        response = client.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    check_response(document, "POST", path, response)
    error = response.json()["error"]
    assert error["type"] == "invalid_json" and "JSON" in error["message"]


@pytest.mark.parametrize("path", POST_ROUTES)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_body_that_is_not_declared_json_gets_a_documented_415(server, document, path, content_type):
    # curl -d without -H sends application/x-www-form-urlencoded: say what to send instead.
    with server.client() as client:
        response = client.post(path, content=b'{"prompt": "x"}', headers={"content-type": content_type})
    assert response.status_code == 415, response.text
    check_response(document, "POST", path, response)
    assert "application/json" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_an_unknown_model_on_completions_gets_a_documented_404(server, document, path):
    with server.client() as client:
        response = client.post(path, json={**_minimal(path), "model": "not-this-one"})
    assert response.status_code == 404
    check_response(document, "POST", path, response)
    assert response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("path", POST_ROUTES)
def test_an_empty_body_gets_a_documented_422_that_names_the_body(server, document, path):
    with server.client() as client:
        response = client.post(path, content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 422
    check_response(document, "POST", path, response)
    assert response.json()["error"]["message"].startswith("body")


def test_every_documented_error_of_the_api_has_the_error_shape(document):
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or not path.startswith("/v1/"):
                    continue
                assert response["content"]["application/json"]["schema"] == ERROR_SCHEMA, (method, path, status)
                checked += 1
    # generate, completions, chat: 400 401 413 415 422 429 500 503 (+404 on both completions); models: 401 500
    assert checked == 8 + 9 + 9 + 2
