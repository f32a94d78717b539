"""Functions (``client.functions``): their declarations, a call's result, and an async invocation's state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from .._models import BaseModel

__all__ = ["FunctionDefinition", "FunctionJob", "FunctionJobError", "FunctionList", "FunctionResult"]


class FunctionDefinition(BaseModel):
    """A function the server runs now: pass its ``name`` to ``client.functions.invoke``."""

    name: str
    object: Literal["function"]
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    # None: the server's default.
    timeout_s: float | None = None
    # Workers serving it now.
    workers: int


class FunctionList(BaseModel):
    """The result of ``client.functions.list()``: iterate it, or read ``data``."""

    object: Literal["list"]
    data: list[FunctionDefinition]

    # NOTE: iterates the functions rather than pydantic's (field, value) pairs, as ModelList does.
    def __iter__(self) -> Iterator[FunctionDefinition]:  # type: ignore[override]
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class FunctionResult(BaseModel):
    """A finished call: ``output`` is the function's return value, as JSON data."""

    id: str
    object: Literal["function.result"]
    function: str
    output: Any = None
    duration_ms: float


class FunctionJobError(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    # The HTTP status the call would have failed with, had it been synchronous.
    status: int


class FunctionJob(BaseModel):
    """An asynchronous invocation; poll ``client.functions.retrieve_job(id)`` until ``done``."""

    id: str
    object: Literal["function.job"]
    function: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: float
    finished_at: float | None = None
    output: Any = None
    error: FunctionJobError | None = None

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")
