"""A key store per test, each on its own bucket of the session's real nats-server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from ember.auth.nats_kv import NatsKeyStore
from ember.bus.connection import connect

OpenConnection = Callable[[], Awaitable[NATS]]
NewStore = Callable[[], Awaitable[NatsKeyStore]]


@pytest.fixture
def bucket() -> str:
    return f"test_keys_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def connections(nats_url: str, bucket: str) -> AsyncIterator[OpenConnection]:
    """``await open_nc()``: a new NATS connection (one per "gateway"); all closed and the bucket deleted after."""
    opened: list[NATS] = []

    async def open_nc() -> NATS:
        nc = await connect(nats_url, name=f"test-keys-{len(opened)}")
        opened.append(nc)
        return nc

    yield open_nc
    live = [nc for nc in opened if not nc.is_closed]
    if live:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await live[0].jetstream().delete_key_value(bucket)
    for nc in live:
        await nc.drain()


@pytest.fixture
async def stores(connections: OpenConnection, bucket: str) -> AsyncIterator[NewStore]:
    """``await new_store()``: a started store on a connection of its own, on this test's bucket."""
    started: list[NatsKeyStore] = []

    async def new_store() -> NatsKeyStore:
        store = NatsKeyStore(await connections(), bucket=bucket)
        await store.start()
        started.append(store)
        return store

    yield new_store
    for store in started:
        await store.stop()


@pytest.fixture
async def store(stores: NewStore) -> NatsKeyStore:
    return await stores()
