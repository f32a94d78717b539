"""One queued job's life on a worker: claim it, run it, bill it, record its end, call its webhook, settle it.

    delivered --(record finished)--------------------------------------------> webhook if owed, ack
        |------(a second message of a job another message runs)------------> term
        |------(delivery max_attempts + 1: its workers were lost each time)-> failed (worker_lost)
        +--> claim: running on this worker (compare-and-set; a cancel that came first wins)
             run it; meanwhile a cancel (its subject, or seen in the record) stops it
             usage record (Nats-Msg-Id = job id)  -> its final state (compare-and-set) -> webhook -> ack

Exactly once, in the face of lost workers: the usage record is written before the final state, with the job id
as its ``Nats-Msg-Id``. A worker lost between the two leaves the job unfinished: it runs again elsewhere and
its second usage record is dropped by JetStream as a duplicate; a worker lost after the final state leaves a job
that the next delivery finds finished and only acknowledges. Of two workers finishing one job (a frozen worker
that came back after its job was redelivered), the compare-and-set lets exactly one record the end. A function
may so run more than once, never be billed or completed more than once: one with side effects should be
idempotent on its ``request_id`` (the job id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from ember.bus import subjects
from ember.bus.messages import JOB_MODALITY, ErrorInfo, Job, UsageRecord, WireVersionError, decode_cancel
from ember.config.settings import FunctionsSettings
from ember.functions import errors
from ember.functions.jobs import FunctionJobRecord, JobStore
from ember.functions.queue import QueueConsumer, QueuedJob, Settle
from ember.functions.webhook import WebhookSender
from ember.usage import stream as usage_stream

log = logging.getLogger("ember.functions.runner")


@dataclass(frozen=True)
class Outcome:
    """How a job ended on its worker: an output, an error, or stopped on request (``aborted``)."""

    output: Any = None
    error: ErrorInfo | None = None
    aborted: bool = False

    @property
    def status(self) -> str:
        return "cancelled" if self.aborted else "failed" if self.error is not None else "succeeded"


class Executor(Protocol):
    """What runs a job's work: a worker's handler for one model (``FunctionHandler`` for functions)."""

    async def execute(self, job: Any) -> Outcome:
        """Run ``job`` to its end; a cancel(job.request_id) meanwhile ends it with ``aborted``."""
        ...

    def cancel(self, request_id: str) -> None: ...


def record_for(queued: QueuedJob) -> FunctionJobRecord:
    """The job's record as the gateway would have created it (a worker that dequeues a job first writes it)."""
    return FunctionJobRecord(
        id=queued.job_id,
        function=queued.job.model,
        created_at=queued.created_at,
        key_id=queued.key_id,
        webhook_url=queued.webhook_url,
        fingerprint=queued.fingerprint,
    )


