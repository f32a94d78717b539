"""Pydantic records in a JetStream KV bucket, changed only by compare-and-set.

Used where two parties may write one record at once (a worker finishing a job while a client cancels it, a batch
runner finishing a batch while its owner cancels it): each change reads the record and its revision, decides,
and writes only if nobody wrote in between, else reads again and decides again. Exactly one of two racing
changes wins, and the loser's ``edit`` sees the winner's record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from pydantic import BaseModel

from ember.bus.kv_listing import MISSING, latest_entries

M = TypeVar("M", bound=BaseModel)


async def open_bucket(js: JetStreamContext, name: str, ttl_s: float | None = None) -> KeyValue:
    """A KV bucket of one value per key on disk (``ttl_s``: entries expire that long after their last write),
    created on first use."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        config = KeyValueConfig(bucket=name, history=1, ttl=ttl_s, storage=StorageType.FILE)
        return await js.create_key_value(config)


@dataclass
class KvRecords(Generic[M]):
    kv: KeyValue
    model: type[M]

    async def get(self, key: str) -> M | None:
        found = await self.read(key)
        return found[0] if found else None

    async def all(self) -> list[M]:
        """Every record in the bucket, in no particular order (``latest_entries``: not ``kv.keys()``, which can
        come back short)."""
        return [self.model.model_validate_json(e.value or b"{}") for e in await latest_entries(self.kv)]

    async def read(self, key: str) -> tuple[M, int] | None:
        """The record and its revision; None if there is none."""
        try:
            entry = await self.kv.get(key)
        except MISSING:
            return None
        assert entry.revision is not None
        return self.model.model_validate_json(entry.value or b"{}"), entry.revision

    async def change(self, key: str, edit: Callable[[M], M | None]) -> M | None:
        """Apply ``edit`` to the stored record, compare-and-set, again on a conflict; returns what is stored.

        ``edit`` returns the new record, or None to leave the entry as it is (the change no longer applies).
        Returns None when there is no entry.
        """
        while True:
            found = await self.read(key)
            if found is None:
                return None
            record, revision = found
            changed = edit(record)
            if changed is None:
                return record
            try:
                await self.kv.update(key, changed.model_dump_json().encode(), last=revision)
                return changed
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # someone wrote in between: read again and decide again
