"""How a function call fails, as the ErrorInfo the caller sees (the gateway shows it as an OpenAI-shaped error).

400 invalid_function_input     the input does not match the function's input schema
404 function_not_found         no live worker serves a function by that name
500 function_raised            the function raised; the message names the exception
500 invalid_function_output    it returned something its return type does not allow (or not JSON)
503 no_worker / worker_lost    the platform could not run it (from the bus; for an async job, its workers were
                               lost functions.max_attempts times)
504 function_timeout           it did not finish within its timeout_s
"""

from __future__ import annotations

from ember.bus.messages import ErrorInfo


class FunctionFailed(Exception):
    """A call failed with ``info``; built-ins raise it to pass a model's error through unchanged."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


def bad_input(name: str, message: str, param: str | None = None) -> ErrorInfo:
    return ErrorInfo(
        status=400,
        type="invalid_request_error",
        code="invalid_function_input",
        message=f"invalid input for function {name!r}: {message}",
        param=f"input.{param}" if param else "input",
    )


def not_found(name: str) -> ErrorInfo:
    return ErrorInfo(
        status=404,
        type="invalid_request_error",
        code="function_not_found",
        message=f"no function named {name!r} is served right now",
    )


def raised(name: str, e: BaseException) -> ErrorInfo:
    return ErrorInfo(
        status=500, type="function_error", code="function_raised", message=f"function {name!r} raised {e!r}"
    )


def bad_output(name: str, why: str) -> ErrorInfo:
    return ErrorInfo(
        status=500,
        type="function_error",
        code="invalid_function_output",
        message=f"function {name!r} returned an invalid output: {why}",
    )


def timed_out(name: str, timeout_s: float) -> ErrorInfo:
    return ErrorInfo(
        status=504,
        type="function_error",
        code="function_timeout",
        message=f"function {name!r} did not finish within its timeout of {timeout_s:g}s",
    )


def workers_lost(name: str, attempts: int) -> ErrorInfo:
    return ErrorInfo(
        status=503,
        type="server_error",
        code="worker_lost",
        message=f"function {name!r}: the job's worker was lost {attempts} times (functions.max_attempts); "
        "it was not run again",
    )
