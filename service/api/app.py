"""The FastAPI application: `create_app(settings)` and its lifespan.

What it does: builds the app (routes, error handlers, body-size limit,
request ids, API keys), and in its lifespan checks the checkpoint and starts
the engine process, which loads the weights and warms up (compiling, when
on), off the event loop (or uses the one `create_app(..., load_now=True)`
started), runs one warm-up request through the whole path, and serves; on
shutdown it drains (no new requests, in-flight ones get `drain_grace_s` to
finish, then time out) and stops the engine process. Every error leaves as
JSON of one shape (see errors.py), pydantic's validation errors included.

Request ids: `RequestIdMiddleware`, the outermost of ours, takes the client's
`X-Request-Id` (nginx sets one) or makes one, sets it in the `REQUEST_ID`
context variable for the request's log lines (logs.py) and returns it as the
`X-Request-Id` header of every response: errors, 413 and streams included
(500s get it from their handler, which runs outside our middleware).

What it does not do: bind sockets or handle signals (`__main__.py`), or any
per-request logic (routes.py, scheduler.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import service
from model.checkpoint_files import CheckpointInfo, context_length, read_checkpoint_info
from model.layout import refuse_declared_layer_types
from model.prompt_format import PLAIN, PromptFormat
from service.api.docs_page import docs
from service.api.engine_boot import Prestarted
from service.api.engine_client import EngineProcess
from service.api.keys import KeyRing
from service.api.metrics import ServerInfo, ServiceMetrics
from service.api.openapi import install as install_openapi
from service.api.playground import playground
from service.api.routes import api, ops
from service.api.scheduler import Limits, Scheduler, encode_prompt
from service.errors import ServiceError, error_body
from service.logs import REQUEST_ID, REQUEST_ID_HEADER, accept_request_id, current_request_id
from service.messages import EngineSpec
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    scheduler: Scheduler
    server: ServerInfo  # what it runs with: exported as metrics, shown by /info
    prompt_format: PromptFormat = PLAIN  # the checkpoint's: how /v1/chat/completions renders messages


def load(settings: Settings, metrics: ServiceMetrics, prestarted: Prestarted | None = None) -> Loaded:
    """Check the checkpoint, start the engine process (or use the one `engine_boot.prestart`
    started) and wait until it has loaded the weights and warmed up (blocking: run it in a
    thread). Raises `CheckpointError`, `UnsupportedModelError` (before the engine loads the
    weights, when the config says so) or `EngineStartError`."""
    try:
        return _load(settings, metrics, prestarted)
    except BaseException:
        if prestarted is not None:
            prestarted.close()  # kills it if it still runs: nothing will use it
        raise


def _load(settings: Settings, metrics: ServiceMetrics, prestarted: Prestarted | None) -> Loaded:
    compile, why = settings.compile_decision()
    if compile:
        # The console command points TORCHINDUCTOR_CACHE_DIR at compile_cache_dir (use_compile_cache_dir).
        log.info("torch.compile on (%s); compiled code cached in %s: the first start compiles for minutes "
                 "on a small CPU, later starts reuse it", why, os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    else:
        log.info("torch.compile off (%s)", why)
    # Tokenizer, config and manifest only, read without torch: the weights are the engine process's.
    checkpoint: CheckpointInfo = read_checkpoint_info(settings.checkpoint)
    tokenizer, head_config = checkpoint.tokenizer, checkpoint.manifest.head
    # A layer type the config names and the KV cache cannot serve: refused here, in one line, before any
    # weight; the engine process checks the loaded model in full (model/lm.py `attention_layout`).
    refuse_declared_layer_types(checkpoint.config)
    context = context_length(checkpoint.config)
    max_prompt_tokens, max_new_tokens, default_max_new_tokens = token_limits(settings, context)
    limits = Limits(
        max_prompt_tokens=max_prompt_tokens,
        max_new_tokens=max_new_tokens,
        default_max_new_tokens=default_max_new_tokens,
        context_length=context,
        default_timeout_s=settings.default_timeout_s,
        max_timeout_s=settings.max_timeout_s,
        retry_after_s=settings.retry_after_s,
        tau_range=(head_config.tau_min, head_config.tau_max),
        max_n=min(settings.max_n, settings.max_running_requests),  # a request's rows run together
    )
    spec = EngineSpec(
        checkpoint=str(settings.checkpoint),
        # As set ("auto" included): the engine process resolves them with torch, and says what it chose (Ready).
        device=settings.device,
        dtype=settings.dtype,
        trust_remote_code=settings.trust_remote_code,
        max_running=settings.max_running_requests,
        max_waiting=settings.max_waiting_requests,
        # The scheduler keeps prompt + max_new_tokens within both bounds.
        max_sequence_length=min(limits.max_prompt_tokens + limits.max_new_tokens, context or 1 << 62),
        prefill_token_budget=settings.prefill_token_budget,
        prefill_in_step=settings.prefill_in_step,
        compile=compile,
        compile_fallback=settings.compile == "auto",
        compile_helper=settings.compile_helper,
        native_decode=settings.native_decode,
        torch_threads=settings.engine_threads(),
        warm_up_prompt_ids=tuple(encode_prompt(tokenizer, "warm up")) if settings.warm_up else None,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    engine = EngineProcess.start(spec, observer=metrics, start_method=settings.engine_start_method,
                                 prestarted=prestarted)
    server = ServerInfo(
        base_model=checkpoint.manifest.base_model,
        checkpoint_format_version=checkpoint.manifest.format_version,
        tau_min=head_config.tau_min,
        tau_max=head_config.tau_max,
        version=service.__version__,
        device=engine.device,
        dtype=engine.dtype,
        max_running_requests=settings.max_running_requests,
        max_waiting_requests=settings.max_waiting_requests,
    )
    metrics.set_server(server)
    scheduler = Scheduler(engine, tokenizer, limits, metrics, tau_init=head_config.tau_init)
    return Loaded(scheduler, server, checkpoint.manifest.prompt_format)


def token_limits(settings: Settings, context: int | None) -> tuple[int, int, int]:
    """(max_prompt_tokens, max_new_tokens, default_max_new_tokens): the settings', cut to what a
    context of `context` tokens allows. Each is a bound alone: a prompt leaves room for one new
    token, new tokens for a one-token prompt; a request must also keep prompt + max_new_tokens
    within the context (the scheduler checks)."""
    if context is None:
        return settings.max_prompt_tokens, settings.max_new_tokens, settings.default_max_new_tokens
    room = max(context - 1, 1)
    max_new_tokens = min(settings.max_new_tokens, room)
    return min(settings.max_prompt_tokens, room), max_new_tokens, min(settings.default_max_new_tokens, max_new_tokens)


def create_app(
    settings: Settings | None = None, *, load_now: bool = False, prestarted: Prestarted | None = None
) -> FastAPI:
    """The app; its lifespan loads the checkpoint, unless `load_now` loads it here (blocking).

    With `load_now`, a failed start (`load`'s errors: a broken checkpoint, an
    unservable model, an engine that did not start) raises from this call,
    where the console command reports it in one line; raised inside the
    lifespan, it would reach uvicorn, which logs a traceback.
    """
    settings = settings or Settings()
    metrics = ServiceMetrics(settings.served_model_name)
    preloaded = load(settings, metrics, prestarted) if load_now else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = preloaded or await asyncio.to_thread(load, settings, metrics, prestarted)
        scheduler = loaded.scheduler
        scheduler.engine.on_death(lambda: _engine_died(app))
        try:
            if settings.warm_up:
                await scheduler.warm_up()
            app.state.server = loaded.server
            app.state.prompt_format = loaded.prompt_format
            app.state.scheduler = scheduler
            log.info("serving %s on %s", settings.served_model_name, scheduler.engine.device)
            yield
        finally:
            await drain(app, settings.drain_grace_s)
            scheduler.engine.stop(timeout=10.0)
            app.state.scheduler = None

    app = FastAPI(
        title="IntroLLM Serve",
        version=service.__version__,
        summary="Generation with a learned per-token sampling temperature.",
        lifespan=lifespan,
        docs_url=None,  # served from the package by service/api/docs_page.py, not from a CDN
        redoc_url=None,  # FastAPI's ReDoc page loads its script from a CDN too
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.scheduler = None
    app.state.prompt_format = PLAIN
    keys = KeyRing(settings.accepted_keys(), settings.api_key_file)
    app.state.keys = keys
    app.include_router(api)
    app.include_router(ops)
    app.include_router(playground)  # the page at / (service/static/), outside the OpenAPI document
    app.include_router(docs)  # /docs: Swagger UI from the package, likewise outside the document
    _install_error_handlers(app, metrics)
    install_openapi(app, settings.served_model_name)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, metrics=metrics)
    # Added last, so it runs first: the 413 of BodySizeLimit carries the id too.
    app.add_middleware(RequestIdMiddleware, keys=keys)
    return app


def _engine_died(app: FastAPI) -> None:
    """From the engine client's reader thread: requests in flight have failed; tell whoever serves us."""
    callback = getattr(app.state, "on_engine_death", None)
    if callback is not None:
        callback()


