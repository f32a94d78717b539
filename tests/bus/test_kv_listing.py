"""Listing a KV bucket on a real nats-server: every live key, every time, also under concurrent listings."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.js.kv import KeyValue
from pydantic import BaseModel

from ember.bus.connection import connect
from ember.bus.kv_listing import key_names, latest_entries
from ember.bus.kv_records import KvRecords, open_bucket

KEYS = 200
LISTINGS = 30


class Note(BaseModel):
    key: str


@pytest.fixture
async def kv(nats_url: str) -> AsyncIterator[KeyValue]:
    """A fresh bucket, deleted after the test."""
    nc = await connect(nats_url, name="test-kv-listing")
    bucket = f"test_listing_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    try:
        yield await open_bucket(js, bucket)
    finally:
        await js.delete_key_value(bucket)
        await nc.close()


async def test_every_listing_has_exactly_the_live_keys(kv: KeyValue) -> None:
    keys = [f"g{i % 4}.k{i:03d}" for i in range(KEYS)]
    await asyncio.gather(*(kv.put(k, Note(key=k).model_dump_json().encode()) for k in keys))
    deleted = set(keys[::7])
    purged = set(keys[3::11]) - deleted
    for k in deleted:
        await kv.delete(k)
    for k in purged:
        await kv.purge(k)
    live = set(keys) - deleted - purged
    # The markers keep their subjects: key_names has them, the listings of entries do not.
    assert set(await key_names(kv)) == set(keys)
    records = KvRecords(kv, Note)
    for _ in range(LISTINGS):
        assert {e.key for e in await latest_entries(kv)} == live
        assert {n.key for n in await records.all()} == live
    for listing in await asyncio.gather(*(records.all() for _ in range(LISTINGS))):
        assert {n.key for n in listing} == live
    assert {e.key for e in await latest_entries(kv, "g0.>")} == {k for k in live if k.startswith("g0.")}


async def test_an_empty_bucket_lists_nothing(kv: KeyValue) -> None:
    assert await latest_entries(kv) == []
    await kv.put("only", b"{}")
    await kv.delete("only")
    assert await latest_entries(kv) == []
