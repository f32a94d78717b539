"""Payloads too big for one NATS message (uploads, generated images), kept a short while in JetStream's object store.

A job carries the blob's name instead of the bytes; the worker fetches it. The object store splits a blob into
chunks under the server's max_payload, and its TTL removes what nobody deleted (a gateway that died mid-request).

    name = await blobs.put(data)            # gateway, before publishing the job
    data = await blobs.get(name)            # worker
    await blobs.delete(name)                # whoever is done with it last (optional: the TTL cleans up)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.object_store import ObjectStore


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

    @classmethod
    async def open(
        cls, js: JetStreamContext, bucket: str = "ember_blobs", ttl_s: float = 3600.0, max_bytes: int = -1
    ) -> BlobStore:
        """The bucket, created on first use; memory-backed, since every blob is disposable."""
        try:
            store = await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            config = ObjectStoreConfig(bucket=bucket, ttl=ttl_s, storage=StorageType.MEMORY, max_bytes=max_bytes)
            store = await js.create_object_store(bucket, config=config)
        return cls(store)

    async def put(self, data: bytes, name: str | None = None) -> str:
        """Store ``data``; returns its name (a fresh random one unless given)."""
        name = name or uuid.uuid4().hex
        await self.store.put(name, data)
        return name

    async def get(self, name: str) -> bytes:
        try:
            result = await self.store.get(name)
        except nats.js.errors.ObjectNotFoundError as e:
            raise BlobNotFound(name) from e
        return result.data or b""

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
