"""A key store on a NATS JetStream key/value bucket, cached in memory and kept fresh by a watch.

The bucket (``ember_keys`` unless told otherwise; file storage, so the embedded server keeps it in its data
folder) holds two kinds of entries::

    h.<sha256 of the secret>   {"v": 1, "id", "name", "tier", "scopes", "created_at", "revoked_at", "prefix"}
    id.<key id>                <sha256 of the secret>          (the index that revoke and set-tier read through)

Nothing in it is the secret or can be turned back into it. Every instance watches ``h.>`` from start to stop
and keeps a map from digest to key, so ``authenticate`` never leaves the process; a change made through any
instance reaches every other one as fast as NATS delivers the watch (milliseconds on a LAN), and one made while
an instance was disconnected reaches it within about a second of its reconnect (``_watch_reconnects``). What
the bucket holds when a watch starts is loaded by ``ember.bus.kv_listing``, not taken from the watch: nats-py's
watch can say its initial values are done before it has yielded any (see that module).

Updates go through ``update(last=revision)`` (compare-and-set), so a revocation and a tier change that race
cannot undo each other. The cache applies an entry only if its revision is newer than the one it holds,
because an instance applies its own writes at once and their watch echo (or an older entry) may come after.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.kv import KeyValue

from ember.auth.interface import KeyStore, KeyStoreError
from ember.auth.keys import (
    KEY_ID,
    ApiKey,
    display_prefix,
    hash_secret,
    new_key_id,
    new_secret,
    now,
    well_formed,
)
from ember.bus.kv_listing import latest_entries
from ember.bus.tasks import cancel_and_wait

log = logging.getLogger("ember.auth")

DEFAULT_BUCKET = "ember_keys"
RECORD_VERSION = 1
_HASH = "h."
_ID = "id."
# Revisions of each entry the bucket keeps: the last few tier changes and the revocation, for an audit.
_HISTORY = 5
# How long the server keeps a watch's consumer that no one listens to (nats-py's default is 5 minutes). One
# whose store went away without deleting it (a crash, a lost connection) lapses after this long; a store that
# lost its connection for longer re-watches when it comes back anyway.
_WATCH_IDLE_S = 30.0
# Compare-and-set retries before giving up on a key that keeps changing under us.
_CAS_TRIES = 16


def _encode(key: ApiKey) -> bytes:
    return json.dumps({"v": RECORD_VERSION, **dataclasses.asdict(key)}, separators=(",", ":")).encode()


def _decode(raw: bytes) -> ApiKey:
    obj: dict[str, Any] = json.loads(raw)
    if obj.pop("v", None) != RECORD_VERSION:
        raise ValueError(f"unknown key record version in {obj.get('id')!r}")
    obj["scopes"] = tuple(obj["scopes"])
    return ApiKey(**obj)


class NatsKeyStore(KeyStore):
    """Keys in a JetStream KV bucket on ``nc``; the connection stays its owner's to close."""

    def __init__(
        self,
        nc: NATS,
        *,
        bucket: str = DEFAULT_BUCKET,
        start_timeout_s: float = 10.0,
        reconnect_check_s: float = 0.5,
    ) -> None:
        self._nc = nc
        self._bucket = bucket
        self._start_timeout_s = start_timeout_s
        self._reconnect_check_s = reconnect_check_s
        self._kv: KeyValue | None = None
        # The current watch and the task that feeds the cache from it.
        self._watch: tuple[KeyValue.KeyWatcher, asyncio.Task[None]] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # The cache. digest -> key; key id -> digest; KV key -> the newest revision applied.
        self._by_digest: dict[str, ApiKey] = {}
        self._digest_by_id: dict[str, str] = {}
        self._revisions: dict[str, int] = {}

    # -- life cycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        js = self._nc.jetstream()
        # Counted before the first watch, so that a reconnect during the load below is followed by a re-watch.
        reconnects = self._nc.stats["reconnects"]
        try:
            self._kv = await self._open_bucket(js)
            await asyncio.wait_for(self._rewatch(), self._start_timeout_s)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            await self.stop()
            raise KeyStoreError(
                f"cannot open the key bucket {self._bucket!r}: is JetStream enabled on this NATS (nats-server -js)?"
            ) from None
        except TimeoutError:  # asyncio's, from wait_for (nats-py's is a subclass, caught above)
            await self.stop()
            raise KeyStoreError(
                f"the key bucket {self._bucket!r} did not load within {self._start_timeout_s}s"
            ) from None
        self._supervisor = asyncio.create_task(
            self._watch_reconnects(reconnects), name=f"keys-reconnects-{self._bucket}"
        )

    async def _open_bucket(self, js: Any) -> KeyValue:
        try:
            kv: KeyValue = await js.key_value(self._bucket)
            return kv
        except nats.js.errors.BucketNotFoundError:
            pass
        try:
            kv = await js.create_key_value(
                bucket=self._bucket,
                description="Ember API keys (SHA-256 of each secret, never the secret)",
                history=_HISTORY,
                storage=api.StorageType.FILE,
            )
        except nats.js.errors.BadRequestError:
            # Another gateway created it a moment ago with another config (or it was configured by hand).
            kv = await js.key_value(self._bucket)
        return kv

    async def _rewatch(self) -> None:
        """Start a fresh watch, drop the old one, and load every key; the store is ready after the first load."""
        kv = self._open()
        # The watch starts before the listing, so a change the listing's snapshot misses comes through the
        # watch; ``_apply`` keeps whichever of the two is newer, in whatever order they come.
        watcher = await kv.watch(f"{_HASH}>", inactive_threshold=_WATCH_IDLE_S)
        task = asyncio.create_task(self._follow(watcher), name=f"keys-watch-{self._bucket}")
        old, self._watch = self._watch, (watcher, task)
        if old is not None:
            await self._end(*old)
        for entry in await latest_entries(kv, f"{_HASH}>"):
            self._apply_entry(entry)
        self._ready.set()

    async def _watch_reconnects(self, seen: int) -> None:
        """Re-watch after every reconnect, so that changes made while we were away arrive at once.

        NOTE: nats-py's watch is an ordered push consumer. After a reconnect it resumes by itself only once it
        has missed two idle heartbeats (5 s each), and a server restart loses the consumer: measured, a
        revocation made during a restart reached the old watch about 20 s later. A new watch replays the newest
        revision of every key; ``_apply`` ignores what the cache already has.
        """
        while True:
            await asyncio.sleep(self._reconnect_check_s)
            reconnects = self._nc.stats["reconnects"]
            if reconnects == seen or not self._nc.is_connected:
                continue
            try:
                await self._rewatch()
                seen = reconnects
                log.info("key store: re-watching %s after a reconnect", self._bucket)
            except Exception as e:  # JetStream may still be recovering after a restart: try on the next tick
                log.warning("key store: cannot re-watch %s yet: %s", self._bucket, e)

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await cancel_and_wait(supervisor)
        watch, self._watch = self._watch, None
        if watch is not None:
            await self._end(*watch)
        self._ready.clear()

    async def _end(self, watcher: KeyValue.KeyWatcher, task: asyncio.Task[None]) -> None:
        # Cancelled first, before anything awaits: if the caller is cancelled on the way (stop() during a
        # re-watch), the old watch at least no longer writes into the cache.
        task.cancel()
        consumer = await self._consumer_of(watcher)
        with contextlib.suppress(Exception):  # the connection may already be closed
            await watcher.stop()
        if consumer is not None:
            # Unsubscribing leaves the consumer on the server until it has been idle _WATCH_IDLE_S, and a stream
            # holds at most 1000 (measured): a store started and stopped that often could watch no more.
            with contextlib.suppress(Exception):
                await self._nc.jetstream().delete_consumer(f"KV_{self._bucket}", consumer)
        await cancel_and_wait(task)

    async def _consumer_of(self, watcher: KeyValue.KeyWatcher) -> str | None:
        """The name of the consumer behind ``watcher`` now, if the server can be asked without waiting."""
        # NOTE: nats-py keeps the watch's subscription private; it knows the consumer's current name (an ordered
        # consumer is re-created under a new name after a gap). Disconnected, a request would wait its timeout.
        sub = watcher._sub
        if sub is None or not self._nc.is_connected:
            return None
        try:
            info = await sub.consumer_info()
        except Exception:  # gone already (a server restart), or the connection went away
            return None
        name: str = info.name
        return name

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        """Feed the cache from one watch until it is stopped."""
        async for entry in watcher:
            # None marks the end of the initial values, which can come too early: _rewatch loads them instead.
            if entry is not None:
                self._apply_entry(entry)

    def _apply_entry(self, entry: KeyValue.Entry) -> None:
        """``_apply`` a watched or listed entry; one that cannot be read is logged and skipped."""
        try:
            self._apply(entry.key, entry.revision, None if entry.operation else entry.value)
        except (ValueError, TypeError, KeyError) as e:
            # A record we cannot read (written by hand, or by a newer Ember): skip it, keep watching.
            # NOTE: entry.key is "h." + a digest, never a secret, so it is safe to log.
            log.warning("key store: skipping unreadable entry %s@%s: %s", entry.key, entry.revision, e)

    def _apply(self, kv_key: str, revision: int | None, value: bytes | None) -> None:
        """Put one entry (``value`` None: deleted or purged) into the cache unless it holds a newer one."""
        assert kv_key.startswith(_HASH), kv_key
        if revision is not None:
            if revision <= self._revisions.get(kv_key, 0):
                return
            self._revisions[kv_key] = revision
        digest = kv_key[len(_HASH) :]
        old = self._by_digest.pop(digest, None)
        if old is not None:
            self._digest_by_id.pop(old.id, None)
        if value is not None:
            key = _decode(value)
            self._by_digest[digest] = key
            self._digest_by_id[key.id] = digest

    # -- the hot path ---------------------------------------------------------------------------------------

    async def authenticate(self, secret: str) -> ApiKey | None:
        if not self._ready.is_set():
            raise KeyStoreError("the key store is not started")
        if not well_formed(secret):
            return None
        digest = hash_secret(secret)
        key = self._by_digest.get(digest)
        if key is None:
            return None
        # NOTE: the dict lookup's timing can only tell an attacker about SHA-256(their guess), which is no help
        # in finding a secret; the comparison of the found digest is constant-time all the same.
        stored = self._digest_by_id.get(key.id, "")
        if not hmac.compare_digest(stored, digest) or key.revoked:
            return None
        return key

    # -- reads (from the cache) -----------------------------------------------------------------------------

    async def list(self) -> list[ApiKey]:
        return sorted(self._by_digest.values(), key=lambda k: (k.created_at, k.id))

    async def get(self, key_id: str) -> ApiKey | None:
        digest = self._digest_by_id.get(key_id)
        return None if digest is None else self._by_digest.get(digest)

    # -- writes (to the bucket, then the cache) -------------------------------------------------------------

    async def create(self, tier: str, name: str = "", scopes: tuple[str, ...] = ()) -> tuple[ApiKey, str]:
        kv = self._open()
        secret = new_secret()
        digest = hash_secret(secret)
        # The index entry first: a crash between the two writes leaves an index pointing nowhere (harmless),
        # never a live key that cannot be revoked by id.
        for _ in range(_CAS_TRIES):
            key_id = new_key_id()
            try:
                await kv.create(f"{_ID}{key_id}", digest.encode())
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # 48 random bits collided with an existing id; draw again
        else:
            raise KeyStoreError("could not find a free key id")
        key = ApiKey(
            id=key_id,
            name=name,
            tier=tier,
            scopes=tuple(scopes),
            created_at=now(),
            revoked_at=None,
            prefix=display_prefix(secret),
        )
        record = _encode(key)
        revision = await kv.create(f"{_HASH}{digest}", record)
        self._apply(f"{_HASH}{digest}", revision, record)
        log.info("key store: created %s (%s, tier %s)", key.id, key.prefix, key.tier)
        return key, secret

    async def revoke(self, key_id: str) -> ApiKey | None:
        key = await self._change(key_id, lambda k: k if k.revoked else dataclasses.replace(k, revoked_at=now()))
        if key is not None:
            log.info("key store: revoked %s (%s)", key.id, key.prefix)
        return key

    async def set_tier(self, key_id: str, tier: str) -> ApiKey | None:
        key = await self._change(key_id, lambda k: dataclasses.replace(k, tier=tier))
        if key is not None:
            log.info("key store: %s (%s) is now tier %s", key.id, key.prefix, tier)
        return key

    async def _change(self, key_id: str, change: Callable[[ApiKey], ApiKey]) -> ApiKey | None:
        """Apply ``change`` to the stored key by compare-and-set, reading the bucket (not the cache)."""
        if not KEY_ID.match(key_id):
            return None
        kv = self._open()
        for _ in range(_CAS_TRIES):
            try:
                digest = ((await kv.get(f"{_ID}{key_id}")).value or b"").decode()
                entry = await kv.get(f"{_HASH}{digest}") if digest else None
            except nats.js.errors.KeyNotFoundError:
                return None
            if entry is None or entry.value is None:
                return None
            old = _decode(entry.value)
            new = change(old)
            if new == old:
                return old
            record = _encode(new)
            try:
                revision = await kv.update(f"{_HASH}{digest}", record, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # changed by someone else since we read it: read again
            self._apply(f"{_HASH}{digest}", revision, record)
            return new
        raise KeyStoreError(f"key {key_id} kept changing; gave up after {_CAS_TRIES} tries")

    def _open(self) -> KeyValue:
        if self._kv is None:
            raise KeyStoreError("the key store is not started")
        return self._kv
