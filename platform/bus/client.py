"""The gateway's side of the bus: send a job to the workers of a model and read its reply stream.

One subscription per gateway (``ember.v1.reply.<gateway_id>.*``) receives every reply and routes it to the
job's queue by subject, so a job costs no subscribe/unsubscribe round trip.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar, overload

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ember.bus import subjects
from ember.bus.errors import NoWorkerError, ReplyTimeoutError, WorkerLostError
from ember.bus.messages import (
    JOB_MODALITY,
    CancelJob,
    Job,
    JobAccepted,
    JobFailed,
    Reply,
    StreamReply,
    TextChunk,
    TextJob,
    WireVersionError,
    WorkerInfo,
    decode_reply,
    decode_worker_info,
    encode,
)
from ember.bus.registry import WorkerRegistry

log = logging.getLogger("ember.bus.client")

R = TypeVar("R", bound=StreamReply)


@dataclass(frozen=True)
class StreamTiming:
    """How the gateway watches a running job."""

    # Longest wait for a worker to accept (validate and queue) a job.
    accept_timeout_s: float = 30.0
    # A stream quiet for this long makes the gateway ping the worker...
    idle_probe_s: float = 1.0
    # ...which must answer within this; no responders means it is gone at once.
    ping_timeout_s: float = 2.0
    # Unanswered pings in a row before the worker counts as lost (it may be busy in a long prefill).
    max_missed_pings: int = 5


class JobStream(Generic[R]):
    """The replies to one job, in order; iterate for them until the finished one.

    ``reply_type`` is what the caller expects (``TextChunk`` for text, ``StreamReply`` to take every kind);
    a reply of another kind is a protocol error.
    """

    def __init__(self, client: JobClient, job: Job, reply: str, queue: asyncio.Queue[Msg], reply_type: type[R]) -> None:
        self._client = client
        self._reply_type = reply_type
        self.request_id = job.request_id
        self.model = job.model
        self._reply = reply
        self._queue = queue
        self.accepted: JobAccepted | None = None
        self._done = False
        self._next_seq = 0

    async def _next_message(self, within_s: float) -> Reply:
        msg = await asyncio.wait_for(self._queue.get(), within_s)
        if msg.headers and msg.headers.get("Status") == "503":
            raise NoWorkerError("no worker is serving this model")
        return decode_reply(msg.data)

    async def wait_accepted(self, within_s: float) -> JobAccepted:
        """Wait for a worker to take the job; raises NoWorkerError, or returns the JobFailed error as raised."""
        try:
            first = await self._next_message(within_s)
        except TimeoutError as e:
            self.close()
            raise ReplyTimeoutError(f"no worker accepted the job within {within_s:.0f}s") from e
        except NoWorkerError:
            self.close()
            self._client.registry.forget_model(self.model)
            raise
        except BaseException:
            self.close()
            raise
        if isinstance(first, JobFailed):
            self.close()
            raise JobRefused(first)
        if not isinstance(first, JobAccepted):
            self.close()
            raise WireVersionError(f"expected an accepted message first, got {first.kind!r}")
        self.accepted = first
        return first

    async def __aiter__(self) -> AsyncIterator[R]:
        assert self.accepted is not None, "wait_accepted() first"
        timing = self._client.timing
        missed = 0
        try:
            while not self._done:
                try:
                    reply = await self._next_message(timing.idle_probe_s)
                except TimeoutError:
                    missed = 0 if await self._ping() else missed + 1
                    if missed >= timing.max_missed_pings:
                        raise WorkerLostError(f"worker {self.accepted.worker_id} stopped answering") from None
                    continue
                missed = 0
                if isinstance(reply, JobFailed):
                    self._done = True
                    raise JobRefused(reply)
                if not isinstance(reply, self._reply_type):
                    if isinstance(reply, JobAccepted):
                        continue
                    raise WireVersionError(f"expected {self._reply_type.__name__} replies, got {reply.kind!r}")
                if reply.seq != self._next_seq:
                    raise WorkerLostError(f"reply stream has a gap: expected chunk {self._next_seq}, got {reply.seq}")
                self._next_seq += 1
                if reply.finished:
                    self._done = True
                yield reply
        finally:
            self.close()

    async def _ping(self) -> bool:
        assert self.accepted is not None
        try:
            return await self._client.ping(self.accepted.worker_id)
        except NoWorkerError as e:
            raise WorkerLostError(f"worker {self.accepted.worker_id} went away") from e

    async def cancel(self) -> None:
        """Ask the worker to stop this job (the client went away); safe to call at any point."""
        if not self._done and self.accepted is not None:
            self._done = True
            await self._client.send_cancel(self.accepted.worker_id, self.request_id)
        self.close()

    def close(self) -> None:
        self._client._routes.pop(self._reply, None)


class JobRefused(Exception):
    """A worker refused or failed a job; ``failed.error`` is the error to show the client."""

    def __init__(self, failed: JobFailed) -> None:
        super().__init__(failed.error.message)
        self.failed = failed


@dataclass
class JobClient:
    nc: NATS
    gateway_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    timing: StreamTiming = StreamTiming()
    registry: WorkerRegistry = field(default_factory=WorkerRegistry)
    _routes: dict[str, asyncio.Queue[Msg]] = field(default_factory=dict, init=False)
    _subs: list[Subscription] = field(default_factory=list, init=False)
    _counter: itertools.count[int] = field(default_factory=itertools.count, init=False)

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
            await sub.unsubscribe()
        self._subs.clear()

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
    async def submit(self, job: TextJob) -> JobStream[TextChunk]: ...

    @overload
    async def submit(self, job: Job, reply_type: type[R]) -> JobStream[R]: ...

    async def submit(self, job: Job, reply_type: type[StreamReply] = TextChunk) -> JobStream[StreamReply]:
        """Publish a job to its model's queue group; the returned stream still has to be accepted."""
        reply = f"{subjects.reply_prefix(self.gateway_id)}.{next(self._counter)}"
        queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._routes[reply] = queue
        stream = JobStream(self, job, reply, queue, reply_type)
        await self.nc.publish(subjects.jobs(JOB_MODALITY[job.kind], job.model), encode(job), reply=reply)
        return stream

    async def ping(self, worker_id: str) -> bool:
        """True if the worker answered; raises NoWorkerError if nobody listens on its subject any more."""
        try:
            await self.nc.request(subjects.worker_ping(worker_id), b"", timeout=self.timing.ping_timeout_s)
            return True
        except nats.errors.NoRespondersError as e:
            self.registry.forget(worker_id)
            raise NoWorkerError(f"worker {worker_id} is gone") from e
        except nats.errors.TimeoutError:
            return False

    async def send_cancel(self, worker_id: str, request_id: str) -> None:
        try:
            await self.nc.publish(subjects.worker_cancel(worker_id), encode(CancelJob(request_id=request_id)))
        except nats.errors.Error as e:  # the job's worker may be gone too; nothing left to stop
            log.info("cancel of %s not sent: %s", request_id, e)

    def workers(self) -> list[WorkerInfo]:
        return self.registry.alive()
