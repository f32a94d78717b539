"""What a running function may use beyond its input: the bus (to call the models) and whom it runs for.

The worker sets it for the duration of each call; built-ins read it with ``current()``. It is a ContextVar, so
concurrent calls each see their own, in async code and in the thread a plain function runs on.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from ember.bus.blobs import BlobStore
from ember.bus.client import JobClient
from ember.config import Settings


@dataclass(frozen=True)
class CallContext:
    bus: JobClient
    blobs: BlobStore | None
    settings: Settings
    # The FunctionJob's request id; jobs a built-in sends on derive theirs from it.
    request_id: str
    key_id: str | None
    priority: int


_current: ContextVar[CallContext | None] = ContextVar("ember_function_call", default=None)


def current() -> CallContext:
    """The running call's context; raises RuntimeError outside a functions worker."""
    ctx = _current.get()
    if ctx is None:
        raise RuntimeError("no function call is running here (only a functions worker sets the call context)")
    return ctx


def enter(ctx: CallContext) -> None:
    """Make ``ctx`` current for the running task (each job runs in a task of its own)."""
    _current.set(ctx)
