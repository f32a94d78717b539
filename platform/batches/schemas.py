"""The Batch object as OpenAI's API shows it, the request that creates one, and one line's outcome.

    validating -> in_progress -> finalizing -> completed
         |             |  \\-> (completion window passed) -> expired
         v             v
       failed      cancelling -> cancelled

``failed`` is a batch whose input file did not validate (``errors`` names the lines); lines that fail while the
batch runs go to its error file, and the batch still completes.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
FINISHED: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
# OpenAI takes only "24h"; shorter windows are Ember's own, for tests and for batches that must not linger.
WINDOWS = {"24h": 24 * 3600, "1h": 3600, "10m": 600}


class CreateBatch(BaseModel):
    """POST /v1/batches."""

    model_config = ConfigDict(extra="forbid")
    input_file_id: str = Field(min_length=1)
    endpoint: Endpoint
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None

    @field_validator("completion_window")
    @classmethod
    def _known_window(cls, value: str) -> str:
        if value not in WINDOWS:
            raise ValueError(f"must be one of {', '.join(WINDOWS)}")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512.
        if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
            raise ValueError("at most 16 pairs, keys up to 64 characters and values up to 512")
        return value


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchRecord(BaseModel):
    """One batch as ``GET /v1/batches/{id}`` shows it; the fields in ``INTERNAL`` are kept back."""

    model_config = ConfigDict(extra="forbid")
    id: str
    object: Literal["batch"] = "batch"
    endpoint: Endpoint
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None
    key_id: str
    # Lists are in creation order, finer than created_at's seconds.
    created_ns: int = 0

    INTERNAL: ClassVar[frozenset[str]] = frozenset({"key_id", "created_ns"})

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(self.INTERNAL))

    def moved(self, status: BatchStatus, **fields: Any) -> BatchRecord:
        """This batch in ``status``, stamped with the time it got there (``<status>_at``)."""
        stamp = f"{status}_at"
        if stamp in type(self).model_fields:
            fields.setdefault(stamp, int(time.time()))
        return self.model_copy(update={"status": status, **fields})


def new_batch(body: CreateBatch, key_id: str) -> BatchRecord:
    now = int(time.time())
    return BatchRecord(
        id=f"batch_{uuid.uuid4().hex[:24]}",
        endpoint=body.endpoint,
        input_file_id=body.input_file_id,
        completion_window=body.completion_window,
        created_at=now,
        created_ns=time.time_ns(),
        expires_at=now + WINDOWS[body.completion_window],
        metadata=body.metadata,
        key_id=key_id,
    )


class LineResult(BaseModel):
    """What one line came to: the response a 2xx or a final error gave, or an error of the batch's own (expired,
    cancelled). Written once per line (``ResultStore.record``); the output and error files are made from these."""

    model_config = ConfigDict(extra="forbid")
    index: int
    custom_id: str
    request_id: str
    status_code: int | None = None
    body: dict[str, Any] | None = None
    # The batch's own error (the line never ran to an answer): {"code", "message"}.
    error: dict[str, str] | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def output_line(self, batch_id: str) -> dict[str, Any]:
        """The line of the output or error file, in OpenAI's format."""
        response = None
        if self.status_code is not None:
            response = {"status_code": self.status_code, "request_id": self.request_id, "body": self.body}
        return {
            "id": f"batch_req_{batch_id.removeprefix('batch_')}_{self.index}",
            "custom_id": self.custom_id,
            "response": response,
            "error": self.error,
        }
