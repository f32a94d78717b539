"""The rate limiter every gateway shares: GCRA state in a NATS JetStream key/value bucket.

Storage, one entry per API key and kind (``rate.<key>``, ``slots.<key>``):

- ``rate.<key>`` holds every dimension's TAT together, ``{"requests": tat_ns, "prompt_tokens": tat_ns, ...}``.
  One entry makes a multi-dimension admission atomic with a single compare-and-set: the gateway reads the
  entry, decides every limit against that one revision, and writes all the new TATs with
  ``update(last=revision)``. If another gateway wrote in between, the write fails and the gateway decides again
  from the new revision; so the admissions of all gateways form one serial order and none can overshoot. A
  request denied on one limit writes nothing at all, so there is nothing to roll back. (One entry per dimension
  would need a multi-key transaction for the same guarantee, and buys no concurrency: every request of a key
  touches its request count anyway.)
- ``slots.<key>`` holds the key's concurrency leases, ``{lease_id: expires_ns}``, updated the same way. The
  gateway that holds a lease pushes its expiry forward every ``lease_ttl_s / 3``; a crashed gateway stops, and
  its leases lapse.

Time comes from the NATS server, never from a gateway's wall clock (see ``ServerClock``), so a gateway with a
skewed clock decides with the same "now" as the others. Lease expiries are in the same server time.

The bucket uses file storage: the cost per compare-and-set is within a few percent of memory storage (~0.5 ms
on loopback either way), and the state survives a nats-server restart; with memory storage a restart would hand
every key a full bucket again and forget the running requests' leases. Entries expire a day after their last
write, which drops idle keys; an absent entry is a full bucket, so that changes no decision.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from fractions import Fraction
from typing import Any, Protocol, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from ember.bus.tasks import cancel_and_wait
from ember.limits import gcra
from ember.limits.gcra import NS_PER_S
from ember.limits.interface import (
    Cost,
    Decision,
    DimensionState,
    Lease,
    LimiterUnavailable,
    RateLimiter,
    tier_rates,
)
from ember.limits.tiers import Tier

log = logging.getLogger("ember.limits")

DEFAULT_BUCKET = "ember_limits"
_T = TypeVar("_T")
# Failures of the bus itself (as opposed to a lost compare-and-set race).
_BUS_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


class Clock(Protocol):
    """The single time source all gateways decide with."""

    async def now_ns(self) -> int: ...


def parse_server_time(ts: str) -> int:
    """An RFC 3339 time from nats-server (``2025-01-02T03:04:05.123456789Z``) as Unix nanoseconds, exactly."""
    whole, _, rest = ts.removesuffix("Z").partition(".")
    seconds = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC).timestamp()
    return int(seconds) * NS_PER_S + int((rest or "0")[:9].ljust(9, "0"))


class ServerClock:
    """The NATS server's clock, read from a JetStream API reply and carried forward on the local monotonic clock.

    Each JetStream ``STREAM.INFO`` reply carries ``ts``, the server's time when it answered. That instant lies
    between our send and our receive, so ``ts + (monotonic_now - monotonic_at_receive)`` is a lower bound of
    the server's time now, off by at most one round trip (~0.3 ms on loopback). A lower bound errs on the
    strict side: the gateway may deny a request a fraction of a millisecond early, never admit one early.
    The local wall clock is never read, so its skew cannot matter; the offset is refreshed every ``resync_s``
    to follow the server's clock if it is stepped.
    """

    def __init__(
        self, nc: NATS, stream: str, *, resync_s: float = 10.0, samples: int = 3, api_prefix: str = "$JS.API"
    ) -> None:
        self._nc = nc
        self._subject = f"{api_prefix}.STREAM.INFO.{stream}"
        self._resync_ns = int(resync_s * NS_PER_S)
        self._samples = samples
        self._offset_ns: int | None = None
        self._synced_at = 0
        self._last = 0
        self._lock = asyncio.Lock()

    async def sync(self) -> None:
        """Measure the offset to the server's clock; the best of a few samples (each is a valid lower bound)."""
        best: int | None = None
        for _ in range(self._samples):
            reply = await self._nc.request(self._subject, b"", timeout=5)
            received = time.monotonic_ns()
            body = json.loads(reply.data)
            if "ts" not in body:
                raise LimiterUnavailable(f"no server time in the reply to {self._subject}: {body.get('error')}")
            offset = parse_server_time(body["ts"]) - received
            best = offset if best is None else max(best, offset)
        self._offset_ns = best
        self._synced_at = time.monotonic_ns()

    async def now_ns(self) -> int:
        if self._offset_ns is None or time.monotonic_ns() - self._synced_at > self._resync_ns:
            async with self._lock:
                if self._offset_ns is None or time.monotonic_ns() - self._synced_at > self._resync_ns:
                    await self.sync()
        assert self._offset_ns is not None
        # Never backwards within a gateway, even when a resync measures a smaller offset.
        self._last = max(self._last, time.monotonic_ns() + self._offset_ns)
        return self._last


