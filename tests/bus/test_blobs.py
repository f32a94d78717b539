"""BlobStore over a real nats-server's object store: payloads far over max_payload go through whole."""

from __future__ import annotations

import asyncio
import os
import time

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


async def test_a_blob_deleted_while_it_is_read_is_not_found_instead_of_a_read_that_never_ends(
    nats_url: str,
) -> None:
    """nats-py's own get waits forever for chunks purged after it read the metadata; a gateway dropping the
    upload of a client that left while a worker reads it is exactly that race. Every read here ends, with
    the whole blob or BlobNotFound."""
    nc = await connect(nats_url, name="test-blobs")
    try:
        blobs = await BlobStore.open(nc.jetstream(), bucket="test_blobs")
        blobs.stall_check_s = 0.2
        data = os.urandom(2 * 1024 * 1024)
        outcomes = set()
        for _ in range(6):
            name = await blobs.put(data)
            read = asyncio.create_task(blobs.get(name))
            await asyncio.sleep(0)  # let the read fetch the metadata first
            await blobs.delete(name)
            try:
                got = await asyncio.wait_for(read, 10)
            except BlobNotFound:
                outcomes.add("gone")
            else:
                assert got == data
                outcomes.add("whole")
        assert "gone" in outcomes
    finally:
        await nc.close()


async def test_a_read_whose_chunks_vanished_under_unchanged_metadata_gives_up(nats_url: str) -> None:
    nc = await connect(nats_url, name="test-blobs")
    try:
        js = nc.jetstream()
        blobs = await BlobStore.open(js, bucket="test_blobs")
        blobs.stall_check_s, blobs.stall_limit_s = 0.1, 0.5
        name = await blobs.put(b"x" * 1000)
        info = await blobs.store.get_info(name)
        await js.purge_stream("OBJ_test_blobs", subject=f"$O.test_blobs.C.{info.nuid}")
        started = time.monotonic()
        with pytest.raises(BlobNotFound):
            await blobs.get(name)
        assert time.monotonic() - started < 5
    finally:
        await nc.close()
