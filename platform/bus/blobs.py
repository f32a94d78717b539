"""Payloads too big for one NATS message (uploads, generated images), kept a short while in JetStream's object store.

A job carries the blob's name instead of the bytes; the worker fetches it. The object store splits a blob into
chunks under the server's max_payload, and its TTL removes what nobody deleted (a gateway that died mid-request).

    name = await blobs.put(data)            # gateway, before publishing the job
    data = await blobs.get(name)            # worker
    await blobs.delete(name)                # whoever is done with it last (optional: the TTL cleans up)
"""

from __future__ import annotations

import base64
import hashlib
import io
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import BinaryIO, cast

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectStoreConfig, StorageType
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, ObjectStore


def inline_limit(max_payload: int) -> int:
    """Bytes of payload a job may carry inside its own message, on a server whose messages hold ``max_payload``:
    half of it, leaving the rest for the job's other fields, base64's growth and the headers."""
    return max_payload // 2


class BlobNotFound(KeyError):
    """No blob by that name: it expired, was deleted, or never existed."""


@dataclass
class BlobStore:
    """One object-store bucket of short-lived blobs."""

    store: ObjectStore
    js: JetStreamContext
    bucket: str
    # How long a read waits for the next chunk before it checks whether the blob was deleted under it, and
    # how long it waits in all for chunks a server no longer has under unchanged metadata (a local NATS that
    # sends nothing for this long has lost them).
    stall_check_s: float = 1.0
    stall_limit_s: float = 30.0

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        bucket: str = "ember_blobs",
        ttl_s: float = 3600.0,
        max_bytes: int = -1,
        storage: StorageType = StorageType.MEMORY,
    ) -> BlobStore:
        """The bucket, created on first use; memory-backed by default, since most blobs are disposable (uploaded
        files are not: they ask for file storage and no TTL)."""
        try:
            store = await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            config = ObjectStoreConfig(bucket=bucket, ttl=ttl_s or None, storage=storage, max_bytes=max_bytes)
            store = await js.create_object_store(bucket, config=config)
        return cls(store, js, bucket)

    async def put(self, data: bytes | BinaryIO, name: str | None = None) -> str:
        """Store ``data`` (bytes, or a binary file read chunk by chunk); returns its name (a fresh random one
        unless given)."""
        name = name or uuid.uuid4().hex
        await self.store_object(data, name)
        return name

    async def store_object(self, data: bytes | BinaryIO, name: str) -> ObjectInfo:
        """Store ``data`` under ``name``; what the store says of it (its size, for a file read as it went)."""
        # nats-py reads any object with readinto(), off the event loop; its annotation names only one class.
        return await self.store.put(name, data if isinstance(data, bytes) else cast(io.BufferedIOBase, data))

    async def get(self, name: str) -> bytes:
        """The blob's bytes; BlobNotFound if it is gone, also when it is deleted while being read."""
        return b"".join([chunk async for chunk in self.chunks(name)])

    async def chunks(self, name: str) -> AsyncGenerator[bytes, None]:
        """The blob's bytes in the store's chunks, for a reader that passes them on (a download) without holding
        the whole; BlobNotFound, before the first chunk or after some, if it is gone.

        nats-py's own ``ObjectStore.get`` reads the object's metadata, then waits for its chunks with no
        timeout: a blob deleted between the two (a gateway dropping the upload of a client that left while a
        worker reads it) leaves the reader waiting forever. Here a read that stalls checks the metadata again.
        """
        info = await self._info(name)
        if not info.size:
            return
        subject = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=self.bucket, obj=info.nuid)
        sub = await self.js.subscribe(subject, ordered_consumer=True)
        digest = hashlib.sha256()
        size = 0
        stalled = 0.0
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=self.stall_check_s)
                except nats.errors.TimeoutError:
                    stalled += self.stall_check_s
                    # Deleted (the metadata says so), replaced under the same name, or its chunks lost.
                    if (await self._info(name)).nuid != info.nuid or stalled >= self.stall_limit_s:
                        raise BlobNotFound(name) from None
                    continue
                stalled = 0.0
                digest.update(msg.data)
                size += len(msg.data)
                last = msg.metadata.num_pending == 0
                if last:
                    expected = info.digest.split("=", 1)[-1] if info.digest else ""
                    if size != info.size or digest.digest() != base64.urlsafe_b64decode(expected):
                        raise BlobNotFound(name)  # purged mid-read and the stream gave what it still had
                yield msg.data
                if last:
                    return
        finally:
            await sub.unsubscribe()

    async def _info(self, name: str) -> ObjectInfo:
        try:
            return await self.store.get_info(name)
        except nats.js.errors.ObjectNotFoundError as e:
            raise BlobNotFound(name) from e

    async def take(self, name: str) -> bytes:
        """Get a blob meant for one reader (a generated image on its way out) and delete it."""
        data = await self.get(name)
        await self.delete(name)
        return data

    async def delete(self, name: str) -> None:
        try:
            await self.store.delete(name)
        except nats.js.errors.ObjectNotFoundError:
            pass