_PLAIN_ID = re.compile(r"[A-Za-z0-9_=-]{1,128}")


def kv_key(kind: str, key_id: str) -> str:
    """A KV key for this API key id; ids with characters KV keys cannot hold are base64url-encoded."""
    if _PLAIN_ID.fullmatch(key_id):
        return f"{kind}.{key_id}"
    encoded = base64.urlsafe_b64encode(key_id.encode()).rstrip(b"=").decode()
    return f"{kind}.x.{encoded}"


# A TAT is stored as an exact fraction of a nanosecond, written the way Fraction prints it: "1234/7".
Tats = dict[str, Fraction]


def _decode_tats(value: dict[str, Any]) -> Tats:
    return {dim: Fraction(tat) for dim, tat in value.items()}


def _encode_tats(tats: Tats) -> dict[str, Any]:
    return {dim: str(tat) for dim, tat in tats.items()}


def _evaluate(tier: Tier, state: Tats, now_ns: int, cost: Cost) -> tuple[Decision, Tats]:
    """Decide every limit of the tier against one snapshot of the state; the state to write if allowed."""
    rates = tier_rates(tier)
    outcomes = {dim: gcra.admit(rate, state.get(dim), now_ns, cost.of(dim)) for dim, rate in rates.items()}
    allowed = all(o.allowed for o in outcomes.values())
    if not allowed:
        # Nothing is charged, so every dimension shows the bucket as it stands.
        shown = {dim: gcra.peek(rate, state.get(dim), now_ns) for dim, rate in rates.items()}
    else:
        shown = outcomes
    dims = {
        dim: DimensionState(
            limit=rate.limit,
            period_s=rate.period_ns / NS_PER_S,
            remaining=shown[dim].remaining,
            reset_after_s=shown[dim].reset_after_ns / NS_PER_S,
            requested=cost.of(dim),
        )
        for dim, rate in rates.items()
    }
    if allowed:
        new_state = dict(state)
        for dim, o in outcomes.items():
            if o.tat_ns is not None:
                new_state[dim] = o.tat_ns
        return Decision(allowed=True, dimensions=dims), _prune(new_state, now_ns)
    denied = {dim: o.retry_after_ns for dim, o in outcomes.items() if not o.allowed}
    never = [dim for dim, wait in denied.items() if wait is None]
    if never:
        return Decision(allowed=False, limiting=never[0], retry_after_s=None, dimensions=dims), state
    limiting = max(denied, key=lambda d: denied[d] or 0)
    wait = denied[limiting] or 0
    return Decision(allowed=False, limiting=limiting, retry_after_s=wait / NS_PER_S, dimensions=dims), state


_V = TypeVar("_V", int, Fraction)