async def drain(app: FastAPI, grace_s: float) -> bool:
    """Stop admitting and wait for in-flight requests (at most `grace_s`, then they time out)."""
    scheduler: Scheduler | None = app.state.scheduler
    if scheduler is None:
        return True
    first = not scheduler.draining
    scheduler.begin_drain(grace_s)
    if first:  # logged once readiness already fails: a watcher may act on this line
        log.info("draining: readiness fails, %d running, %d waiting, grace %.1f s", *scheduler.engine.load(), grace_s)
    return await scheduler.wait_drained(grace_s + 10.0)


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        # Messages are ours and never quote a key or a prompt.
        log.info("refused: %d %s: %s", exc.status, exc.type, exc.message)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.failed("validation")
        errors = exc.errors()
        malformed = next((e for e in errors if e["type"] == "json_invalid"), None)
        if malformed is not None:  # FastAPI's json.loads failed: the body is not JSON at all
            position = malformed["loc"][-1]
            reason = malformed.get("ctx", {}).get("error", "malformed")
            message = f"{NOT_JSON}: {reason} at character {position}"
            log.info("refused: 400 invalid_json: %s", message)
            return JSONResponse(error_body("invalid_json", message), 400)
        # pydantic's messages only (never the input, which may hold anything),
        # and a few of them: a body of many bad fields must not get a reply
        # (and a log line) larger than itself.
        shown = [f"{_where(e['loc'])}: {e['msg']}" for e in errors[:MAX_ERRORS_SHOWN]]
        if len(errors) > MAX_ERRORS_SHOWN:
            shown.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more")
        message = "; ".join(shown) or "invalid request"
        param = _where(errors[0]["loc"]) if errors else "body"
        log.info("refused: 422 validation_error: %s", message)
        return JSONResponse(error_body("validation_error", message, None if param == "body" else param), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer when json.loads raises anything but a decode
            # error: bytes that are not UTF-8, or nesting deeper than the
            # parser's recursion limit.
            metrics.failed("validation")
            message = f"{NOT_JSON}: it must be UTF-8 and not nested too deeply"
            log.info("refused: 400 invalid_json: %s", message)
            return JSONResponse(error_body("invalid_json", message), status_code=400)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        metrics.failed("internal")
        # This handler runs in Starlette's outermost middleware, past ours: add the id here.
        request_id = current_request_id()
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500, headers=headers)


