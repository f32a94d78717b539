"""What every runtime's worker shares: the overload error, the time-to-first-token window, and start-up from a
loaded engine to serving the bus.

A runtime's ``run_<modality>_worker`` is then three lines: load its model on the engine thread
(``engine_thread.start_engine_thread``), build its ``JobHandler`` on the worker's NATS connection, and hand both
to ``run_worker``, which joins the queue group, announces the worker, serves until stopped, drains, and stops the
engine whatever happens.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from nats.aio.client import Client as NATS

from ember.bus.connection import connect
from ember.bus.messages import TTFT_WINDOW_S
from ember.bus.worker import JobHandler, WorkerHost, serve
from ember.config import Settings
from ember.runtimes.device_group.slot import current_slot
from ember.runtimes.fair_queue import FairQueue


class EngineOverloaded(Exception):
    """The waiting queue is full; the worker answers 503 and the client retries."""


class Withdrawn:
    """The event that ends a request taken back before it started (its worker hands the job to another worker
    with room): ``request_events`` ends at it without yielding it."""


class _EventSource(Protocol):
    # The request's events, put there by the engine thread (through loop.call_soon_threadsafe).
    events: asyncio.Queue[Any]
    # Set to take the request out of the engine's batch.
    cancelled: bool


async def request_events(request: _EventSource, last: tuple[type, ...]) -> AsyncIterator[Any]:
    """A submitted request's events up to and including the first of a ``last`` kind (finished, failed, aborted),
    or none more once it is withdrawn; leaving early cancels the request, so the engine drops it at its next step."""
    try:
        while True:
            event = await request.events.get()
            if isinstance(event, Withdrawn):
                return
            yield event
            if isinstance(event, last):
                return
    finally:
        request.cancelled = True


class _Queued(_EventSource, Protocol):
    def emit(self, event: Any) -> None: ...


Q = TypeVar("Q", bound=_Queued)


def withdraw_waiting(lock: threading.Condition, waiting: FairQueue[Q], request_id: str) -> bool:
    """Take a request of an event-streaming engine (audio, speech) back if it still waits in ``waiting`` (guarded
    by ``lock``): its events end with none more, and its worker hands the job to another. False where it started,
    ended or is unknown."""
    with lock:
        request = waiting.withdraw(request_id, lambda r: not r.cancelled)
        if request is None:
            return False
        request.cancelled = True
    request.emit(Withdrawn())
    return True


class LatencyWindow:
    """Latencies of the last ``window_s`` seconds (at most ``limit`` of them) and their p90: the worker's time to
    first token as it announces it (``JobHandler.ttft_p90_s``), which the scaler reads as pressure.

    A short window so the signal falls back soon after the load does: a scaler must not start workers for a queue
    that has already drained.
    """

    def __init__(self, window_s: float = TTFT_WINDOW_S, limit: int = 1024) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=limit)

    def add(self, latency_s: float, now: float | None = None) -> None:
        self._samples.append((time.monotonic() if now is None else now, latency_s))

    def p90(self, now: float | None = None) -> float | None:
        """The 90th percentile (nearest rank) of the window's latencies; None when it holds none."""
        now = time.monotonic() if now is None else now
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        if not self._samples:
            return None
        ordered = sorted(latency for _, latency in self._samples)
        return ordered[math.ceil(0.9 * len(ordered)) - 1]


async def run_worker(
    settings: Settings,
    model_id: str,
    nats_url: str,
    make_handler: Callable[[NATS], Awaitable[JobHandler]],
    stop_engine: Callable[[], None],
    *,
    worker_id: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``model_id`` with the handler ``make_handler`` builds until ``stop`` is set (or SIGINT/SIGTERM).

    Args:
        settings: the server's settings (stall limit and drain timeout of ``settings.worker``).
        model_id: the model served; it names the worker's NATS connection and its log lines.
        nats_url: the bus.
        make_handler: builds the job handler once connected (it may open the object store on the connection).
        stop_engine: stops the engine thread; called last, however serving ends (a failed start included).
        worker_id: a fixed id for this worker (default: a random one).
        stop: set it to stop serving (default: stop on SIGINT/SIGTERM).
    """
    try:
        slot = current_slot.get()
        if slot is not None and slot.ledger is not None:
            await slot.ledger.all_loaded.wait()  # a device group's runtimes serve once all have loaded
        nc = await connect(nats_url, name=f"ember-worker-{model_id}")
        try:
            handler = await make_handler(nc)
        except BaseException:
            await nc.close()
            raise
        stall = settings.worker.stall_limit_s
        extra = slot.metrics if slot is not None else None
        host = (
            WorkerHost(nc, handler, worker_id=worker_id, stall_limit_s=stall, extra_metrics=extra)
            if worker_id
            else WorkerHost(nc, handler, stall_limit_s=stall, extra_metrics=extra)
        )
        try:
            await serve(host, f"{handler.modality} model {model_id!r}", stop, settings.worker.drain_timeout_s)
        finally:
            handler.close()
    finally:
        stop_engine()