def _prune(state: dict[str, _V], now_ns: int) -> dict[str, _V]:
    """A TAT (or a lease's expiry) in the past is a full bucket (a free slot), the same as no entry."""
    return {k: v for k, v in state.items() if v > now_ns}


class NatsRateLimiter(RateLimiter):
    """GCRA limits and concurrency leases in one JetStream KV bucket, shared by every gateway; see the module."""

    def __init__(
        self,
        kv: KeyValue,
        clock: Clock,
        *,
        lease_ttl_s: float = 30.0,
        max_attempts: int = 100,
    ) -> None:
        self._kv = kv
        self.clock = clock
        self.lease_ttl_s = lease_ttl_s
        self._max_attempts = max_attempts
        # Leases this gateway holds, by API key id: the heartbeat renews exactly these.
        self._held: dict[str, set[str]] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        nc: NATS,
        *,
        bucket: str = DEFAULT_BUCKET,
        storage: StorageType = StorageType.FILE,
        lease_ttl_s: float = 30.0,
        clock: Clock | None = None,
    ) -> NatsRateLimiter:
        """Open the bucket, creating it on first use (every gateway may race to; the config is the same)."""
        js = nc.jetstream()
        try:
            kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(bucket=bucket, history=1, storage=storage, ttl=24 * 3600.0)
            kv = await js.create_key_value(config)
        return cls(kv, clock or ServerClock(nc, f"KV_{bucket}"), lease_ttl_s=lease_ttl_s)

    # -- the store ------------------------------------------------------------------------------------------

    async def _read(self, key: str) -> tuple[dict[str, Any], int]:
        """The entry's JSON and revision; ({}, 0) when there is none."""
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return {}, 0
        if not entry.value:
            return {}, entry.revision or 0
        value: dict[str, Any] = json.loads(entry.value)
        return value, entry.revision or 0

    async def _write(self, key: str, value: dict[str, Any], revision: int) -> bool:
        """Compare-and-set: False if another gateway wrote since ``revision``."""
        data = json.dumps(value, separators=(",", ":")).encode()
        try:
            if revision == 0:
                await self._kv.create(key, data)
            else:
                await self._kv.update(key, data, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def _cas_loop(self, what: str, attempt: Callable[[], Awaitable[tuple[bool, _T]]]) -> _T:
        """Run ``attempt`` until it reports done; between lost races, back off a random moment."""
        try:
            for n in range(self._max_attempts):
                done, result = await attempt()
                if done:
                    return result
                if n >= 2:
                    await asyncio.sleep(random.uniform(0, min(0.0005 * 2**n, 0.02)))
        except _BUS_ERRORS as e:
            raise LimiterUnavailable(f"{what}: the limit store is unreachable: {e!r}") from e
        raise LimiterUnavailable(f"{what}: lost {self._max_attempts} compare-and-set races in a row")

    # -- rate limits ----------------------------------------------------------------------------------------

    async def admit(self, key_id: str, tier: Tier, cost: Cost) -> Decision:
        if not tier_rates(tier):
            return Decision(allowed=True)  # nothing to count: no round trip
        key = kv_key("rate", key_id)

        async def attempt() -> tuple[bool, Decision]:
            value, revision = await self._read(key)
            state = _decode_tats(value)
            now = await self.clock.now_ns()
            decision, new_state = _evaluate(tier, state, now, cost)
            if not decision.allowed or new_state == state:
                return True, decision
            return await self._write(key, _encode_tats(new_state), revision), decision

        return await self._cas_loop(f"admit for key {key_id!r}", attempt)

    async def reconcile(self, key_id: str, tier: Tier, reserved: Cost, actual: Cost) -> None:
        rates = tier_rates(tier)
        deltas = {dim: actual.of(dim) - reserved.of(dim) for dim in rates}
        deltas = {dim: d for dim, d in deltas.items() if d != 0}
        if not deltas:
            return
        key = kv_key("rate", key_id)

        async def attempt() -> tuple[bool, None]:
            value, revision = await self._read(key)
            state = _decode_tats(value)
            now = await self.clock.now_ns()
            new_state = dict(state)
            for dim, delta in deltas.items():
                tat = state.get(dim)
                if delta > 0:
                    tat = gcra.charge(rates[dim], tat, now, delta)
                else:
                    tat = gcra.refund(rates[dim], tat, now, -delta)
                if tat is not None:
                    new_state[dim] = tat
            new_state = _prune(new_state, now)
            if new_state == state:
                return True, None
            return await self._write(key, _encode_tats(new_state), revision), None

        try:
            await self._cas_loop(f"reconcile for key {key_id!r}", attempt)
        except LimiterUnavailable as e:
            log.warning("%s (usage not settled: %s)", e, deltas)

    # -- concurrency ----------------------------------------------------------------------------------------

    async def acquire_slot(self, key_id: str, tier: Tier) -> Lease | None:
        limit = tier.concurrent_requests
        lease_id = uuid.uuid4().hex
        if limit is None:
            return Lease(key_id, lease_id, tracked=False)
        if limit == 0:
            return None
        key = kv_key("slots", key_id)
        ttl_ns = int(self.lease_ttl_s * NS_PER_S)

        async def attempt() -> tuple[bool, int | None]:
            """Done?, and the slots left free after ours (None: none was free)."""
            leases, revision = await self._read(key)
            now = await self.clock.now_ns()
            live = _prune(leases, now)
            if len(live) >= limit:
                return True, None
            live[lease_id] = now + ttl_ns
            return await self._write(key, live, revision), limit - len(live)

        remaining = await self._cas_loop(f"acquire_slot for key {key_id!r}", attempt)
        if remaining is None:
            return None
        self._held.setdefault(key_id, set()).add(lease_id)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._renew_forever(), name="ember-limits-leases")
        return Lease(key_id, lease_id, limit=limit, remaining=remaining)

    async def release(self, lease: Lease) -> None:
        if not lease.tracked:
            return
        held = self._held.get(lease.key_id)
        if held is not None:
            held.discard(lease.lease_id)
            if not held:
                del self._held[lease.key_id]
        key = kv_key("slots", lease.key_id)

        async def attempt() -> tuple[bool, None]:
            leases, revision = await self._read(key)
            if lease.lease_id not in leases:
                return True, None
            now = await self.clock.now_ns()
            rest = _prune({k: v for k, v in leases.items() if k != lease.lease_id}, now)
            return await self._write(key, rest, revision), None

        try:
            await self._cas_loop(f"release for key {lease.key_id!r}", attempt)
        except LimiterUnavailable as e:
            log.warning("%s; the lease lapses in %.0fs", e, self.lease_ttl_s)

    async def renew(self) -> None:
        """Push the expiry of every lease this gateway holds forward by the TTL; one write per API key."""
        ttl_ns = int(self.lease_ttl_s * NS_PER_S)
        for key_id in list(self._held):
            key = kv_key("slots", key_id)

            async def attempt(key_id: str = key_id, key: str = key) -> tuple[bool, None]:
                mine = self._held.get(key_id, set())
                if not mine:
                    return True, None
                leases, revision = await self._read(key)
                now = await self.clock.now_ns()
                # A lease of ours that is missing (its entry expired while NATS was unreachable) is put back:
                # the request is still running, so the slot is in use.
                renewed = _prune(leases, now) | dict.fromkeys(mine, now + ttl_ns)
                return await self._write(key, renewed, revision), None

            try:
                await self._cas_loop(f"renewing leases of key {key_id!r}", attempt)
            except LimiterUnavailable as e:
                log.warning("%s", e)

    async def _renew_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self.lease_ttl_s / 3)
            await self.renew()

    async def close(self) -> None:
        heartbeat, self._heartbeat = self._heartbeat, None
        await cancel_and_wait(heartbeat)
