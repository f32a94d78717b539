"""BlobStore over a real nats-server's object store: payloads far over max_payload go through whole."""

from __future__ import annotations

import os

import pytest

from ember.bus.blobs import BlobNotFound, BlobStore
from ember.bus.connection import connect


async def test_a_blob_over_max_payload_round_trips_and_is_deleted(nats_url: str) -> None:
    nc = await connect(nats_url, name="test-blobs")
    try:
        assert nc.max_payload < 3 * 1024 * 1024
        blobs = await BlobStore.open(nc.jetstream(), bucket="test_blobs")
        data = os.urandom(3 * 1024 * 1024 + 17)
        name = await blobs.put(data)
        # A second handle on the same bucket (as a worker would open it) sees the same bytes.
        again = await BlobStore.open(nc.jetstream(), bucket="test_blobs")
        assert await again.get(name) == data
        await blobs.delete(name)
        with pytest.raises(BlobNotFound):
            await again.get(name)
        await blobs.delete(name)  # deleting twice is fine: the TTL or another party may have been first
    finally:
        await nc.close()


async def test_an_unknown_blob_is_not_found(nats_url: str) -> None:
    nc = await connect(nats_url, name="test-blobs")
    try:
        blobs = await BlobStore.open(nc.jetstream(), bucket="test_blobs")
        with pytest.raises(BlobNotFound):
            await blobs.get("no-such-blob")
    finally:
        await nc.close()


async def test_take_reads_a_blob_once(nats_url: str) -> None:
    nc = await connect(nats_url, name="test-blobs")
    try:
        blobs = await BlobStore.open(nc.jetstream(), bucket="test_blobs")
        name = await blobs.put(b"an image")
        assert await blobs.take(name) == b"an image"
        with pytest.raises(BlobNotFound):
            await blobs.take(name)
    finally:
        await nc.close()
