"""NatsKeyStore on a real nats-server: the key life cycle, several gateways, and what the bucket holds."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable

import pytest

from ember.auth.interface import KeyStoreError
from ember.auth.keys import hash_secret, new_secret, well_formed
from ember.auth.nats_kv import NatsKeyStore
from ember.bus.connection import connect
from ember.bus.nats_server import find_nats_server, free_port
from tests.auth.conftest import NewStore, OpenConnection


async def eventually(check: Callable[[], Awaitable[object]], within: float = 5.0) -> float:
    """Seconds until ``await check()`` is true; fails after ``within`` seconds."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within}s")
        await asyncio.sleep(0.01)


async def test_create_authenticate_set_tier_revoke(store: NatsKeyStore) -> None:
    key, secret = await store.create("free", name="ci bot", scopes=("chat", "images"))
    assert well_formed(secret) and key.prefix == secret[:11]
    assert key.tier == "free" and key.name == "ci bot" and key.scopes == ("chat", "images")
    assert abs(key.created_at - time.time()) < 5 and key.revoked_at is None

    assert await store.authenticate(secret) == key
    assert await store.get(key.id) == key
    assert await store.list() == [key]

    moved = await store.set_tier(key.id, "pro")
    assert moved == dataclasses.replace(key, tier="pro")
    assert await store.authenticate(secret) == moved

    revoked = await store.revoke(key.id)
    assert revoked is not None and revoked.revoked and revoked.tier == "pro"
    assert await store.authenticate(secret) is None
    assert await store.get(key.id) == revoked and await store.list() == [revoked]
    # Revoking is idempotent: the first time stays.
    assert await store.revoke(key.id) == revoked


async def test_malformed_unknown_and_revoked_secrets_are_none(store: NatsKeyStore) -> None:
    key, secret = await store.create("free")
    await store.revoke(key.id)
    for candidate in ("", "nope", secret[:-1], secret + "x", secret.upper(), "Bearer " + secret, new_secret(), secret):
        assert await store.authenticate(candidate) is None, candidate


async def test_unknown_ids_are_none(store: NatsKeyStore) -> None:
    for key_id in ("key_000000000000", "nope", "", "key_>", "id.*", "key_" + "a" * 40):
        assert await store.get(key_id) is None
        assert await store.revoke(key_id) is None
        assert await store.set_tier(key_id, "pro") is None


async def test_keys_are_listed_oldest_first(store: NatsKeyStore) -> None:
    made = [(await store.create("free", name=str(i)))[0] for i in range(5)]
    assert sorted(k.id for k in await store.list()) == sorted(k.id for k in made)
    assert [k.created_at for k in await store.list()] == sorted(k.created_at for k in made)


async def test_a_second_gateway_sees_creation_tier_change_and_revocation(stores: NewStore) -> None:
    a, b = await stores(), await stores()
    key, secret = await a.create("free")
    await eventually(lambda: b.authenticate(secret))

    await a.set_tier(key.id, "enterprise")
    await eventually(lambda: _tier_of(b, secret, "enterprise"))

    assert await a.revoke(key.id) is not None
    await eventually(lambda: _refused(b, secret), within=3.0)
    # And the other way round, for a key the second gateway revokes.
    key2, secret2 = await a.create("pro")
    await eventually(lambda: b.get(key2.id))
    await b.revoke(key2.id)
    await eventually(lambda: _refused(a, secret2), within=3.0)


async def _tier_of(store: NatsKeyStore, secret: str, tier: str) -> bool:
    key = await store.authenticate(secret)
    return key is not None and key.tier == tier


async def _refused(store: NatsKeyStore, secret: str) -> bool:
    return await store.authenticate(secret) is None


async def test_a_gateway_started_later_loads_every_key(stores: NewStore) -> None:
    a = await stores()
    live, live_secret = await a.create("developer")
    dead, dead_secret = await a.create("free")
    await a.revoke(dead.id)
    late = await stores()
    assert await late.authenticate(live_secret) == live
    assert await late.authenticate(dead_secret) is None
    assert {k.id for k in await late.list()} == {live.id, dead.id}


