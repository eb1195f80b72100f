"""HTTP routes: thin handlers from JSON to the scheduler and back.

Routes: /v1/generate (ours), /v1/completions and /v1/chat/completions
(OpenAI's; chat messages are rendered with the checkpoint's recorded prompt
format, model/prompt_format.py, exactly as training rendered prompts),
/v1/models, health probes, /info, /metrics.

What it does: parses the body (schemas.py), admits the request (the
scheduler raises 422/429/503 before anything is sent, streams included),
then either awaits the result or streams Server-Sent Events. A client that
goes away is noticed by awaiting the ASGI `http.disconnect` message (no
polling): its request is cancelled and leaves the batch at the next step.

Stream framing: one `data: {json}` event per token, a final event (ours:
type "done" with finish reason, usage, temperature summary and timing;
OpenAI: a chunk with finish_reason), then `data: [DONE]`. If the engine
fails a request mid-stream, an `event: error` carrying the error body is
sent instead of the final event, and the stream closes without [DONE].

Auth: when any key is configured (`api_key`, `api_keys`, `api_key_file`),
/v1/* needs `Authorization: Bearer <key>` with one of them (keys.py).

Logging: each generation request logs one line when it ends, in the
request's context (so with its request id, see logs.py): status, finish
reason, tokens, mean tau and duration (with n > 1, each choice's finish
reason, tokens and tau mean, min, max and updates), or why it ended early. That line also
names the response body's `id` (`gen-...`/`cmpl-...`), which stays ours and
unique per request rather than being the `X-Request-Id` (vLLM reuses the
header there): a client or gateway may reuse or choose request ids, the body
id is what the engine keys requests by. The log line joins the two.

What it does not do: tensor work, tokenization or limits (scheduler.py),
error rendering (app.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from model import PLAIN, PromptFormat, PromptFormatError, render_prompt
from service.api.events import ChoiceEnd, FinishEvent, TokenEvent
from service.api.keys import KeyRing
from service.api.metrics import ServerInfo
from service.api.openapi import PLAIN_TEXT, errors, event_stream
from service.api.scheduler import Completed, RequestHandle, Scheduler
from service.api.schemas import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionRequest,
    CompletionResponse,
    GenerateRequest,
    GenerateResponse,
    Info,
    InfoLimits,
    InfoLoad,
    ModelList,
    ServedModel,
    StreamDone,
    StreamToken,
    chat_completion_id,
    chat_response,
    completion_choice,
    completion_id,
    completion_response,
    generate_response,
    openai_finish_reason,
    stream_done,
    temperature_summary,
    token_info,
    usage,
)
from service.errors import ServiceError, error_body, unauthorized, unavailable, validation_error
from service.settings import Settings

log = logging.getLogger(__name__)
CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody receives it, it only shows in access logs
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# What a generation route can answer besides 200 (service/api/openapi.py documents each).
GENERATION_ERRORS = (400, 401, 413, 415, 422, 429, 500, 503)


# ---------------------------------------------------------------- dependencies
# All `async def`: FastAPI runs a plain `def` dependency in its thread pool, and
# three thread hops per request (on a 2-core machine, each one waiting for the
# GIL and a CPU) cost more than these header checks themselves.


async def get_scheduler(request: Request) -> Scheduler:
    scheduler: Scheduler | None = getattr(request.app.state, "scheduler", None)
    if scheduler is None:
        raise unavailable("the model is not loaded", retry_after_s=1)
    return scheduler


async def require_api_key(request: Request) -> None:
    """Bearer auth when any key is configured; compared with every key in constant time (keys.py)."""
    keys: KeyRing = request.app.state.keys
    if not keys.enabled:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # matches() runs even for a wrong scheme: the time taken does not depend on the header.
    matched = keys.matches(token.strip().encode("utf-8", "surrogateescape"))
    if scheme.lower() != "bearer" or not matched:
        request.app.state.metrics.failed("unauthorized")
        raise unauthorized("missing or wrong API key (send 'Authorization: Bearer <key>')")


async def require_json_body(request: Request) -> None:
    """415 for a body not declared as JSON (curl -d sends a form type unless told otherwise).

    A body without a Content-Type is refused too: FastAPI (strict_content_type)
    does not parse it as JSON, and the 422 that followed named no cause.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
        return
    raise ServiceError(
        415, "unsupported_media_type",
        "the body must be JSON, sent with 'Content-Type: application/json'",
    )


