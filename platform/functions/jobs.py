"""Asynchronous invocations (``POST /v1/functions/{name}/invoke?async=true``): their state in JetStream KV.

Any gateway can answer ``GET /v1/jobs/{id}``: the one that runs the call writes its state here at each change,
and entries expire ``functions.job_ttl_s`` after their last write. A gateway that dies mid-call leaves its jobs
``running`` until they expire.

    queued -> running -> succeeded | failed
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from ember.bus.messages import ErrorInfo

BUCKET = "ember_function_jobs"

JobState = Literal["queued", "running", "succeeded", "failed"]


class FunctionJobRecord(BaseModel):
    """One async invocation as ``GET /v1/jobs/{id}`` shows it (``key_id`` is kept back: only its owner reads it)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    object: Literal["function.job"] = "function.job"
    function: str
    status: JobState = "queued"
    created_at: float
    finished_at: float | None = None
    output: Any = None
    error: ErrorInfo | None = None
    key_id: str

    def public(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude={"key_id"})
        if self.error is not None:
            e = self.error
            body["error"] = {"message": e.message, "type": e.type, "param": e.param, "code": e.code, "status": e.status}
        return body


def new_job_id() -> str:
    return f"fnjob_{uuid.uuid4().hex}"


@dataclass
class JobStore:
    kv: KeyValue

    @classmethod
    async def open(cls, js: JetStreamContext, ttl_s: float, bucket: str = BUCKET) -> JobStore:
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, storage=StorageType.FILE)
            kv = await js.create_key_value(config)
        return cls(kv)

    async def create(self, function: str, key_id: str) -> FunctionJobRecord:
        record = FunctionJobRecord(id=new_job_id(), function=function, created_at=time.time(), key_id=key_id)
        await self.put(record)
        return record

    async def put(self, record: FunctionJobRecord) -> None:
        await self.kv.put(record.id, record.model_dump_json().encode())

    async def get(self, job_id: str) -> FunctionJobRecord | None:
        try:
            entry = await self.kv.get(job_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, nats.js.errors.InvalidKeyError):
            return None
        return FunctionJobRecord.model_validate_json(entry.value or b"{}")
