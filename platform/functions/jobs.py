"""Asynchronous jobs (``POST /v1/functions/{name}/invoke?async=true``): their state in JetStream KV.

The job itself travels on the job queue (``ember.functions.queue``); this store holds what ``GET /v1/jobs/{id}``
shows, and it is the one place that decides a job's fate: every change is a compare-and-set on the entry's
revision, so of two workers that both finish a redelivered job (or a worker finishing and a client cancelling)
exactly one moves it to a finished state. Entries expire ``functions.job_ttl_s`` after their last write.

    queued -> running -> succeeded | failed | cancelled
       |         ^  |
       |         +--+  (its worker was lost: another worker takes it, up to functions.max_attempts times)
       +-> cancelled

Who writes: the gateway creates the entry (queued) and cancels; the worker that runs the job writes the rest, so
a gateway that dies after its 202 changes nothing. A worker that dequeues a job before the gateway wrote its
entry creates the entry itself from the queued message.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from ember.bus.kv_records import KvRecords, open_bucket
from ember.bus.messages import ErrorInfo

BUCKET = "ember_function_jobs"

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
WebhookState = Literal["pending", "delivered", "failed"]


class FunctionJobRecord(BaseModel):
    """One async invocation as ``GET /v1/jobs/{id}`` shows it (the fields in ``INTERNAL`` are kept back)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    object: Literal["function.job"] = "function.job"
    function: str
    status: JobState = "queued"
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: ErrorInfo | None = None
    # Workers that took the job so far (a lost worker's job is taken again).
    attempts: int = 0
    webhook_url: str | None = None
    webhook_status: WebhookState | None = None
    key_id: str
    # The host running it (its cancel subject), and the queue message it runs from: a second message of the same
    # job (an Idempotency-Key repeated after the queue's duplicate window) is dropped, not run beside it.
    worker_id: str | None = None
    message_seq: int | None = None
    # What the job was asked to do, to refuse an Idempotency-Key reused for different work.
    fingerprint: str = ""

    INTERNAL: ClassVar[frozenset[str]] = frozenset({"key_id", "worker_id", "message_seq", "fingerprint"})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude=set(self.INTERNAL))
        if self.error is not None:
            e = self.error
            body["error"] = {"message": e.message, "type": e.type, "param": e.param, "code": e.code, "status": e.status}
        return body


def new_job_id(key_id: str, function: str, idempotency_key: str | None = None) -> str:
    """A fresh id; or, with an Idempotency-Key, the same id for the same (key, function, Idempotency-Key)."""
    if idempotency_key is None:
        return f"fnjob_{uuid.uuid4().hex}"
    digest = hashlib.sha256(json.dumps([key_id, function, idempotency_key]).encode()).hexdigest()
    return f"fnjob_{digest[:32]}"


def fingerprint(function: str, value: Any, timeout_s: float, webhook_url: str | None) -> str:
    canonical = json.dumps([function, value, timeout_s, webhook_url], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class JobStore:
    kv: KeyValue

    @classmethod
    async def open(cls, js: JetStreamContext, ttl_s: float, bucket: str = BUCKET) -> JobStore:
        return cls(await open_bucket(js, bucket, ttl_s))

    async def create(self, record: FunctionJobRecord) -> FunctionJobRecord:
        """Write ``record`` unless its id has an entry already; returns whichever is stored."""
        try:
            await self.kv.create(record.id, _encode(record))
            return record
        except nats.js.errors.KeyWrongLastSequenceError:
            found = await self.get(record.id)
            if found is None:  # expired between the two calls
                return await self.create(record)
            return found

    async def put(self, record: FunctionJobRecord) -> None:
        await self.kv.put(record.id, _encode(record))

    async def get(self, job_id: str) -> FunctionJobRecord | None:
        return await KvRecords(self.kv, FunctionJobRecord).get(job_id)

    async def change(
        self, job_id: str, edit: Callable[[FunctionJobRecord], FunctionJobRecord | None]
    ) -> FunctionJobRecord | None:
        """Apply ``edit`` to the stored record by compare-and-set (``KvRecords.change``); None if there is none."""
        return await KvRecords(self.kv, FunctionJobRecord).change(job_id, edit)


def _encode(record: FunctionJobRecord) -> bytes:
    return record.model_dump_json().encode()
