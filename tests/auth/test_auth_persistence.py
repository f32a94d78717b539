"""Keys survive a nats-server restart, reach a gateway that was disconnected, and never touch the disk in clear."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

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


def _suspended_at(task: asyncio.Task[None]) -> tuple[tuple[str, int], ...]:
    """Where ``task`` waits: each coroutine of its await chain, by function and line."""
    at = []
    coro: Any = task.get_coro()
    while (frame := getattr(coro, "cr_frame", None)) is not None:
        at.append((frame.f_code.co_name, frame.f_lineno))
        coro = coro.cr_await
    return tuple(at)


async def test_stop_returns_wherever_it_lands_in_a_rewatch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``stop()`` at each place in turn where the supervisor's re-watch waits returns, and the store restarts.

    A cancel that landed while the re-watch ended the old watch used to be swallowed, so the supervisor went
    back to its loop and ``stop()`` waited for it forever (a gateway shutdown that hung, seen once in CI).
    """
    server = EmbeddedNats(data_dir=tmp_path / "nats")
    await asyncio.to_thread(server.start)
    nc = await connect(server.url, name="sweep")
    # Checking for a reconnect on every loop turn, so that the sweep below starts a re-watch at once.
    store = NatsKeyStore(nc, reconnect_check_s=0)
    caplog.set_level(logging.INFO, logger="ember.auth")
    places: set[tuple[tuple[str, int], ...]] = set()
    try:
        await store.start()
        key, secret = await store.create("free")
        for target in range(200):
            caplog.clear()
            supervisor = store._supervisor
            assert supervisor is not None
            nc.stats["reconnects"] += 1  # what a reconnect looks like to it: it re-watches on its next turn
            visited: list[tuple[tuple[str, int], ...]] = []
            for _ in range(100_000):
                if len(visited) > target or "re-watching" in caplog.text:
                    break
                await asyncio.sleep(0)
                at = _suspended_at(supervisor)
                if not visited or visited[-1] != at:
                    visited.append(at)
            else:
                raise AssertionError(f"the re-watch stopped moving at {visited[-1:]} ({supervisor})")
            places.update(visited)
            await asyncio.wait_for(store.stop(), 10)
            await store.start()
            if "re-watching" in caplog.text:  # it finished before stop(): every place before was tried
                break
        else:
            raise AssertionError("no re-watch finished within the sweep")
        # It went through the places a re-watch waits in: the new watch, ending the old one, the listing.
        waited_in = {name for place in places for name, _ in place}
        assert {"_rewatch", "_end", "latest_entries"} <= waited_in, waited_in
        assert await store.authenticate(secret) == key
        revoked = await store.revoke(key.id)
        assert revoked is not None and await store.authenticate(secret) is None
        # A stopped store's watch leaves no consumer behind (the stream holds at most 1000).
        consumers = (await nc.jetstream().stream_info("KV_ember_keys")).state.consumer_count
        for _ in range(5):
            await store.stop()
            await store.start()
        assert (await nc.jetstream().stream_info("KV_ember_keys")).state.consumer_count == consumers
    finally:
        await store.stop()
        await nc.drain()
        await server.astop()
