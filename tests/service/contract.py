"""Checking responses against the OpenAPI document the server publishes.

What it does: fetches `/openapi.json` from a live server and validates a
response (status documented, content type documented, body valid against the
documented schema) or a Server-Sent Event's `data` against the stream's
documented `itemSchema`, with jsonschema-rs (the validator schemathesis uses).
The document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12; `$ref`s
into `#/components` resolve because each checked schema is validated with the
document's components beside it.

What it does not do: generate requests (test_fuzz.py does, with schemathesis).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema_rs

from tests.service.support import HTTP_TIMEOUT


def published(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/openapi.json", timeout=HTTP_TIMEOUT).json()


def _validate(document: dict[str, Any], schema: dict[str, Any], instance: Any, what: str) -> None:
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": document.get("components", {})})
    problems = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(instance)]
    assert not problems, f"{what} does not match its published schema: {problems}\n{json.dumps(instance)[:2000]}"


def documented_response(document: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any]:
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, documented: {sorted(responses)}"
    return responses[str(status)]


def check_response(document: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """Status, content type, required headers and (for JSON) body as the document says; not for streams."""
    documented = documented_response(document, method, path, response.status_code)
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    content = documented.get("content", {})
    assert media_type in content, f"{method} {path} {response.status_code}: {media_type} not in {sorted(content)}"
    for name, header in documented.get("headers", {}).items():
        assert not header.get("required") or name in response.headers, f"{method} {path}: no {name} header"
    if media_type == "application/json":
        _validate(document, content[media_type]["schema"], response.json(),
                  f"{method} {path} {response.status_code} body")


def check_sse_event(document: dict[str, Any], path: str, event: str | None, data: str) -> None:
    """One Server-Sent Event of a `stream=true` response against the 200's text/event-stream itemSchema."""
    item = documented_response(document, "post", path, 200)["content"]["text/event-stream"]["itemSchema"]
    envelope = {"data": data} if event is None else {"event": event, "data": data}
    _validate(document, item, envelope, f"SSE event of {path}")
    if data == "[DONE]":
        return
    alternatives = item["properties"]["data"]["anyOf"]
    payload = [a["contentSchema"] for a in alternatives if "contentSchema" in a]
    assert len(payload) == 1, alternatives
    _validate(document, payload[0], json.loads(data), f"SSE data of {path}")