@dataclass
class JobRunner:
    """Runs the queued jobs of one worker host (``worker_id``: the subject its cancels come to)."""

    store: JobStore
    js: JetStreamContext
    settings: FunctionsSettings
    executor: Executor
    worker_id: str

    async def __call__(self, msg: Msg, queued: QueuedJob) -> Settle:
        job_id = queued.job_id
        record = await self.store.get(job_id) or await self.store.create(record_for(queued))
        if record.finished:
            await self._notify(record)
            return Settle.ACK
        seq = msg.metadata.sequence.stream
        if record.message_seq not in (None, seq):
            log.info("job %s: message %d dropped, a copy of message %s", job_id, seq, record.message_seq)
            return Settle.TERM
        delivered = msg.metadata.num_delivered
        if delivered > self.settings.max_attempts:
            outcome = Outcome(error=errors.workers_lost(queued.job.model, delivered - 1))
            return await self._finish(queued, outcome, time.perf_counter())
        claimed = await self.store.change(job_id, lambda r: self._claim(r, seq))
        if claimed is None or claimed.finished:  # cancelled (or finished elsewhere) since we read it
            if claimed is not None:
                await self._notify(claimed)
            return Settle.ACK
        if claimed.message_seq != seq or claimed.worker_id != self.worker_id:
            return Settle.TERM
        started = time.perf_counter()
        watch = asyncio.create_task(self._watch_cancel(job_id))
        try:
            outcome = await self.executor.execute(queued.job.model_copy(update={"request_id": job_id}))
        except asyncio.CancelledError:  # this worker is stopping: the job goes back to the queue
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.change(job_id, self._unclaim))
            raise
        finally:
            watch.cancel()
        return await self._finish(queued, outcome, started)

    def _claim(self, r: FunctionJobRecord, seq: int) -> FunctionJobRecord | None:
        if r.finished or r.message_seq not in (None, seq):
            return None
        update = {"status": "running", "worker_id": self.worker_id, "message_seq": seq, "attempts": r.attempts + 1}
        return r.model_copy(update={**update, "started_at": time.time()})

    def _unclaim(self, r: FunctionJobRecord) -> FunctionJobRecord | None:
        if r.status != "running" or r.worker_id != self.worker_id:
            return None
        return r.model_copy(update={"status": "queued", "worker_id": None})

    async def _watch_cancel(self, job_id: str) -> None:
        """A cancel sent while the job was being claimed can miss the cancel subject: the record still says so."""
        every = min(2.0, self.settings.ack_wait_s / 3)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                record = await self.store.get(job_id)
                if record is not None and record.status == "cancelled":
                    self.executor.cancel(job_id)
                    return

    async def _finish(self, queued: QueuedJob, outcome: Outcome, started: float) -> Settle:
        job: Job = queued.job
        if outcome.aborted:
            status = "cancelled"
        elif outcome.error is not None:
            status = outcome.error.code or "error"
        else:
            status = "ok"
        usage = UsageRecord(
            request_id=queued.job_id,
            key_id=queued.key_id,
            model=job.model,
            modality=JOB_MODALITY[job.kind],
            duration_ms=(time.perf_counter() - started) * 1000,
            status=status,
        )
        # Before the final state: see the module's docstring.
        await usage_stream.record(self.js, usage)

        def end(r: FunctionJobRecord) -> FunctionJobRecord | None:
            if r.finished:  # cancelled by its owner, or finished by a worker that came back from a freeze
                return None
            return r.model_copy(
                update={
                    "status": outcome.status,
                    "output": outcome.output,
                    "error": outcome.error,
                    "finished_at": time.time(),
                    "webhook_status": "pending" if r.webhook_url else None,
                }
            )

        final = await self.store.change(queued.job_id, end)
        if final is not None:
            await self._notify(final)
        return Settle.ACK

    async def _notify(self, record: FunctionJobRecord) -> None:
        """Send the finished job's webhook if it is still owed (a worker lost while sending owes it still)."""
        if record.webhook_url is None or record.webhook_status != "pending":
            return
        sent = await WebhookSender(self.settings).deliver(record.webhook_url, record.id, record.public())
        state = "delivered" if sent else "failed"

        def mark(r: FunctionJobRecord) -> FunctionJobRecord | None:
            return None if r.webhook_status != "pending" else r.model_copy(update={"webhook_status": state})

        await self.store.change(record.id, mark)


@dataclass
class QueuedJobs:
    """One worker host's share of the job queue: its model's consumer, the runner, and the host's cancels."""

    consumer: QueueConsumer
    runner: JobRunner
    cancels: Subscription

    @classmethod
    async def start(
        cls,
        nc: NATS,
        store: JobStore,
        settings: FunctionsSettings,
        *,
        modality: str,
        model: str,
        executor: Executor,
        worker_id: str,
        capacity: int,
    ) -> QueuedJobs:
        js = nc.jetstream()
        runner = JobRunner(store, js, settings, executor, worker_id)

        async def on_cancel(msg: Msg) -> None:
            # The host on this subject stops only the jobs it got over core NATS; queued ones are stopped here.
            with contextlib.suppress(ValueError, WireVersionError):
                executor.cancel(decode_cancel(msg.data).request_id)

        cancels = await nc.subscribe(subjects.worker_cancel(worker_id), cb=on_cancel)
        consumer = QueueConsumer(
            js,
            modality,
            model,
            runner,
            ack_wait_s=settings.ack_wait_s,
            # The last delivery only marks the job failed (see JobRunner).
            max_deliver=settings.max_attempts + 1,
            capacity=capacity,
        )
        await consumer.start()
        return cls(consumer, runner, cancels)

    async def stop(self, grace_s: float) -> None:
        await self.consumer.stop(grace_s)
        with contextlib.suppress(Exception):
            await self.cancels.unsubscribe()
