"""The gateway's side of async jobs: put one on the queue, read it, cancel it.

Submitting stores the job in the queue first and writes its record second: a record therefore always has its
job on the queue, and a gateway lost between the two leaves a job that its worker records when it takes it.
With an Idempotency-Key the job id is derived from (key, function, Idempotency-Key), so a client's retry finds
the first job's record and gets it back (the same work asked again) or a conflict (different work).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from nats.js import JetStreamContext

from ember.bus.client import JobClient
from ember.bus.messages import FunctionJob, Modality, UsageRecord
from ember.config.settings import FunctionsSettings
from ember.functions import queue
from ember.functions.jobs import FunctionJobRecord, JobStore, fingerprint, new_job_id
from ember.functions.runner import record_for
from ember.usage import stream as usage_stream

log = logging.getLogger("ember.functions.async_jobs")


class IdempotencyConflict(Exception):
    """An Idempotency-Key already used for a job that asked for something else."""


class JobFinished(Exception):
    """The job ended before it could be cancelled."""

    def __init__(self, record: FunctionJobRecord) -> None:
        super().__init__(f"job {record.id} already {record.status}")
        self.record = record


@dataclass
class AsyncJobs:
    js: JetStreamContext
    store: JobStore
    bus: JobClient

    @classmethod
    async def open(cls, js: JetStreamContext, bus: JobClient, settings: FunctionsSettings) -> AsyncJobs:
        await queue.ensure_stream(js, settings)
        return cls(js, await JobStore.open(js, settings.job_ttl_s), bus)

    async def submit(
        self, job: FunctionJob, *, key_id: str, webhook_url: str | None = None, idempotency_key: str | None = None
    ) -> FunctionJobRecord:
        """Queue ``job`` (its request_id is replaced by the job id); its record, or the earlier job's."""
        job_id = new_job_id(key_id, job.model, idempotency_key)
        asked = fingerprint(job.model, job.input, job.timeout_s, webhook_url)
        earlier = await self.store.get(job_id)
        if earlier is not None:
            if earlier.fingerprint != asked:
                raise IdempotencyConflict(f"Idempotency-Key {idempotency_key!r} was used for another job")
            return earlier  # its record exists, so its job is on the queue already
        queued = queue.QueuedJob(
            job_id=job_id,
            job=job.model_copy(update={"request_id": job_id, "key_id": key_id}),
            key_id=key_id,
            created_at=time.time(),
            webhook_url=webhook_url,
            fingerprint=asked,
        )
        # A retry whose first try got as far as here is dropped by the queue within its duplicate window.
        await queue.publish(self.js, queued)
        record = record_for(queued)
        # A worker may have taken the job and written its entry first: the client still hears "queued", its 202.
        await self.store.create(record)
        return record

    async def get(self, job_id: str, key_id: str) -> FunctionJobRecord | None:
        """The job, if ``key_id`` owns it (another key's job is as absent as an expired one)."""
        record = await self.store.get(job_id)
        return record if record is not None and record.key_id == key_id else None

    async def cancel(self, job_id: str, key_id: str) -> FunctionJobRecord | None:
        """Cancel a queued or running job of ``key_id``; None if there is none; JobFinished if it has ended.

        A queued job is never run (its worker acknowledges it on sight); a running one is stopped on its worker.
        """
        if await self.get(job_id, key_id) is None:
            return None
        before: list[FunctionJobRecord] = []

        def stop(r: FunctionJobRecord) -> FunctionJobRecord | None:
            before.clear()  # called again after a conflict: only the last call's record counts
            if r.finished:
                return None
            before.append(r)
            pending = "pending" if r.webhook_url else None
            return r.model_copy(update={"status": "cancelled", "finished_at": time.time(), "webhook_status": pending})

        record = await self.store.change(job_id, stop)
        if record is None:
            return None
        if record.status != "cancelled":
            raise JobFinished(record)
        if not before:
            return record  # cancelled before
        if before[0].status == "running" and before[0].worker_id:
            await self.bus.send_cancel(before[0].worker_id, job_id)
        elif before[0].status == "queued":
            await self._bill_unrun(record)
        return record

    async def _bill_unrun(self, record: FunctionJobRecord) -> None:
        """A job cancelled before any worker finished it has no worker to write its usage record: this does."""
        rec = UsageRecord(
            request_id=record.id,
            key_id=record.key_id,
            model=record.function,
            modality=Modality.FUNCTION,
            duration_ms=0.0,
            status="cancelled",
        )
        try:
            await usage_stream.record(self.js, rec)
        except Exception as e:  # usage must never fail the request it describes
            log.warning("usage record for cancelled job %s not written: %s", record.id, e)
