"""The served OpenAPI document: everything an operation can answer, errors and streams included.

What it does: the `responses` of each route (every status it can return, with
the error body's schema and the headers that come with it: Retry-After on 429
and 503, WWW-Authenticate on 401, X-Request-Id on all), the description of a streamed 200 (each
Server-Sent Event's `data` is JSON of one of the event schemas, or the closing
`[DONE]`; written as OpenAPI 3.2's `itemSchema`, the form FastAPI uses for its
own SSE routes), and `install(app, served_model)`, which adds the event
schemas to FastAPI's document so their `$ref`s resolve and names the one model
/v1/completions accepts. Generated clients and the contract tests
(tests/service/test_openapi_contract.py, test_fuzz.py) read this document.

What it does not do: validate anything at run time; decide statuses (the
routes and error handlers do; this module must list what they return).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api.schemas import ChatCompletionChunk, CompletionResponse, ErrorResponse, StreamDone, StreamToken
from service.logs import MAX_REQUEST_ID_LENGTH

REF = "#/components/schemas/{model}"
# Models that appear only inside streams: FastAPI does not see them.
STREAM_EVENT_MODELS: tuple[type[BaseModel], ...] = (
    StreamToken, StreamDone, CompletionResponse, ChatCompletionChunk, ErrorResponse,
)

ERROR_DESCRIPTIONS = {
    400: "the body is not JSON: not UTF-8, malformed, or nested too deeply (type invalid_json)",
    401: "missing or wrong API key",
    404: "the model named is not served here",
    413: "the body exceeds the server's max_body_bytes",
    415: "the body is not declared as JSON: send Content-Type: application/json",
    422: "invalid request, or a server limit exceeded (the message and `param` name it)",
    429: "the queue is full: retry after Retry-After seconds",
    500: "a server bug; the message says no more, the server log has the details",
    503: "the model is loading, the server is draining, or its engine is down: retry after Retry-After seconds",
}
_RETRY_AFTER = {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 1}}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}, "required": True}},
    429: {"Retry-After": {**_RETRY_AFTER, "required": True}},
    503: {"Retry-After": {**_RETRY_AFTER, "required": True}},
}
PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}
# On every response (service/logs.py: the client's id when acceptable, else a fresh one).
REQUEST_ID_HEADER_DOC = {
    "description": "the request's id, as in the server's log lines: the client's X-Request-Id or a new one",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_REQUEST_ID_LENGTH},
    "required": True,
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` entries of the error statuses an operation can return."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        responses[status] = {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]}
        if status in ERROR_HEADERS:
            responses[status]["headers"] = ERROR_HEADERS[status]
    return responses


def event_stream(*event_models: type[BaseModel], description: str) -> dict[str, Any]:
    """The text/event-stream content of a streamed 200: `data` is JSON of one of `event_models`, or `[DONE]`."""
    payload = {"anyOf": [{"$ref": REF.format(model=m.__name__)} for m in (*event_models, ErrorResponse)]}
    return {
        "text/event-stream": {
            # No `schema`: a tool reading the stream as a whole (schemathesis
            # does) would check the list of parsed events against it.
            "itemSchema": {
                "type": "object",
                "description": description,
                "required": ["data"],
                "properties": {
                    # Absent on the wire except on an error event; SSE parsers report it as "message".
                    "event": {"type": "string", "enum": ["message", "error"]},
                    "data": {
                        "type": "string",
                        "anyOf": [
                            {"const": "[DONE]", "description": "the last event of a stream that did not fail"},
                            {"contentMediaType": "application/json", "contentSchema": payload},
                        ],
                    },
                },
            },
        }
    }


def install(app: FastAPI, served_model: str) -> None:
    """Serve FastAPI's document with the stream event schemas added and the served model named."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()  # FastAPI caches it in app.openapi_schema
            _, definitions = models_json_schema(
                [(model, "serialization") for model in STREAM_EVENT_MODELS], ref_template=REF
            )
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in definitions.get("$defs", {}).items():
                schemas.setdefault(name, schema)
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    for response in operation.get("responses", {}).values():
                        response.setdefault("headers", {})["X-Request-Id"] = REQUEST_ID_HEADER_DOC
            # One model per server: say which, so clients (and the fuzz) send it.
            for request_schema in ("CompletionRequest", "ChatCompletionRequest"):
                schemas[request_schema]["properties"]["model"] = {
                    "type": "string", "enum": [served_model], "title": "Model",
                    "description": "the served model (GET /v1/models); another name gets 404",
                }
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
