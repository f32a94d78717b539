"""Every error the SDK raises. Catch ``ember.APIError`` for "the call failed", or a leaf for one cause.

    EmberError
    └── APIError                        a call to the server failed
        ├── APIConnectionError          no response: refused, reset, DNS, TLS
        │   └── APITimeoutError         no response in time
        ├── APIResponseValidationError  a 2xx whose body is not what the API promises
        └── APIStatusError              the server answered with an error: a 4xx/5xx, or an error event mid-stream
            ├── BadRequestError                 400
            ├── AuthenticationError             401
            ├── PermissionDeniedError           403
            ├── NotFoundError                   404
            ├── RequestTooLargeError            413
            ├── UnprocessableEntityError        422
            ├── RateLimitError                  429
            └── InternalServerError             500 and up
                └── ServiceUnavailableError     503

Other statuses (a 405, a 408, a 409) raise ``APIStatusError`` itself. The server's error body is OpenAI's
``{"error": {"message", "type", "param", "code"}}``; its fields become attributes of the exception.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ._retries import parse_retry_after

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "EmberError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ServiceUnavailableError",
    "UnprocessableEntityError",
]


class EmberError(Exception):
    """The root of every exception this SDK raises on purpose."""


class APIError(EmberError):
    """A call to the Ember API failed.

    Attributes:
        message: What went wrong, in the server's words where it gave any.
        request: The HTTP request that failed.
        body: The server's error object (the inside of ``{"error": ...}``), the decoded body when it had no such
            object, or None when there was no response.
        code, type, param: OpenAI's error fields from ``body``, or None.
    """

    def __init__(self, message: str, request: httpx.Request, *, body: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request
        self.body = body
        error = body if isinstance(body, Mapping) else {}
        self.code = _str_or_none(error.get("code"))
        self.type = _str_or_none(error.get("type"))
        self.param = _str_or_none(error.get("param"))


class APIConnectionError(APIError):
    """The request got no response: the connection was refused, dropped, or never made."""

    def __init__(self, request: httpx.Request, *, message: str = "Connection error.") -> None:
        super().__init__(message, request)


class APITimeoutError(APIConnectionError):
    """The request got no response before its timeout ran out."""

    def __init__(self, request: httpx.Request) -> None:
        super().__init__(request, message="Request timed out.")


class APIResponseValidationError(APIError):
    """A successful response whose body does not have the shape the API promises."""

    def __init__(self, response: httpx.Response, body: object | None, *, message: str) -> None:
        super().__init__(message, response.request, body=body)
        self.response = response
        self.status_code = response.status_code


class APIStatusError(APIError):
    """The server answered with an error status, or sent an error event in the middle of a stream.

    Attributes:
        status_code: The HTTP status. For an error event mid-stream (the response itself was a 200) it is the
            status the server would have answered with: the event's ``status``, else its integer ``code``,
            else one implied by its ``type``.
        response: The HTTP response.
        request_id: The response's ``x-request-id`` header: quote it when reporting a problem.
        retry_after: Seconds the server asked the client to wait (``Retry-After``), or None.
    """

    def __init__(
        self, message: str, *, response: httpx.Response, body: object | None, status_code: int | None = None
    ) -> None:
        self.status_code = response.status_code if status_code is None else status_code
        self.response = response
        self.request_id: str | None = response.headers.get("x-request-id")
        self.retry_after = parse_retry_after(response.headers)
        super().__init__(message, response.request, body=body)

    def __str__(self) -> str:
        text = f"Error code: {self.status_code} - {self.message}"
        return f"{text} (request id: {self.request_id})" if self.request_id else text


class BadRequestError(APIStatusError):
    """400: the request is malformed or a parameter is out of range; ``param`` names which."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, unknown or revoked."""


class PermissionDeniedError(APIStatusError):
    """403: the API key may not use this model or endpoint."""


class NotFoundError(APIStatusError):
    """404: no such model, or no such endpoint on this server."""


class RequestTooLargeError(APIStatusError):
    """413: the request body (or the prompt) is larger than the server accepts."""


class UnprocessableEntityError(APIStatusError):
    """422: the request is well-formed but cannot be served as asked."""


class RateLimitError(APIStatusError):
    """429: too many requests or tokens for this key's tier; ``retry_after`` says when to come back."""


class InternalServerError(APIStatusError):
    """500 and up: the server failed; the request itself may be fine."""


class ServiceUnavailableError(InternalServerError):
    """503: no worker can take the request now (the model is loading, or every queue is full)."""


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}

_MAX_TEXT_MESSAGE = 500

# For an error event mid-stream that names no status: OpenAI's error types and the status each one comes with.
_TYPE_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "server_error": 500,
    "service_unavailable_error": 503,
}


def make_status_error(
    response: httpx.Response, body: object | None, *, status_code: int | None = None
) -> APIStatusError:
    """The exception for an error ``response`` (already read), of the class its status maps to.

    ``body`` is the decoded response (JSON, else text); ``status_code`` overrides the response's own status
    for an error that arrived as an event inside a 200 stream.
    """
    status = response.status_code if status_code is None else status_code
    error = body.get("error", body) if isinstance(body, Mapping) else body
    message = error.get("message") if isinstance(error, Mapping) else None
    if not isinstance(message, str) or not message:
        if isinstance(error, str) and error.strip():
            message = error.strip()[:_MAX_TEXT_MESSAGE]  # a proxy's HTML error page, say
        elif error:
            message = str(error)
        else:
            message = httpx.codes.get_reason_phrase(status) or "Unknown error"
    cls = _STATUS_ERRORS.get(status) or (InternalServerError if status >= 500 else APIStatusError)
    return cls(message, response=response, body=error, status_code=status_code)


def status_of_error_event(error: Mapping[str, Any]) -> int:
    """The HTTP status an error event inside a stream stands for; 500 when it says nothing usable."""
    for key in ("status", "code"):
        value = error.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    return _TYPE_STATUSES.get(str(error.get("type")), 500)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)
