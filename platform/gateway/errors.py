"""Every failure the gateway shows a client, as an HTTP status and OpenAI's error body.

GatewayError                       {"error": {"message", "type", "param", "code"}}
├── InvalidRequest        400      invalid_request_error: a bad field, bad or too deeply nested JSON, an unsupported
│                                  parameter, a model of another modality than the route's (invalid_model)
├── AuthenticationError   401      invalid_api_key: no key, a malformed, unknown or revoked one, a wrong admin key
├── PermissionDenied      403      the admin API is off (no auth.admin_key configured)
├── NotFound              404      model_not_found, or an unknown route
├── MethodNotAllowed      405
├── RequestTooLarge       413      the body passed gateway.max_body_bytes (or its route's own limit), with or
│                                  without a Content-Length
├── RateLimitExceeded     429      rate_limit_exceeded: the key is over a limit of its tier (ember.limits.headers)
├── ServiceUnavailable    503      no worker serves the model, or the workers are overloaded (with Retry-After)
└── UpstreamError         any      an error a worker reported (ErrorInfo), passed through
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.bus.messages import ErrorInfo
from ember.gateway.metrics import ERRORS

log = logging.getLogger("ember.gateway")


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: int = 1) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class UpstreamError(GatewayError):
    """An error a worker reported, shown as the worker described it."""

    def __init__(self, info: ErrorInfo) -> None:
        headers = {"Retry-After": "1"} if info.status == 503 else None
        super().__init__(info.message, code=info.code, param=info.param, headers=headers)
        self.status = info.status
        self.type = info.type


def from_validation(e: ValidationError) -> InvalidRequest:
    """The first problem of a pydantic ValidationError, naming the field as OpenAI's ``param`` does."""
    err = e.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    where = f" at '{param}'" if param else ""
    extra = f" ({len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
    got = err.get("input")
    shown = "" if isinstance(got, dict | list) or got is None else f"; got {got!r}"
    return InvalidRequest(f"{err['msg']}{where}{shown}{extra}", code="invalid_value", param=param)


def error_response(error: GatewayError, request_id: str | None = None) -> JSONResponse:
    # Every error a client gets before its response starts comes through here (handlers and middleware alike).
    ERRORS.labels(str(error.status), error.code or error.type).inc()
    headers = dict(error.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc, getattr(request.state, "request_id", None))


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFound(f"no route for {request.method} {request.url.path}", code="unknown_url")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    else:
        error = GatewayError(str(exc.detail))
        error.status = exc.status_code
        error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return error_response(error, getattr(request.state, "request_id", None))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(GatewayError("internal server error"), getattr(request.state, "request_id", None))