SchedulerDep = Annotated[Scheduler, Depends(get_scheduler)]
JsonBody = Depends(require_json_body)
api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])
ops = APIRouter()


# ---------------------------------------------------------------- generation


@api.post(
    "/generate",
    response_model=GenerateResponse,
    dependencies=[JsonBody],
    responses={
        200: {"content": event_stream(StreamToken, StreamDone, description=(
            "with stream=true: one event per token, a `done` event, then [DONE]; "
            "an `error` event instead if the request fails once streaming"))},
        **errors(*GENERATION_ERRORS),
    },
)
async def generate(body: GenerateRequest, request: Request, scheduler: SchedulerDep) -> Any:
    """Generate with a per-token temperature; `stream=true` for Server-Sent Events."""
    started = time.perf_counter()
    handle = scheduler.submit(body.to_input())
    model = request.app.state.settings.served_model_name
    if body.stream:
        return _sse(handle, _generate_events(handle, model, body),
                    ended=_Ending(handle, handle.request_id, started))
    result = await _logged_result(handle, request, _Ending(handle, handle.request_id, started))
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return generate_response(handle, model, result, body)


async def _generate_events(handle: RequestHandle, model: str, body: GenerateRequest) -> AsyncIterator[BaseModel]:
    async for event in handle.events():
        if isinstance(event, TokenEvent):
            info = token_info(event, body.return_temperatures, body.return_logprobs)
            yield StreamToken(index=event.index, token=info, choice=event.choice if handle.n > 1 else None)
        elif isinstance(event, FinishEvent):
            yield stream_done(handle, model, event, body)


@api.post(
    "/completions",
    response_model=CompletionResponse,
    dependencies=[JsonBody],
    responses={
        200: {"content": event_stream(CompletionResponse, description=(
            "with stream=true: completion chunks, then [DONE]; "
            "an `error` event instead if the request fails once streaming"))},
        **errors(*GENERATION_ERRORS, 404),
    },
)
async def completions(body: CompletionRequest, request: Request, scheduler: SchedulerDep) -> Any:
    """OpenAI-compatible completions (one prompt, `n` samples); per-token `temperatures` as an extra field."""
    model = _served_model(body.model, request)
    started = time.perf_counter()
    handle = scheduler.submit(body.to_input())
    if body.stream:
        return _sse(handle, _completion_chunks(handle, model, body),
                    ended=_Ending(handle, completion_id(handle), started))
    result = await _logged_result(handle, request, _Ending(handle, completion_id(handle), started))
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return completion_response(handle, model, result, logprobs=body.logprobs is not None)


async def _completion_chunks(
    handle: RequestHandle, model: str, body: CompletionRequest
) -> AsyncIterator[BaseModel]:
    chunk_id = completion_id(handle)
    offsets = [0] * handle.n  # where each choice's next text starts

    def chunk(choices: list, **extra: Any) -> CompletionResponse:
        return CompletionResponse(id=chunk_id, created=handle.created, model=model, choices=choices, **extra)

    async for event in handle.events():
        if isinstance(event, TokenEvent):
            yield chunk([completion_choice([event], event.text, None, body.logprobs is not None,
                                           offsets[event.choice], index=event.choice)])
            offsets[event.choice] += len(event.text)
        elif isinstance(event, ChoiceEnd):
            last = completion_choice([], "", openai_finish_reason(event.reason), False, index=event.choice)
            yield chunk([last], temperature=temperature_summary(event, handle.mode))
        elif body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], usage=usage(event))


