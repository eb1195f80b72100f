"""Hostile requests a schema fuzzer rarely builds, against a real server: each gets a clear 4xx
(or a correct 200), never a 5xx, never a reply much larger than the request, and the server
still answers a normal request exactly as the reference decode does afterwards."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.service.contract import check_response, published
from tests.service.support import LiveServer, reference, reference_tokens

NORMAL = {"prompt": "3 5 7 2>24\n", "greedy": True, "max_new_tokens": 12, "ignore_eos": True}


def post_raw(server: LiveServer, content: bytes, content_type: str | None = "application/json",
             path: str = "/v1/generate") -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    with server.client() as client:
        return client.post(path, content=content, headers=headers)


def _answers_normally(server: LiveServer, checkpoint) -> None:
    with server.client() as client:
        response = client.post("/v1/generate", json=NORMAL)
    assert response.status_code == 200, response.text
    expected = reference(checkpoint, NORMAL["prompt"], max_new_tokens=12, greedy=True, stop_at_eos=False)
    assert response.json()["text"] == checkpoint.tokenizer.decode(reference_tokens(expected), skip_special_tokens=True)
    server.wait_idle()


@pytest.fixture(scope="module")
def document(server: LiveServer) -> dict:
    return published(server.url)


# ---------------------------------------------------------------- shapes and sizes


def test_thousands_of_unknown_fields_get_a_422_no_larger_than_a_few_kilobytes(server, document):
    # Each unknown field is one validation error; naming them all answered a
    # 250 KB body with a 790 KB error (and logged it in one line).
    body = {"prompt": "x", **{f"f{i}": 1 for i in range(15_000)}}
    content = json.dumps(body).encode()
    assert len(content) < 256 * 1024
    response = post_raw(server, content)
    assert response.status_code == 422
    check_response(document, "POST", "/v1/generate", response)
    assert len(response.content) < 2048
    assert "f0: " in response.json()["error"]["message"] and "more" in response.json()["error"]["message"]


def test_a_field_name_as_long_as_the_body_allows_is_not_echoed_in_full(server):
    name = "n" * 200_000
    response = post_raw(server, json.dumps({"prompt": "x", name: 1}).encode())
    assert response.status_code == 422 and len(response.content) < 2048


@pytest.mark.parametrize("depth", [50, 500])
def test_nesting_inside_a_field_gets_a_422(server, depth):
    stop = "[" * depth + '"a"' + "]" * depth
    response = post_raw(server, f'{{"prompt": "x", "stop": {stop}}}'.encode())
    assert response.status_code == 422 and response.json()["error"]["param"].startswith("stop")


def test_a_body_without_content_length_is_cut_at_the_size_limit(server):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(400):
            yield b"a" * 1024
        yield b'"}'

    with server.client() as client:
        response = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["type"] == "payload_too_large"


def test_a_body_without_content_type_gets_415_asking_for_json(server, document):
    # Before: a 422 saying the body "should be a valid dictionary", with no word of the cause.
    response = post_raw(server, json.dumps(NORMAL).encode(), content_type=None)
    assert response.status_code == 415
    check_response(document, "POST", "/v1/generate", response)
    assert "application/json" in response.json()["error"]["message"]


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("field", "literal"),
    [
        ("top_p", "NaN"), ("top_p", "Infinity"), ("timeout_s", "-Infinity"), ("temperature", "1e309"),
        ("max_new_tokens", "1e3"), ("max_new_tokens", str(10**400)), ("seed", str(-(10**30))), ("top_k", "1.5"),
    ],
)
def test_non_finite_and_out_of_range_numbers_get_a_422_naming_the_field(server, field, literal):
    response = post_raw(server, f'{{"prompt": "x", "{field}": {literal}}}'.encode())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    "escaped",
    [r"\ud800", r"\udfff", r"a\ud800b", r"\ude00\ud83d"],  # lone or reversed surrogates
)
@pytest.mark.parametrize("field", ["prompt", "stop"])
def test_lone_surrogates_are_refused_with_a_422(server, escaped, field):
    value = f'"{escaped}"' if field == "prompt" else f'["{escaped}"]'
    extra = "" if field == "prompt" else '"prompt": "x", '
    response = post_raw(server, f'{{{extra}"{field}": {value}}}'.encode())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"].startswith(field)


@pytest.mark.parametrize(
    "text",
    [
        "\U0001f600 emoji outside the BMP", "\u0000nul\u0000", "\u202eright-to-left override", "e\u0301 combining",
        "\ufeffbyte order mark", "\r\n\t\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029 line breaks", "\U0010ffff last code point",
    ],
)
def test_unusual_unicode_in_prompt_and_stop_strings_is_answered(server, text):
    with server.client() as client:
        response = client.post("/v1/generate", json={
            "prompt": text, "stop": [text[:64]], "max_new_tokens": 4, "return_temperatures": True,
        })
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= 4


def test_the_most_and_longest_stop_strings_allowed_are_honoured(server, checkpoint):
    # 8 stop strings of 64 four-byte characters: the largest stop list the API accepts.
    stops = [chr(0x1F600 + i) * 64 for i in range(8)]
    with server.client() as client:
        response = client.post("/v1/generate", json={**NORMAL, "stop": stops})
    assert response.status_code == 200
    expected = reference(checkpoint, NORMAL["prompt"], max_new_tokens=12, greedy=True, stop_at_eos=False)
    assert response.json()["text"] == checkpoint.tokenizer.decode(reference_tokens(expected), skip_special_tokens=True)


@pytest.mark.parametrize("stop", [[chr(0x1F600) * 65], ["x"] * 9, [""]])
def test_stop_lists_beyond_the_bounds_get_a_422(server, stop):
    with server.client() as client:
        response = client.post("/v1/generate", json={"prompt": "x", "stop": stop})
    assert response.status_code == 422 and response.json()["error"]["param"].startswith("stop")


# ---------------------------------------------------------------- all at once


def test_malformed_requests_sent_concurrently_are_all_refused_and_the_server_still_answers_correctly(
    server, checkpoint
):
    malformed: list[tuple[bytes, str | None, int]] = [
        (b"\xff" * 100, "application/json", 400),
        (b"[" * 100_000, "application/json", 400),
        (b'{"prompt": ', "application/json", 400),
        (b'{"prompt": "x"}', "text/plain", 415),
        (b'{"prompt": "\\ud800"}', "application/json", 422),
        (b'{"prompt": "x", "top_p": NaN}', "application/json", 422),
        (b'{"prompt": "x", "max_new_tokens": 100000}', "application/json", 422),
        (b'{"prompt": "x", "temperature": 0.5, "temperature_mode": "learned"}', "application/json", 422),
        (b"a" * (300 * 1024), "application/json", 413),
    ]

    async def one(client: httpx.AsyncClient, index: int) -> tuple[int, int]:
        content, content_type, expected = malformed[index % len(malformed)]
        path = "/v1/generate" if index % 2 else "/v1/completions"
        if path == "/v1/completions" and expected == 422 and b"temperature_mode" in content:
            content = content.replace(b'"prompt"', b'"model": "tiny-test", "prompt"')
        headers = {"content-type": content_type} if content_type else {}
        response = await client.post(path, content=content, headers=headers)
        return response.status_code, expected

    async def storm() -> list[tuple[int, int]]:
        async with server.async_client() as client:
            return await asyncio.gather(*(one(client, i) for i in range(90)))

    results = asyncio.run(storm())
    assert all(status < 500 for status, _ in results)
    assert [status for status, _ in results] == [expected for _, expected in results]
    _answers_normally(server, checkpoint)
