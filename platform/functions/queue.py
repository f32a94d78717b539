"""The job queue: a JetStream work-queue stream that holds every async job until a worker has finished it.

    ember.v1.queue.<modality>.<model>     one QueuedJob per async job; stream EMBER_JOBS (work-queue retention)

A gateway publishes a job and answers 202 once JetStream has stored it; the workers of one model pull from a
durable consumer of their own (``jobs-<modality>-<model>``) and acknowledge a job only when it is settled::

    gateway --publish (Nats-Msg-Id = job id)--> EMBER_JOBS --fetch--> worker
                                                    ^                   | in-progress every ack_wait_s / 3
                                                    +-- redelivered ----+ no word for ack_wait_s (worker lost)

A job is delivered at most ``max_attempts + 1`` times: the extra delivery does not run it, it marks it failed
(``ember.functions.runner``), so a job whose workers keep dying ends as ``failed`` instead of staying queued.
Publishing with the job id as ``Nats-Msg-Id`` makes JetStream drop a second copy within the duplicate window
(``functions.idempotency_window_s``): a client's Idempotency-Key retry maps to the same job id.

Nothing here is specific to functions: any modality's worker can consume its own subject with a QueueConsumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ember.bus import subjects
from ember.bus.messages import JOB_MODALITY, WIRE_VERSION, Job, WireVersionError, encode
from ember.bus.tasks import cancel_and_wait
from ember.config.settings import FunctionsSettings

log = logging.getLogger("ember.functions.queue")

STREAM = "EMBER_JOBS"
SUBJECTS = f"{subjects.PREFIX}.queue.>"


def queue_subject(modality: str, model: str) -> str:
    return f"{subjects.PREFIX}.queue.{modality}.{subjects.token(model)}"


def consumer_name(modality: str, model: str) -> str:
    return f"jobs-{modality}-{subjects.token(model)}"


class QueuedJob(BaseModel):
    """One async job on the queue: everything a worker needs to run it and to create its job record."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    v: int = WIRE_VERSION
    kind: Literal["queued_job"] = "queued_job"
    job_id: str
    # The job as a worker's handler takes it; its request_id is the job id.
    job: Annotated[Job, Field(discriminator="kind")]
    key_id: str
    created_at: float
    webhook_url: str | None = None
    fingerprint: str = ""


def decode_queued(raw: bytes) -> QueuedJob:
    job = QueuedJob.model_validate_json(raw)
    if job.v != WIRE_VERSION:
        raise WireVersionError(f"expected wire version {WIRE_VERSION}, got {job.v!r}")
    return job


async def ensure_stream(js: JetStreamContext, settings: FunctionsSettings) -> None:
    """Create the job stream, or bring its limits in line with the config (file storage: jobs outlive restarts)."""
    config = StreamConfig(
        name=STREAM,
        subjects=[SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        # A job nobody took within its record's lifetime is dropped with it.
        max_age=settings.job_ttl_s,
        duplicate_window=settings.idempotency_window_s,
    )
    try:
        info = await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        with contextlib.suppress(nats.js.errors.BadRequestError):  # another process created it meanwhile
            await js.add_stream(config)
        return
    if (info.config.max_age, info.config.duplicate_window) != (config.max_age, config.duplicate_window):
        await js.update_stream(config)


async def publish(js: JetStreamContext, queued: QueuedJob) -> bool:
    """Store ``queued`` in the stream; returns False when JetStream dropped it as a duplicate of its job id."""
    subject = queue_subject(JOB_MODALITY[queued.job.kind], queued.job.model)
    ack = await js.publish(subject, encode(queued), stream=STREAM, headers={"Nats-Msg-Id": queued.job_id})
    return not ack.duplicate


def consumer_config(modality: str, model: str, ack_wait_s: float, max_deliver: int) -> ConsumerConfig:
    """The durable consumer that every worker of one model pulls from (so each job goes to one of them)."""
    name = consumer_name(modality, model)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=queue_subject(modality, model),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        # Bounded by what its workers pull; no limit of its own.
        max_ack_pending=-1,
    )


class Settle(enum.Enum):
    """What to tell JetStream about a message once its job has been dealt with."""

    ACK = "ack"  # done with: remove it from the queue
    NAK = "nak"  # not done: give it to a worker again now
    TERM = "term"  # never to be run (malformed, or a second message of a job already taken)


Handler = Callable[[Msg, QueuedJob], Awaitable[Settle]]


@dataclass
class QueueConsumer:
    """Pulls one model's jobs, at most ``capacity`` at a time, and keeps each alive while its handler runs."""

    js: JetStreamContext
    modality: str
    model: str
    handler: Handler
    ack_wait_s: float
    max_deliver: int
    capacity: int
    _free: asyncio.Semaphore = field(init=False)
    _sub: JetStreamContext.PullSubscription | None = field(default=None, init=False)
    _pull: asyncio.Task[None] | None = field(default=None, init=False)
    _running: set[asyncio.Task[None]] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._free = asyncio.Semaphore(self.capacity)

    async def start(self) -> None:
        config = consumer_config(self.modality, self.model, self.ack_wait_s, self.max_deliver)
        # Creates it, or updates ack_wait / max_deliver of one made under another config.
        await self.js.add_consumer(STREAM, config)
        self._sub = await self.js.pull_subscribe_bind(durable=config.durable_name, stream=STREAM)
        self._pull = asyncio.create_task(self._pull_forever())

    async def stop(self, grace_s: float) -> None:
        """Take no more jobs; let running ones finish for ``grace_s``, then stop them (they go back to the queue)."""
        await cancel_and_wait(self._pull)
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def load(self) -> int:
        return len(self._running)

    async def _pull_forever(self) -> None:
        assert self._sub is not None
        while True:
            await self._free.acquire()  # pull only what there is room to run: the rest stays for other workers
            try:
                msgs = await self._sub.fetch(1, timeout=5.0)
            except nats.errors.TimeoutError:
                self._free.release()
                continue
            except (nats.errors.Error, nats.js.errors.Error, OSError) as e:  # reconnecting: the next fetch will do
                self._free.release()
                log.debug("fetch from %s failed: %s", consumer_name(self.modality, self.model), e)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                self._free.release()
                continue
            for i, msg in enumerate(msgs):
                if i:
                    await self._free.acquire()
                task = asyncio.create_task(self._one(msg))
                self._running.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._free.release()

    async def _one(self, msg: Msg) -> None:
        try:
            queued = decode_queued(msg.data)
        except (ValidationError, WireVersionError, ValueError) as e:
            log.warning("dropping a malformed queued job: %s", e)
            await msg.term()
            return
        keepalive = asyncio.create_task(self._keep_alive(msg))
        settle = Settle.NAK
        try:
            settle = await self.handler(msg, queued)
        except asyncio.CancelledError:
            settle = Settle.NAK  # the worker is stopping: another one takes the job now
            raise
        except Exception:
            log.exception("queued job %s failed in its handler; it goes back to the queue", queued.job_id)
        finally:
            keepalive.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(_settle(msg, settle))

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell JetStream the job is still being worked on, well within every ack_wait_s."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            with contextlib.suppress(Exception):  # a reconnect; the next tick will do
                await msg.in_progress()


async def _settle(msg: Msg, settle: Settle) -> None:
    if settle is Settle.ACK:
        await msg.ack_sync(timeout=5.0)  # the server confirms, or the job is redelivered (and found finished)
    elif settle is Settle.NAK:
        await msg.nak(delay=0.5)
    else:
        await msg.term()
