"""NatsRateLimiter against a real nats-server: admissions, atomicity, reconciliation, Retry-After, leases, time."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from ember.bus.connection import connect
from ember.limits.headers import RateLimitExceeded, rate_limit_headers
from ember.limits.interface import Cost, Dimension
from ember.limits.nats_kv import NatsRateLimiter, ServerClock, kv_key, parse_server_time
from ember.limits.tiers import Tier

NO_LIMITS = {
    "requests_per_minute": None,
    "prompt_tokens_per_minute": None,
    "completion_tokens_per_minute": None,
    "concurrent_requests": None,
    "images_per_minute": None,
    "audio_seconds_per_hour": None,
    "speech_characters_per_minute": None,
}


def tier(**limits: object) -> Tier:
    """A tier with only the given limits (everything else unlimited)."""
    return Tier.model_validate({**NO_LIMITS, **limits})


def key() -> str:
    return f"key-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await connect(nats_url, name="limits-test")
    yield client
    await client.close()


@pytest.fixture
async def limiter(nc: NATS) -> AsyncIterator[NatsRateLimiter]:
    lim = await NatsRateLimiter.open(nc, bucket=f"limits_{uuid.uuid4().hex[:10]}", lease_ttl_s=1.5)
    yield lim
    await lim.close()


PEEK = Cost(requests=0)  # charges nothing: shows the buckets as they stand


async def test_an_idle_key_bursts_its_limit_plus_burst_then_gets_429(limiter: NatsRateLimiter) -> None:
    t, k = tier(requests_per_minute=60, burst_fraction=0.1), key()
    remaining = []
    for _ in range(66):
        d = await limiter.admit(k, t, Cost())
        assert d.allowed
        remaining.append(d.dimensions[Dimension.REQUESTS].remaining)
    assert remaining == list(range(65, -1, -1))
    ok_headers = rate_limit_headers(d)
    assert ok_headers["x-ratelimit-limit-requests"] == "60"
    assert ok_headers["x-ratelimit-remaining-requests"] == "0"
    assert ok_headers["x-ratelimit-reset-requests"].endswith("s")

    denied = await limiter.admit(k, t, Cost())
    assert not denied.allowed and denied.limiting is Dimension.REQUESTS
    assert denied.retry_after_s is not None and 0 < denied.retry_after_s <= 1.0
    error = RateLimitExceeded.from_decision(denied)
    assert error.status == 429
    assert error.body()["error"]["code"] == "rate_limit_exceeded"
    assert error.body()["error"]["type"] == "requests"
    assert error.message.startswith("Rate limit reached for requests per minute (RPM): limit 60, remaining 0")
    assert error.headers["Retry-After"] == "1"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"


async def test_a_request_denied_on_one_limit_is_charged_on_none(limiter: NatsRateLimiter) -> None:
    t = tier(requests_per_minute=10, prompt_tokens_per_minute=1_000, completion_tokens_per_minute=600)
    k = tier_key = key()
    assert (await limiter.admit(k, t, Cost(prompt_tokens=100, completion_tokens=500))).allowed
    before = (await limiter.admit(tier_key, t, PEEK)).dimensions

    denied = await limiter.admit(k, t, Cost(prompt_tokens=100, completion_tokens=500))
    assert not denied.allowed and denied.limiting is Dimension.COMPLETION_TOKENS
    error = RateLimitExceeded.from_decision(denied)
    assert error.type == "tokens" and "completion tokens per minute: limit 600" in error.message

    after = (await limiter.admit(k, t, PEEK)).dimensions
    for dim in (Dimension.REQUESTS, Dimension.PROMPT_TOKENS, Dimension.COMPLETION_TOKENS):
        # Only refill may have happened in between: a token per 60 or 100 ms, a request per 6 s.
        assert 0 <= after[dim].remaining - before[dim].remaining <= 10, dim
    assert after[Dimension.REQUESTS].remaining == before[Dimension.REQUESTS].remaining == 10


async def test_reconcile_refunds_unused_completion_tokens_and_charges_an_overrun(limiter: NatsRateLimiter) -> None:
    t, k = tier(prompt_tokens_per_minute=1_000, completion_tokens_per_minute=600, burst_fraction=0.0), key()
    reserved = Cost(prompt_tokens=100, completion_tokens=500)
    assert (await limiter.admit(k, t, reserved)).allowed
    assert not (await limiter.admit(k, t, reserved)).allowed
    # The first request produced 50 tokens, and its prompt turned out to be 300 tokens, not 100.
    await limiter.reconcile(k, t, reserved, Cost(prompt_tokens=300, completion_tokens=50))
    state = (await limiter.admit(k, t, PEEK)).dimensions
    # 600 - 50 and 1000 - 300, plus 10 and 16.7 tokens a second of refill (without the refund: about 100).
    assert 550 <= state[Dimension.COMPLETION_TOKENS].remaining <= 560
    assert 700 <= state[Dimension.PROMPT_TOKENS].remaining <= 715
    second = await limiter.admit(k, t, reserved)
    assert second.allowed
    headers = rate_limit_headers(second)
    # -tokens shows the token limit nearer to running out: completion (~50/600 left) rather than prompt (~600/1000).
    assert headers["x-ratelimit-limit-tokens"] == "600"
    assert headers["x-ratelimit-limit-prompt-tokens"] == "1000"
    assert headers["x-ratelimit-limit-completion-tokens"] == "600"


async def test_a_charge_past_the_limit_is_owed_before_the_next_admission(limiter: NatsRateLimiter) -> None:
    t, k = tier(prompt_tokens_per_minute=1_000, burst_fraction=0.0), key()
    reserved = Cost(prompt_tokens=500)
    assert (await limiter.admit(k, t, reserved)).allowed
    await limiter.reconcile(k, t, reserved, Cost(prompt_tokens=1_400))  # 400 tokens over the bucket
    denied = await limiter.admit(k, t, Cost(prompt_tokens=1))
    assert not denied.allowed and denied.dimensions[Dimension.PROMPT_TOKENS].remaining == 0
    # 400 tokens owed plus the 1 asked for, at 1,000 a minute (60 ms each), less a few ms of refill.
    assert denied.retry_after_s is not None and 24.0 < denied.retry_after_s <= 24.06


async def test_a_denied_request_retried_after_retry_after_is_admitted(limiter: NatsRateLimiter) -> None:
    t, k = tier(requests_per_minute=60, burst_fraction=0.0), key()
    for _ in range(60):
        assert (await limiter.admit(k, t, Cost())).allowed
    denied = await limiter.admit(k, t, Cost())
    assert not denied.allowed and denied.retry_after_s is not None and 0.5 < denied.retry_after_s <= 1.0
    assert RateLimitExceeded.from_decision(denied).headers["Retry-After"] == "1"
    await asyncio.sleep(denied.retry_after_s - 0.4)
    assert not (await limiter.admit(k, t, Cost())).allowed
    await asyncio.sleep(0.41)
    again = await limiter.admit(k, t, Cost())
    assert again.allowed and again.dimensions[Dimension.REQUESTS].remaining == 0


async def test_a_request_bigger_than_the_bucket_never_fits_and_gets_no_retry_after(
    limiter: NatsRateLimiter,
) -> None:
    t, k = tier(prompt_tokens_per_minute=1_000, burst_fraction=0.1), key()
    d = await limiter.admit(k, t, Cost(prompt_tokens=1_101))
    assert not d.allowed and d.retry_after_s is None and d.limiting is Dimension.PROMPT_TOKENS
    error = RateLimitExceeded.from_decision(d)
    assert "Retry-After" not in error.headers and error.status == 429
    assert error.message.startswith("Request too large for prompt tokens per minute: limit 1000, requested 1101")
    assert (await limiter.admit(k, t, Cost(prompt_tokens=1_100))).allowed


async def test_unlimited_and_zero_limits(limiter: NatsRateLimiter) -> None:
    free_for_all = await limiter.admit(key(), tier(), Cost(prompt_tokens=10**9))
    assert free_for_all.allowed and rate_limit_headers(free_for_all) == {}
    nothing = await limiter.admit(key(), tier(images_per_minute=0), Cost(images=1))
    assert not nothing.allowed and nothing.retry_after_s is None and nothing.limiting is Dimension.IMAGES
    # A request that uses no images passes a tier that allows none.
    assert (await limiter.admit(key(), tier(images_per_minute=0), Cost())).allowed


async def test_concurrent_admissions_from_many_connections_never_overshoot(
    nats_url: str, limiter: NatsRateLimiter
) -> None:
    t, k = tier(requests_per_minute=60, burst_fraction=0.1), key()
    clients = [await connect(nats_url, name=f"gw{i}") for i in range(3)]
    try:
        others = [await NatsRateLimiter.open(c, bucket=limiter._kv._name) for c in clients]
        started = time.monotonic()
        decisions = await asyncio.gather(*(others[i % 3].admit(k, t, Cost()) for i in range(150)))
        elapsed = time.monotonic() - started
    finally:
        for c in clients:
            await c.close()
    allowed = sum(d.allowed for d in decisions)
    assert 66 <= allowed <= 66 + int(elapsed), (allowed, elapsed)


async def test_odd_key_ids_are_stored_apart(limiter: NatsRateLimiter) -> None:
    t = tier(requests_per_minute=1, burst_fraction=0.0)
    odd = ["user@example.com", "a b", "ключ", "x", "a.b", "*>"]
    assert len({kv_key("rate", i) for i in odd}) == len(odd)
    for i in odd:
        assert (await limiter.admit(i, t, Cost())).allowed, i
        assert not (await limiter.admit(i, t, Cost())).allowed, i


async def test_slots_are_limited_and_come_back_on_release(limiter: NatsRateLimiter) -> None:
    t, k = tier(concurrent_requests=2), key()
    first, second = await limiter.acquire_slot(k, t), await limiter.acquire_slot(k, t)
    assert first is not None and second is not None and first.lease_id != second.lease_id
    assert await limiter.acquire_slot(k, t) is None
    # A slot outlives the lease TTL while its holder renews it.
    await asyncio.sleep(limiter.lease_ttl_s * 1.6)
    assert await limiter.acquire_slot(k, t) is None
    await limiter.release(first)
    third = await limiter.acquire_slot(k, t)
    assert third is not None
    await limiter.release(third)
    await limiter.release(third)  # twice is harmless
    await limiter.release(second)
    assert await limiter.acquire_slot(k, t) is not None


async def test_no_concurrency_limit_and_a_limit_of_zero(limiter: NatsRateLimiter) -> None:
    lease = await limiter.acquire_slot(key(), tier())
    assert lease is not None and not lease.tracked
    await limiter.release(lease)
    assert await limiter.acquire_slot(key(), tier(concurrent_requests=0)) is None
    error = RateLimitExceeded.too_many_concurrent(0)
    assert error.status == 429 and "Retry-After" not in error.headers
    assert RateLimitExceeded.too_many_concurrent(4).headers["Retry-After"] == "1"


def test_server_times_parse_to_the_nanosecond() -> None:
    assert parse_server_time("1970-01-01T00:00:01.000000001Z") == 1_000_000_001
    assert parse_server_time("2025-01-02T03:04:05Z") == 1_735_787_045_000_000_000
    assert parse_server_time("2025-01-02T03:04:05.5Z") == 1_735_787_045_500_000_000


async def _server_stamp(nc: NATS, limiter: NatsRateLimiter) -> int:
    """The server's time, as stamped on a message it stores now (microseconds, as nats-py parses it)."""
    revision = await limiter._kv.put("probe", b"x")
    msg = await nc.jetstream().get_msg(f"KV_{limiter._kv._name}", seq=revision)
    assert msg.time is not None
    return int(msg.time.timestamp() * 1_000_000) * 1_000


async def test_the_clock_is_the_servers_even_when_the_local_wall_clock_is_off(
    nc: NATS, limiter: NatsRateLimiter, monkeypatch: pytest.MonkeyPatch
) -> None:
    hour = 3600 * 1_000_000_000
    real_time, real_time_ns = time.time, time.time_ns
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + hour)
    assert abs(datetime.datetime.now().timestamp() - real_time()) < 60  # (datetime reads the real clock)
    clock = ServerClock(nc, f"KV_{limiter._kv._name}")
    ours = await clock.now_ns()
    stamped = await _server_stamp(nc, limiter)
    # Ours is a lower bound of the server's time, off by at most a round trip (and the stamp's microseconds).
    assert -1_000 <= stamped - ours < 50_000_000
    later = await clock.now_ns()
    assert later >= ours
