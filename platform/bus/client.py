"""The gateway's side of the bus: send a job to a live worker of its model and read its reply stream.

One subscription per gateway (``ember.v1.reply.<gateway_id>.*``) receives every reply and routes it to the
job's queue by subject, so a job costs no subscribe/unsubscribe round trip. Which worker gets a job is the
``WorkerRouter``'s choice; how its replies are read, probed and recovered is ``JobStream``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import overload

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ember.bus import subjects
from ember.bus.errors import BusUnavailableError, NoWorkerError
from ember.bus.messages import (
    JOB_MODALITY,
    CancelJob,
    FunctionJob,
    Job,
    Modality,
    ScaleDemand,
    StreamReply,
    TextChunk,
    TextJob,
    WireVersionError,
    WorkerInfo,
    decode_worker_info,
    encode,
)
from ember.bus.registry import WorkerRegistry
from ember.bus.routing import WorkerRouter
from ember.bus.stream import JobRefused, JobStream, R, StreamTiming, request_jobs

__all__ = ["JobClient", "JobRefused", "JobStream", "StreamTiming"]

log = logging.getLogger("ember.bus.client")

# A job waiting for a cold start repeats its demand this often: a scaler that was restarting, or missed it, hears it.
DEMAND_EVERY_S = 1.0


@dataclass
class JobClient:
    nc: NATS
    gateway_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    timing: StreamTiming = field(default_factory=StreamTiming)
    registry: WorkerRegistry = field(default_factory=WorkerRegistry)
    # Models that scale to zero (min_workers = 0) -> how long a job for one with no live worker waits for a worker
    # to start (its cold_start_timeout_s); a job for any other model with none gets 503 no_worker at once.
    cold_start_s: dict[str, float] = field(default_factory=dict)
    router: WorkerRouter = field(init=False)
    _routes: dict[str, asyncio.Queue[Msg]] = field(default_factory=dict, init=False)
    _subs: list[Subscription] = field(default_factory=list, init=False)
    _counter: itertools.count[int] = field(default_factory=itertools.count, init=False)

    def __post_init__(self) -> None:
        self.router = WorkerRouter(self.registry)

    async def start(self) -> None:
        prefix = subjects.reply_prefix(self.gateway_id)
        self._subs.append(await self.nc.subscribe(f"{prefix}.*", cb=self._route))
        self._subs.append(await self.nc.subscribe(subjects.WORKERS_ANNOUNCE, cb=self._on_announce))
        await self.discover()

    async def discover(self) -> None:
        """Ask every worker to announce itself now (they answer on the announce subject)."""
        await self.nc.publish(subjects.WORKERS_DISCOVER, b"")
        await self.nc.flush()

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except nats.errors.Error as e:  # NATS is away; the subscription ends with the connection
                log.info("unsubscribe at stop: %s", e)
        self._subs.clear()

    def new_route(self, queue: asyncio.Queue[Msg]) -> str:
        reply = f"{subjects.reply_prefix(self.gateway_id)}.{next(self._counter)}"
        self._routes[reply] = queue
        return reply

    def drop_route(self, reply: str) -> None:
        self._routes.pop(reply, None)

    async def _route(self, msg: Msg) -> None:
        queue = self._routes.get(msg.subject)
        if queue is not None:
            queue.put_nowait(msg)

    async def _on_announce(self, msg: Msg) -> None:
        try:
            self.registry.update(decode_worker_info(msg.data))
        except (ValueError, WireVersionError) as e:
            log.warning("ignoring a bad worker announcement: %s", e)

    @overload
    async def submit(self, job: TextJob, *, prefer: str | None = None) -> JobStream[TextChunk]: ...

    @overload
    async def submit(self, job: Job, reply_type: type[R], *, prefer: str | None = None) -> JobStream[R]: ...

    async def submit(
        self, job: Job, reply_type: type[StreamReply] = TextChunk, *, prefer: str | None = None
    ) -> JobStream[StreamReply]:
        """Send a job to a live worker of its model (``prefer`` if it is one, e.g. where the request's other
        choices went, to share their prompt); the returned stream still has to be accepted.

        A job without a deadline gets ``timing.job_timeout_s`` (a function job at least its own timeout), counted
        after the wait for a cold start (``cold_start_s``).
        """
        if job.model in self.cold_start_s:
            await self._cold_start(JOB_MODALITY[job.kind], job.model, self.cold_start_s[job.model])
        if job.deadline is None:
            budget = self.timing.job_timeout_s
            if isinstance(job, FunctionJob):
                budget = max(budget, job.timeout_s + self.timing.deadline_grace_s)
            job = job.model_copy(update={"deadline": time.time() + budget})
        if not self.nc.is_connected:
            raise BusUnavailableError("the gateway is reconnecting to NATS")
        stream = JobStream(self, job, reply_type)
        if (started := request_jobs.get()) is not None:
            started.append(stream)
        try:
            await stream.publish(prefer)
        except nats.errors.Error as e:
            stream.close()
            raise BusUnavailableError(f"cannot reach NATS: {e}") from e
        return stream

    async def _cold_start(self, modality: Modality, model: str, timeout_s: float) -> None:
        """Until a worker of ``model`` announces itself, ask the scalers for one (``ScaleDemand``, every
        DEMAND_EVERY_S); past ``timeout_s`` the job goes out anyway, finds no worker and fails as usual (503)."""
        if self.registry.serving(modality, model):
            return
        log.info("no worker serves %r yet: asking for one and waiting up to %.0fs", model, timeout_s)
        demand = encode(ScaleDemand(modality=modality, model=model))
        until = time.monotonic() + timeout_s
        asked: float | None = None
        while not self.registry.serving(modality, model) and (now := time.monotonic()) < until:
            if (asked is None or now - asked >= DEMAND_EVERY_S) and self.nc.is_connected:
                asked = now
                with contextlib.suppress(nats.errors.Error):
                    await self.nc.publish(subjects.demand(modality, model), demand)
            await asyncio.sleep(0.05)  # announcements land in the registry from their own callback

    async def ping(self, worker_id: str, timeout_s: float | None = None) -> bool:
        """True if the worker answered; raises NoWorkerError if nobody listens on its subject any more."""
        try:
            await self.nc.request(
                subjects.worker_ping(worker_id), b"", timeout=timeout_s or self.timing.probe_timeout_s
            )
            return True
        except nats.errors.NoRespondersError as e:
            self.registry.forget(worker_id)
            raise NoWorkerError(f"worker {worker_id} is gone") from e
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
            return False

    async def send_cancel(self, worker_id: str, request_id: str) -> None:
        try:
            await self.nc.publish(subjects.worker_cancel(worker_id), encode(CancelJob(request_id=request_id)))
        except nats.errors.Error as e:  # the job's worker may be gone too; nothing left to stop
            log.info("cancel of %s not sent: %s", request_id, e)

    def workers(self) -> list[WorkerInfo]:
        return self.registry.alive()