@api.post(
    "/chat/completions",
    response_model=ChatCompletionResponse,
    dependencies=[JsonBody],
    responses={
        200: {"content": event_stream(ChatCompletionChunk, description=(
            "with stream=true: chat completion chunks, then [DONE]; "
            "an `error` event instead if the request fails once streaming"))},
        **errors(*GENERATION_ERRORS, 404),
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request, scheduler: SchedulerDep) -> Any:
    """OpenAI-compatible chat (`n` samples), rendered with the checkpoint's recorded prompt format; per-token
    `temperatures` as an extra field."""
    model = _served_model(body.model, request)
    prompt_format: PromptFormat = getattr(request.app.state, "prompt_format", PLAIN)
    try:
        prompt_ids = render_prompt(prompt_format, scheduler.tokenizer, body.message_dicts())
    except PromptFormatError as exc:
        request.app.state.metrics.failed("validation")
        raise validation_error(str(exc), "messages") from exc
    started = time.perf_counter()
    handle = scheduler.submit(body.to_input(prompt_ids))
    chat_id = chat_completion_id(handle)
    if body.stream:
        return _sse(handle, _chat_chunks(handle, model, body, chat_id), ended=_Ending(handle, chat_id, started))
    result = await _logged_result(handle, request, _Ending(handle, chat_id, started))
    if result is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return chat_response(handle, model, result)


async def _chat_chunks(
    handle: RequestHandle, model: str, body: ChatCompletionRequest, chat_id: str
) -> AsyncIterator[BaseModel]:
    def chunk(choices: list, **extra: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=chat_id, created=handle.created, model=model, choices=choices, **extra)

    # OpenAI's first chunk of each choice carries the role alone.
    for index in range(handle.n):
        yield chunk([ChatChunkChoice(index=index, delta=ChatDelta(role="assistant", content=""), finish_reason=None,
                                     temperatures=[], temperature_updated=[])])
    async for event in handle.events():
        if isinstance(event, TokenEvent):
            yield chunk([ChatChunkChoice(index=event.choice, delta=ChatDelta(content=event.text), finish_reason=None,
                                         temperatures=[event.tau], temperature_updated=[event.updated])])
        elif isinstance(event, ChoiceEnd):
            last = ChatChunkChoice(index=event.choice, delta=ChatDelta(), finish_reason=openai_finish_reason(
                event.reason), temperatures=[], temperature_updated=[])
            yield chunk([last], temperature=temperature_summary(event, handle.mode))
        elif body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], usage=usage(event))


@api.get("/models", responses=errors(401, 500))
async def models(request: Request) -> ModelList:
    """The served model, in OpenAI's list shape."""
    name = request.app.state.settings.served_model_name
    return ModelList(data=[ServedModel(id=name, created=0, owned_by="introllm")])


# ---------------------------------------------------------------- operations


PROBE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": PLAIN_TEXT},
    503: {"description": "not ready or not live; the body says why", "content": PLAIN_TEXT},
    **errors(500),
}


@ops.get("/health/live", response_class=PlainTextResponse, responses=PROBE_RESPONSES)
async def live(request: Request) -> Response:
    """200 while the process answers and its engine process runs (a restart is the cure otherwise)."""
    scheduler: Scheduler | None = getattr(request.app.state, "scheduler", None)
    if scheduler is not None and scheduler.engine.failure is not None:
        return _status(503, "engine process died")
    return _status(200, "live")


@ops.get("/health/ready", response_class=PlainTextResponse, responses=PROBE_RESPONSES)
async def ready(request: Request) -> Response:
    """200 when the model is loaded, the engine runs and the server is not draining."""
    scheduler: Scheduler | None = getattr(request.app.state, "scheduler", None)
    if scheduler is None:
        return _status(503, "loading")
    if scheduler.draining:
        return _status(503, "draining")
    if not scheduler.engine.alive:
        return _status(503, "engine not running")
    return _status(200, "ready")


@ops.get("/info", responses=errors(500, 503))
async def info(request: Request, scheduler: SchedulerDep) -> Info:
    """Model, tau range, limits, device and version."""
    settings: Settings = request.app.state.settings
    server: ServerInfo = request.app.state.server
    limits = scheduler.limits
    running, waiting = scheduler.engine.load()
    return Info(
        model=settings.served_model_name,
        version=server.version,
        base_model=server.base_model,
        device=server.device,
        dtype=server.dtype,
        temperature_modes=["learned", "fixed", "entropy"],
        tau_range=list(limits.tau_range),
        tau_init=scheduler.tau_init,
        limits=InfoLimits(
            max_running_requests=server.max_running_requests,
            max_waiting_requests=server.max_waiting_requests,
            max_prompt_tokens=limits.max_prompt_tokens,
            max_new_tokens=limits.max_new_tokens,
            default_max_new_tokens=limits.default_max_new_tokens,
            context_length=limits.context_length,
            max_body_bytes=settings.max_body_bytes,
            default_timeout_s=limits.default_timeout_s,
            max_timeout_s=limits.max_timeout_s,
            max_n=limits.max_n,
        ),
        load=InfoLoad(running=running, waiting=waiting, draining=scheduler.draining),
        auth=request.app.state.keys.enabled,
    )


