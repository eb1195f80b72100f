"""Service errors: one exception type carrying its HTTP status and a machine-readable type.

What it does: `ServiceError` is raised by the scheduler and the routes and
rendered by app.py as the one error shape of this API (OpenAI's, so the
official client reads it):

    {"error": {"message": "...", "type": "validation_error", "param": "max_new_tokens", "code": null}}

Types and statuses: validation_error 422, unauthorized 401, not_found 404,
payload_too_large 413, overloaded 429 (with Retry-After), unavailable 503
(with Retry-After), internal_error 500.

What it does not do: decide when to raise; that is the caller's.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.type, self.message, self.param)


def error_body(type: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": None}}


def validation_error(message: str, param: str | None = None) -> ServiceError:
    return ServiceError(422, "validation_error", message, param=param)


def overloaded(message: str, retry_after_s: int) -> ServiceError:
    return ServiceError(429, "overloaded", message, headers={"Retry-After": str(retry_after_s)})


def unavailable(message: str, retry_after_s: int) -> ServiceError:
    return ServiceError(503, "unavailable", message, headers={"Retry-After": str(retry_after_s)})


def unauthorized(message: str) -> ServiceError:
    return ServiceError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def internal_error(message: str) -> ServiceError:
    return ServiceError(500, "internal_error", message)
