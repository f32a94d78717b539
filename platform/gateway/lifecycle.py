"""What every route's jobs share, whatever their modality: the client-facing error for a failure on the bus, a
worker's abort, the x-ember-worker header, and cleanups that must finish even while the request is being cancelled.

``generation`` builds text's job lifecycle on these; the image, audio and function routes use them directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import anyio

from ember.bus.client import JobRefused, JobStream
from ember.bus.errors import (
    BusUnavailableError,
    DeadlineExceededError,
    NoWorkerError,
    ReplyTimeoutError,
    WorkerLostError,
    WorkerStalledError,
)
from ember.bus.messages import ErrorInfo
from ember.gateway.errors import GatewayError, ServiceUnavailable, UpstreamError


def bus_error(e: Exception, model: str) -> GatewayError:
    """The client-facing error for a failure on the bus."""
    if isinstance(e, JobRefused):
        return UpstreamError(e.failed.error)
    if isinstance(e, NoWorkerError):
        return ServiceUnavailable(f"no worker is serving model {model!r} right now", code="no_worker")
    if isinstance(e, WorkerStalledError):
        return ServiceUnavailable(f"the worker serving this request stalled: {e}", code="worker_stalled")
    if isinstance(e, WorkerLostError):
        return ServiceUnavailable(f"the worker serving this request went away: {e}", code="worker_lost")
    if isinstance(e, ReplyTimeoutError):
        return ServiceUnavailable(f"model {model!r}: {e}", code="worker_timeout")
    if isinstance(e, BusUnavailableError):
        return ServiceUnavailable(f"the job bus is unavailable: {e}", code="bus_unavailable")
    if isinstance(e, DeadlineExceededError):
        return UpstreamError(ErrorInfo(status=504, type="server_error", code="timeout", message=str(e)))
    raise e


async def settled(cleanup: Awaitable[None]) -> None:
    """Run a cleanup to the end even when the request is being cancelled (the client went away).

    NOTE: anyio cancellation is level-triggered: inside a cancelled scope every await is cancelled again, so a
    ``finally`` that settles the quota or cancels jobs would stop at its first await without the shield.
    """
    with anyio.CancelScope(shield=True):
        await cleanup


def aborted_error() -> GatewayError:
    info = ErrorInfo(status=503, type="server_error", code="worker_stopping", message="the worker stopped this job")
    return UpstreamError(info)


def worker_header(streams: Sequence[JobStream[Any]]) -> dict[str, str]:
    """Which workers served a request, for operators tracing a response (``x-ember-worker``)."""
    ids = dict.fromkeys(s.accepted.worker_id for s in streams if s.accepted is not None)
    return {"x-ember-worker": ",".join(ids)}