@ops.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format", "content": PLAIN_TEXT}, **errors(500)},
)
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# ---------------------------------------------------------------- helpers


def _status(code: int, status: str) -> Response:
    return PlainTextResponse(status, status_code=code)


async def _result_unless_disconnected(handle: RequestHandle, request: Request) -> Completed | None:
    """The result, or None (request cancelled) if the client disconnects first."""
    result = asyncio.ensure_future(handle.result())
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        if result.done():
            return result.result()  # re-raises a ServiceError from the engine
        return None
    finally:
        result.cancel()
        gone.cancel()
        handle.cancel()  # no-op when finished


def _served_model(requested: str, request: Request) -> str:
    """The served model's name; 404 when an OpenAI-style request names another."""
    model = request.app.state.settings.served_model_name
    if requested != model:
        # The requested name is not quoted back: the error is logged, and a body may hold anything.
        raise ServiceError(404, "not_found", f"the requested model is not served here (this server: {model!r})",
                           param="model")
    return model


@dataclass(frozen=True)
class _Ending:
    """What the request's end-of-request log line needs besides how it ended."""

    handle: RequestHandle
    body_id: str  # the response body's id, which the line names
    started: float

    def log(self, status: int, *, stream: bool = False, error: ServiceError | None = None) -> None:
        took = time.perf_counter() - self.started
        kind = "stream" if stream else "request"
        finish = self.handle.finish
        if error is not None:
            log.warning("%s %s failed: status %d, %s: %s, %.3f s", kind, self.body_id, status, error.type,
                        error.message, took)
        elif finish is None:
            log.info("%s %s ended: client disconnected (status %d), %.3f s", kind, self.body_id, status, took)
        else:
            log.info("%s %s finished: status %d, finish_reason %s, prompt_tokens %d, completion_tokens %d, "
                     "mean tau %s, %.3f s%s", kind, self.body_id, status, finish.reason, finish.prompt_tokens,
                     finish.completion_tokens, _tau(finish.tau_mean), took, _choices_logged(finish))


def _tau(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _choices_logged(finish: FinishEvent) -> str:
    """With n > 1, each choice's finish reason, tokens and tau summary, for the request's log line."""
    if len(finish.choices) <= 1:
        return ""
    parts = [f"{end.choice}: {end.reason}, {end.completion_tokens} tokens, tau mean {_tau(end.tau_mean)} "
             f"min {_tau(end.tau_min)} max {_tau(end.tau_max)}, {end.tau_updates} updates" for end in finish.choices]
    return ", choices [" + "; ".join(parts) + "]"


async def _logged_result(handle: RequestHandle, request: Request, ended: _Ending) -> Completed | None:
    """`_result_unless_disconnected`, and the request's one log line whatever happens."""
    try:
        result = await _result_unless_disconnected(handle, request)
    except ServiceError as exc:
        ended.log(exc.status, error=exc)
        raise
    ended.log(200 if result is not None else CLIENT_CLOSED_REQUEST)
    return result


async def _disconnected(receive: Callable) -> None:
    # After the body, the server's next message is http.disconnect (sent when
    # the client goes away, or after the response is complete).
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse(handle: RequestHandle, events: AsyncIterator[BaseModel], *, ended: _Ending) -> StreamingResponse:
    return StreamingResponse(_frame(handle, events, ended), media_type="text/event-stream", headers=SSE_HEADERS)


async def _frame(handle: RequestHandle, events: AsyncIterator[BaseModel], ended: _Ending) -> AsyncIterator[str]:
    error: ServiceError | None = None
    try:
        async for event in events:
            yield f"data: {event.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
    except ServiceError as exc:
        error = exc
        yield f"event: error\ndata: {json.dumps(error_body(exc.type, exc.message))}\n\n"
    finally:
        # Runs when the stream ends and when the client leaves (Starlette
        # cancels the response task): either way the request leaves the engine.
        handle.cancel()
        # The status line went out as 200 when the stream opened.
        ended.log(200, stream=True, error=error)
