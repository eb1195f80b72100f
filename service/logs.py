"""Logging of the service: request ids in every line, text or JSON lines.

What it does:

- `REQUEST_ID`, a context variable holding the id of the request being
  served. `RequestIdMiddleware` (a pure ASGI middleware, see app.py) sets it
  per request; since uvicorn runs each request in its own task, it is then
  visible to everything that logs in that request: our routes, the error
  handlers, the stream body, and uvicorn's own access line, which uvicorn
  logs from inside the app's `send` call.
- `accept_request_id`: the client's `X-Request-Id` when it is a plausible id
  (1 to 128 visible ASCII characters), else a fresh one: arbitrary bytes are
  never reflected into a response header or a log line.
- `configure_logging(settings)`: one handler on the root logger, writing to
  stderr in the text or JSON format (`log_format`), with a filter that stamps
  each record with the current request id. uvicorn's loggers (error and
  access) are made to propagate to it, so `uvicorn.Config(log_config=None)`
  must be used for uvicorn not to install its own handlers over these.
  transformers' logger is routed through it too, and in JSON or above the
  info level its progress bars (not log lines) are turned off.

Text:  2025-01-01 12:00:00,123 INFO service.api.routes [3f2a...]: request gen-... finished: ...
JSON:  {"time": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "service.api.routes",
        "message": "request gen-... finished: ...", "request_id": "3f2a..."}
(`request_id` is "-" in text and absent in JSON outside a request.)

What it does not do: choose what is logged (the modules log), or log request
bodies, prompts or headers (an API key never reaches a log line from here).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID_LENGTH = 128
# Visible ASCII (no space, no control characters): safe in a header and a log line.
_PLAUSIBLE_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID_LENGTH)

REQUEST_ID: ContextVar[str | None] = ContextVar("introllm_request_id", default=None)

# Loggers that uvicorn configures itself when given a log_config; we take them over.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(supplied: bytes | None, refuse: Callable[[str], bool] = lambda _: False) -> str:
    """The client's id if it is plausible (and not refused), else a fresh one."""
    if supplied is None or _PLAUSIBLE_ID.fullmatch(supplied) is None:
        return new_request_id()
    value = supplied.decode("ascii")
    return new_request_id() if refuse(value) else value


def current_request_id() -> str | None:
    return REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request it was logged in (None outside one).

    A handler filter runs synchronously in the logging call, hence in the
    context of the code that logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(rid)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.rid = getattr(record, "request_id", None) or "-"
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, request_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a line stays one line and plain ASCII whatever a message holds.
        return json.dumps(line, ensure_ascii=True, default=str)


def configure_logging(settings: Settings) -> logging.Handler:
    """Route every log record (ours and uvicorn's) through one stderr handler in the chosen format.

    Idempotent: the root logger's earlier handlers are replaced. Returns the new handler.
    """
    # The API process never imports transformers (nor torch): nothing of it to take over there.
    return configure_handler(settings.log_format, settings.log_level, transformers=False)


def configure_handler(log_format: str, log_level: str, *, transformers: bool = True) -> logging.Handler:
    """`configure_logging` from the two values (the engine process gets these, not the settings);
    `transformers`: route transformers' own logger through the handler too (the engine process)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    # A handler left by logging.basicConfig or an earlier call would print every line twice.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.disabled = False
    if transformers:
        _take_over_transformers(progress_bars=log_format != "json" and root.level <= logging.INFO)
    return handler


def _take_over_transformers(progress_bars: bool) -> None:
    # transformers logs through a handler of its own (not propagating): route
    # its warnings through ours; its progress bars (checkpoint loading) are not
    # log lines: they would break a JSON-lines stream, and above the info level
    # (warnings and errors only) they are noise.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    if not progress_bars:
        hf_logging.disable_progress_bar()
