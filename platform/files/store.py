"""Uploaded files: their records in JetStream KV, their bytes in a JetStream object store, both on disk.

    ember_files        KV, file id -> FileRecord (who owns it, what it is for)
    ember_file_data    object store, file id -> the bytes (no TTL: a file lives until deleted)

The record is written after the bytes, so a file that has a record is whole; a crash between the two leaves
bytes nobody lists, which the next delete of that id (or an operator) removes. Batch outputs are files too,
written by the batch runner under the batch owner's key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar, Literal

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict

from ember.bus.blobs import BlobNotFound, BlobStore
from ember.bus.kv_records import KvRecords, open_bucket

RECORDS = "ember_files"
DATA = "ember_file_data"

# What a client may upload a file for (OpenAI's purposes); "batch_output" is only written by batches.
UPLOAD_PURPOSES = ("batch", "user_data", "assistants", "vision", "fine-tune", "evals")
Purpose = Literal["batch", "user_data", "assistants", "vision", "fine-tune", "evals", "batch_output"]


class FileRecord(BaseModel):
    """One file as ``GET /v1/files/{id}`` shows it (``key_id`` is kept back)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Purpose
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None
    key_id: str
    # Lists are in upload order, finer than created_at's seconds.
    created_ns: int = 0

    INTERNAL: ClassVar[frozenset[str]] = frozenset({"key_id", "created_ns"})

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(self.INTERNAL))


class StorageFull(Exception):
    """The files' bucket is at its configured size (``files.max_total_bytes``)."""


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex[:24]}"


@dataclass
class FileStore:
    records: KeyValue
    data: BlobStore

    @classmethod
    async def open(cls, js: JetStreamContext, max_total_bytes: int = -1) -> FileStore:
        kv = await open_bucket(js, RECORDS)
        data = await BlobStore.open(js, DATA, ttl_s=0, max_bytes=max_total_bytes, storage=StorageType.FILE)
        return cls(kv, data)

    async def create(
        self,
        content: bytes | BinaryIO,
        *,
        filename: str,
        purpose: Purpose,
        key_id: str,
        file_id: str | None = None,
    ) -> FileRecord:
        """Store a file's bytes, then its record; raises StorageFull when the bucket has no room. A ``file_id``
        given (a batch's output, written again by a runner that resumed its finalizing) replaces that file."""
        file_id = file_id or new_file_id()
        try:
            info = await self.data.store_object(content, name=file_id)
        except nats.js.errors.APIError as e:
            # JetStream refuses a chunk past the bucket's max_bytes; the object store purges what it wrote.
            raise StorageFull(str(e)) from e
        record = FileRecord(
            id=file_id,
            bytes=info.size or 0,
            created_at=int(time.time()),
            created_ns=time.time_ns(),
            filename=filename,
            purpose=purpose,
            key_id=key_id,
        )
        await self.records.put(file_id, record.model_dump_json().encode())
        return record

    async def get(self, file_id: str) -> FileRecord | None:
        return await KvRecords(self.records, FileRecord).get(file_id)

    async def list(self) -> list[FileRecord]:
        """Every file, oldest first."""
        return sorted(await KvRecords(self.records, FileRecord).all(), key=lambda r: (r.created_ns, r.id))

    async def content(self, file_id: str) -> bytes:
        """The whole file; BlobNotFound if it is gone."""
        return await self.data.get(file_id)

    def chunks(self, file_id: str) -> AsyncGenerator[bytes, None]:
        """The file in chunks, for a download that does not hold it whole."""
        return self.data.chunks(file_id)

    async def delete(self, file_id: str) -> bool:
        """Remove the record, then the bytes; False if there was no such file."""
        existed = await self.get(file_id) is not None
        try:
            await self.records.delete(file_id)
        except (nats.js.errors.KeyNotFoundError, nats.errors.Error):
            pass
        await self.data.delete(file_id)
        return existed


__all__ = ["UPLOAD_PURPOSES", "BlobNotFound", "FileRecord", "FileStore", "Purpose", "StorageFull"]
