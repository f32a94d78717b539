"""Keys survive a nats-server restart, reach a gateway that was disconnected, and never touch the disk in clear."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from ember.auth.keys import hash_secret
from ember.auth.nats_kv import NatsKeyStore
from ember.bus.connection import connect
from ember.bus.nats_server import EmbeddedNats


async def started(url: str, name: str) -> NatsKeyStore:
    store = NatsKeyStore(await connect(url, name=name))
    await store.start()
    return store


async def closed(store: NatsKeyStore) -> None:
    await store.stop()
    await store._nc.drain()


async def test_keys_persist_across_a_restart_and_are_never_on_disk_in_clear(tmp_path: Path) -> None:
    data = tmp_path / "nats"
    server = EmbeddedNats(data_dir=data)
    await asyncio.to_thread(server.start)
    try:
        store = await started(server.url, "before")
        live, live_secret = await store.create("free", name="keeps")
        await store.set_tier(live.id, "pro")
        dead, dead_secret = await store.create("developer")
        await store.revoke(dead.id)
        await closed(store)
    finally:
        await server.astop()

    on_disk = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())
    assert hash_secret(live_secret).encode() in on_disk  # the bucket is there, uncompressed, for the scan to see
    for secret in (live_secret, dead_secret):
        assert secret.encode() not in on_disk and secret[11:].encode() not in on_disk

    server = EmbeddedNats(data_dir=data)
    await asyncio.to_thread(server.start)
    try:
        store = await started(server.url, "after")
        try:
            key = await store.authenticate(live_secret)
            assert key is not None and key.id == live.id and key.tier == "pro" and key.name == "keeps"
            assert await store.authenticate(dead_secret) is None
            assert {k.id: k.revoked for k in await store.list()} == {live.id: False, dead.id: True}
        finally:
            await closed(store)
    finally:
        await server.astop()


async def test_a_revocation_made_during_a_restart_reaches_the_reconnected_gateway(tmp_path: Path) -> None:
    data = tmp_path / "nats"
    server = EmbeddedNats(data_dir=data)
    await asyncio.to_thread(server.start)
    gateway = await started(server.url, "gateway")
    try:
        key, secret = await gateway.create("free")
        await server.astop()
        server = EmbeddedNats(port=server.port, data_dir=data)
        await asyncio.to_thread(server.start)
        admin = await started(server.url, "admin")
        await admin.revoke(key.id)
        _, fresh_secret = await admin.create("pro")
        await closed(admin)
        # nats-py's own watch would resume only after missing two 5 s heartbeats (about 20 s, measured).
        deadline = time.monotonic() + 5
        while await gateway.authenticate(secret) is not None or await gateway.authenticate(fresh_secret) is None:
            assert time.monotonic() < deadline, "the reconnected gateway still has the old view"
            await asyncio.sleep(0.05)
    finally:
        await closed(gateway)
        await server.astop()