NOT_JSON = "the request body is not valid JSON"
MAX_ERRORS_SHOWN = 5
MAX_FIELD_NAME_SHOWN = 64  # an unknown field's name is the client's text: quote only its start


def _where(loc: tuple) -> str:
    """('body', 'tau_min') -> 'tau_min'; ('body',) -> 'body'."""
    parts = [str(p) for p in loc if p != "body"]
    where = ".".join(parts) or "body"
    return where if len(where) <= MAX_FIELD_NAME_SHOWN else where[:MAX_FIELD_NAME_SHOWN] + "..."


class RequestIdMiddleware:
    """ASGI middleware: one request id per HTTP request, in the log context and the response headers.

    The client's `X-Request-Id` is kept when plausible (see logs.accept_request_id)
    and not one of the API keys (a client that put its key there would
    otherwise have it logged); else a fresh id is used. The context variable
    is set, not reset: uvicorn runs each request in its own task (a copy of
    the context), so the id ends with the task, after uvicorn's access line
    and its "Exception in ASGI application" line have been logged with it.
    """

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = next((value for name, value in scope["headers"] if name.lower() == b"x-request-id"), None)
        request_id = accept_request_id(supplied, refuse=lambda value: self.keys.matches(value.encode()))
        REQUEST_ID.set(request_id)
        header = (b"x-request-id", request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before the app sees them.

    The body is read here (bounded) and replayed to the app; later receives
    (the disconnect notice) pass through untouched.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        self.metrics.failed("validation")
        log.info("refused: 413 payload_too_large: body over %d bytes", self.max_bytes)
        response = JSONResponse(
            error_body("payload_too_large", f"request body exceeds max_body_bytes={self.max_bytes}"), status_code=413
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