async def test_every_start_has_every_key_at_once(stores: NewStore) -> None:
    # nats-py's watch could say "initial values done" before yielding any; start must not trust it (kv_listing).
    a = await stores()
    ids = {(await a.create("free"))[0].id for _ in range(60)}
    for _ in range(15):
        late = await stores()
        assert {k.id for k in await late.list()} == ids


async def test_authenticate_needs_no_round_trip_once_started(connections: OpenConnection, bucket: str) -> None:
    nc = await connections()
    store = NatsKeyStore(nc, bucket=bucket)
    await store.start()
    key, secret = await store.create("free")
    await nc.close()  # no NATS from here on: the answers come from memory
    try:
        assert await store.authenticate(secret) == key
        assert await store.authenticate(new_secret()) is None
    finally:
        await store.stop()


async def test_racing_revoke_and_set_tier_do_not_undo_each_other(stores: NewStore) -> None:
    a, b = await stores(), await stores()
    for _ in range(5):
        key, secret = await a.create("free")
        await eventually(lambda k=key: b.get(k.id))
        await asyncio.gather(a.revoke(key.id), b.set_tier(key.id, "pro"))
        # Each store's cache catches up through its watch; both must end on the same, merged record.
        await eventually(lambda k=key: _settled(a, b, k.id))
        assert await a.authenticate(secret) is None and await b.authenticate(secret) is None


async def _settled(a: NatsKeyStore, b: NatsKeyStore, key_id: str) -> bool:
    """Both stores show the key revoked AND on the new tier: neither write undid the other."""
    seen_a, seen_b = await a.get(key_id), await b.get(key_id)
    return seen_a is not None and seen_a == seen_b and seen_a.revoked and seen_a.tier == "pro"


async def test_no_secret_is_in_any_key_or_value_of_the_bucket(
    store: NatsKeyStore, connections: OpenConnection, bucket: str
) -> None:
    made = [await store.create("free", name=f"k{i}", scopes=("chat",)) for i in range(4)]
    await store.set_tier(made[0][0].id, "pro")
    await store.revoke(made[1][0].id)
    await store.set_tier(made[1][0].id, "developer")

    js = (await connections()).jetstream()
    info = await js.stream_info(f"KV_{bucket}")
    raw: list[bytes] = []
    # Every message the stream holds, every revision of every entry: subjects, headers and bodies.
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(f"KV_{bucket}", seq=seq)
        raw.append(msg.subject.encode() + b"\n" + repr(msg.headers).encode() + b"\n" + (msg.data or b""))
        assert re.fullmatch(rf"\$KV\.{bucket}\.(h\.[0-9a-f]{{64}}|id\.key_[0-9a-f]{{12}})", msg.subject), msg.subject
    assert len(raw) == 4 * 2 + 3
    blob = b"\n".join(raw)
    for key, secret in made:
        assert hash_secret(secret).encode() in blob  # the scan sees what is there...
        hidden = secret[len(key.prefix) :]  # ...and none of the secret past the display prefix is
        assert secret.encode() not in blob
        for i in range(len(hidden) - 8):
            assert hidden[i : i + 8].encode() not in blob, "8 characters of a secret are stored"


async def test_no_secret_is_logged(store: NatsKeyStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key, secret = await store.create("free", name="x")
    await store.authenticate(secret)
    await store.set_tier(key.id, "pro")
    await store.revoke(key.id)
    await store.authenticate(secret)
    assert key.id in caplog.text and secret not in caplog.text and secret[11:20] not in caplog.text


async def test_an_unreadable_entry_is_skipped(
    store: NatsKeyStore, connections: OpenConnection, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await (await connections()).jetstream().key_value(bucket)
    await kv.put("h." + "0" * 64, b"not json")
    key, secret = await store.create("free")
    assert await store.authenticate(secret) == key
    assert [k.id for k in await store.list()] == [key.id]
    assert "skipping unreadable entry h.0000" in caplog.text


async def test_a_nats_without_jetstream_is_a_clear_error() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port), stderr=asyncio.subprocess.DEVNULL
    )
    try:
        nc = await connect(f"nats://127.0.0.1:{port}", name="no-js")
        try:
            with pytest.raises(KeyStoreError, match="JetStream"):
                await NatsKeyStore(nc, bucket="nojs").start()
        finally:
            await nc.close()
    finally:
        proc.terminate()
        await proc.wait()
