"""Issue 3 end to end: keys, tiers, limits and usage on the real gateway, NATS and a tiny-model worker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest

from ember.config import load_settings
from ember.limits.nats_kv import NatsRateLimiter
from ember.limits.tiers import Tier
from ember.usage import stream as usage_stream
from tests.conftest import TINY
from tests.helpers.cluster import GatewayThread
from tests.helpers.metrics import scrape, total

ADMIN = "admin-" + "x" * 24
TIGHT = Tier(
    requests_per_minute=3,
    burst_fraction=0.0,
    concurrent_requests=1,
    max_tokens_per_request=8,
    prompt_tokens_per_minute=100_000,
    completion_tokens_per_minute=100_000,
    priority=5,
)

# 20 completion tokens a minute (22 with the burst): two 8-token requests fit, a third does not.
TOKENS = Tier(
    requests_per_minute=1000,
    completion_tokens_per_minute=20,
    prompt_tokens_per_minute=100_000,
    concurrent_requests=10,
    max_tokens_per_request=None,
)
# One request at a time.
SOLO = Tier(
    requests_per_minute=1000,
    concurrent_requests=1,
    prompt_tokens_per_minute=1_000_000,
    completion_tokens_per_minute=1_000_000,
    max_tokens_per_request=None,
)


@pytest.fixture(scope="module")
def secured(cluster_config: Path, nats_url: str, tiny_worker: str) -> Iterator[str]:
    """A second gateway on the same NATS and worker, with keys required and a tight tier."""
    base = load_settings(cluster_config)
    settings = base.model_copy(
        update={
            "auth": base.auth.model_copy(update={"enabled": True, "admin_key": ADMIN}),
            "tiers": {**base.tiers, "tight": TIGHT, "tokens": TOKENS, "solo": SOLO},
        }
    )
    gw = GatewayThread(settings, nats_url).start()
    yield gw.url
    gw.stop()


def admin(url: str, method: str, path: str, **kw: object) -> httpx.Response:
    return httpx.request(method, f"{url}/v1/admin{path}", headers={"authorization": f"Bearer {ADMIN}"}, **kw)  # type: ignore[arg-type]


def new_key(url: str, tier: str = "tight") -> dict:
    r = admin(url, "POST", "/keys", json={"tier": tier, "name": "e2e"})
    assert r.status_code == 201, r.text
    return r.json()


def chat(url: str, secret: str | None, **body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    payload = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=60)


def long_stream(url: str, secret: str) -> contextlib.AbstractContextManager[httpx.Response]:
    """A streamed chat that runs for 480 tokens: it holds a concurrency slot while the test looks."""
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 480,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"authorization": f"Bearer {secret}"}
    return httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_requests_without_a_valid_key_get_the_same_401(secured: str) -> None:
    revoked = new_key(secured)
    admin(secured, "DELETE", f"/keys/{revoked['id']}")
    bodies = set()
    for secret in (None, "not-a-key", "em_" + "A" * 43, revoked["secret"]):
        r = chat(secured, secret)
        assert r.status_code == 401, (secret, r.text)
        bodies.add(r.content)
    assert len(bodies) == 1
    assert httpx.get(f"{secured}/healthz").status_code == 200


def test_a_key_is_limited_by_its_tier(secured: str) -> None:
    key = new_key(secured)["secret"]
    ok = chat(secured, key)
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-ratelimit-limit-requests"] == "3"
    remaining = [int(ok.headers["x-ratelimit-remaining-requests"])]
    assert {"x-ratelimit-reset-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens"} <= set(ok.headers)

    too_long = chat(secured, key, max_tokens=100)
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "max_tokens_exceeds_tier"

    statuses = []
    for _ in range(4):
        r = chat(secured, key)
        statuses.append(r.status_code)
        if r.status_code == 200:
            remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
        else:
            limited = r
    assert statuses.count(429) >= 1 and remaining == sorted(remaining, reverse=True)
    error = limited.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "requests per min" in error["message"]
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"


def test_another_key_of_the_same_tier_is_not_affected(secured: str) -> None:
    greedy, other = new_key(secured)["secret"], new_key(secured)["secret"]
    while chat(secured, greedy).status_code == 200:
        pass
    assert chat(secured, other).status_code == 200


def test_revocation_is_seen_at_once_and_tier_changes_apply(secured: str) -> None:
    key = new_key(secured)
    assert chat(secured, key["secret"]).status_code == 200
    assert admin(secured, "PATCH", f"/keys/{key['id']}", json={"tier": "pro"}).json()["tier"] == "pro"
    deadline = time.monotonic() + 5
    while chat(secured, key["secret"]).headers.get("x-ratelimit-limit-requests") != "600":
        assert time.monotonic() < deadline, "the new tier did not apply"
    admin(secured, "DELETE", f"/keys/{key['id']}")
    deadline = time.monotonic() + 5
    while chat(secured, key["secret"]).status_code != 401:
        assert time.monotonic() < deadline, "the revoked key still works"


def test_the_tier_sets_the_jobs_priority_and_the_prompt_tokens_are_charged(secured: str) -> None:
    key = new_key(secured, tier="pro")["secret"]
    r = chat(secured, key, max_tokens=5, temperature=0, ignore_eos=True)
    assert r.status_code == 200
    # The token headers count the prompt the worker really tokenized, plus the reserved max_tokens.
    assert int(r.headers["x-ratelimit-remaining-tokens"]) < 400_000


def test_every_request_leaves_one_usage_record(secured: str, nats_url: str) -> None:
    created = new_key(secured)
    secret = created["secret"]
    responses = [chat(secured, secret) for _ in range(5)]
    assert [r.status_code for r in responses].count(429) == 2
    served = [r.json()["usage"] for r in responses if r.status_code == 200]
    assert len(served) == 3

    async def totals() -> list:
        nc = await nats.connect(nats_url)
        try:
            return await usage_stream.summarize(nc.jetstream(), key_id=created["id"])
        finally:
            await nc.close()

    [summary] = asyncio.run(totals())
    assert summary.model == TINY and summary.requests == 5 and summary.errors == 2
    assert summary.prompt_tokens == sum(u["prompt_tokens"] for u in served)
    assert summary.completion_tokens == sum(u["completion_tokens"] for u in served)


def test_usage_summaries_over_http_and_the_cli(secured: str, nats_url: str) -> None:
    import json
    import subprocess
    import sys

    created = new_key(secured, tier="pro")
    for _ in range(2):
        assert chat(secured, created["secret"]).status_code == 200
    r = httpx.get(
        f"{secured}/v1/usage",
        params={"key_id": created["id"], "since": "1h"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 200, r.text
    [row] = r.json()["data"]
    assert row["key_id"] == created["id"] and row["requests"] == 2
    assert httpx.get(f"{secured}/v1/usage").status_code == 401
    bad = httpx.get(f"{secured}/v1/usage", params={"since": "soon"}, headers={"authorization": f"Bearer {ADMIN}"})
    assert bad.status_code == 400

    out = subprocess.run(
        [sys.executable, "-m", "ember.cli", "usage", "--nats", nats_url, "--key", created["id"], "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["requests"] == 2


def test_a_503_from_the_platform_costs_no_quota(secured: str) -> None:
    key = new_key(secured)["secret"]  # 3 requests per minute, no burst
    for _ in range(5):
        r = chat(secured, key, model="tiny-unserved")  # configured, but no worker serves it
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_worker"
    assert [chat(secured, key).status_code for _ in range(3)] == [200, 200, 200]


def test_token_limits_count_max_tokens_and_refund_what_was_not_used(secured: str) -> None:
    key = new_key(secured, tier="tokens")["secret"]
    # Each reserves 8 completion tokens but stops after 2: 6 come back, so many fit in the 22.
    for _ in range(5):
        r = chat(secured, key, max_tokens=8, stop=None, ignore_eos=False, temperature=0, seed=1)
        assert r.status_code == 200, r.text
        if r.json()["usage"]["completion_tokens"] == 8:
            break
    spender = new_key(secured, tier="tokens")["secret"]
    codes = [chat(secured, spender, max_tokens=8, ignore_eos=True).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    denied = chat(secured, spender, max_tokens=8, ignore_eos=True)
    assert denied.status_code == 429 and denied.json()["error"]["type"] == "tokens"
    assert int(denied.headers["retry-after"]) >= 1
    # A request that could never fit (more than the whole bucket) says so, with no Retry-After.
    never = chat(secured, spender, max_tokens=100, ignore_eos=True)
    assert never.status_code == 429 and "never fit" in never.json()["error"]["message"]


def test_concurrent_requests_beyond_the_tier_get_429(secured: str) -> None:
    key = new_key(secured, tier="solo")["secret"]
    with long_stream(secured, key) as first:
        assert first.status_code == 200
        # Ember's extension of the x-ratelimit-* family: the tier's concurrency and what is left of it.
        assert first.headers["x-ratelimit-limit-concurrency"] == "1"
        assert first.headers["x-ratelimit-remaining-concurrency"] == "0"
        lines = first.iter_lines()  # NOTE: keep it referenced; a collected iterator makes httpx hang up
        next(lines)  # the first request is running
        second = chat(secured, key)
        assert second.status_code == 429 and "concurrent" in second.json()["error"]["message"]
        assert second.headers["retry-after"] == "1"
        assert sum(1 for _ in lines) > 400  # the first one ran to the end, undisturbed
    deadline = time.monotonic() + 10
    while (r := chat(secured, key)).status_code != 200:  # the slot is freed when the first one ends
        assert time.monotonic() < deadline, r.text


@contextlib.asynccontextmanager
async def slots_held(nats_url: str, key_id: str, tier: Tier) -> AsyncIterator[None]:
    """Every slot of the key taken in the store all gateways share, as requests running elsewhere hold them."""
    nc = await nats.connect(nats_url)
    limiter = await NatsRateLimiter.open(nc)
    leases = [await limiter.acquire_slot(key_id, tier) for _ in range(tier.concurrent_requests or 0)]
    try:
        assert None not in leases
        yield
    finally:
        for lease in leases:
            if lease is not None:
                await limiter.release(lease)
        await limiter.close()
        await nc.close()


async def test_the_concurrency_429_carries_the_whole_rate_limit_family(secured: str, nats_url: str) -> None:
    """Every 429 alike: the requests and tokens headers a per-minute refusal has, plus the concurrency pair."""
    key = new_key(secured)  # "tight": 3 requests a minute, one at a time
    ok = chat(secured, key["secret"])
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-ratelimit-remaining-concurrency"] == "0"  # its own slot was the only one
    async with slots_held(nats_url, key["id"], TIGHT):
        refused = chat(secured, key["secret"])
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-ratelimit-limit-concurrency"] == "1"
    assert refused.headers["x-ratelimit-remaining-concurrency"] == "0"
    family = {
        f"x-ratelimit-{part}-{what}" for what in ("requests", "tokens") for part in ("limit", "remaining", "reset")
    }
    assert family <= set(refused.headers), sorted(refused.headers)
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    # The key's standing as it is: the refusal charged nothing.
    assert refused.headers["x-ratelimit-remaining-requests"] == ok.headers["x-ratelimit-remaining-requests"]
    assert chat(secured, key["secret"]).status_code == 200  # its slot free again, the key is served


def test_a_client_that_hangs_up_gives_its_slot_back_at_once(secured: str) -> None:
    key = new_key(secured, tier="solo")["secret"]
    with long_stream(secured, key) as first:
        lines = first.iter_lines()
        next(lines)
    # Hung up mid-stream. The slot comes back when the gateway notices, not when its 30 s lease lapses.
    started = time.monotonic()
    while (r := chat(secured, key)).status_code != 200:
        assert time.monotonic() - started < 5, r.text


def test_limit_decisions_and_refusals_are_counted_in_metrics(secured: str) -> None:
    before = scrape(secured, scope="gateway")
    key = new_key(secured)["secret"]
    while chat(secured, key).status_code == 200:
        pass
    after = scrape(secured, scope="gateway")

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("ember_limit_decisions_total", tier="tight", dimension="requests", outcome="admitted") >= 3
    assert moved("ember_limit_decisions_total", tier="tight", dimension="requests", outcome="refused") >= 1
    assert moved("ember_limit_decisions_total", tier="tight", dimension="completion_tokens", outcome="admitted") >= 3
    assert moved("ember_http_errors_total", status="429", code="rate_limit_exceeded") >= 1
    assert moved("ember_http_requests_total", route="/v1/chat/completions", status="429", tier="tight") >= 1
