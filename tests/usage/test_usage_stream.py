"""The usage stream on a real nats-server: records in, totals out, nothing counted twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from ember.bus.messages import Modality, UsageRecord
from ember.bus.nats_server import EmbeddedNats
from ember.usage import stream


@pytest.fixture
async def nc(tmp_path: Path) -> AsyncIterator[NATS]:
    # Its own server: the usage stream is one per NATS, and these tests count everything in it.
    with EmbeddedNats(data_dir=tmp_path / "nats") as server:
        client = await nats.connect(server.url)
        await stream.ensure_stream(client.jetstream())
        yield client
        await client.close()


def rec(key: str = "key_a", model: str = "m", **kw: object) -> UsageRecord:
    fields: dict = {"prompt_tokens": 10, "completion_tokens": 5, "duration_ms": 12.5, **kw}
    return UsageRecord(request_id=uuid.uuid4().hex, key_id=key, model=model, modality=Modality.TEXT, **fields)


async def test_totals_per_key_and_model(nc: NATS) -> None:
    js = nc.jetstream()
    for r in [rec(), rec(), rec(model="other"), rec(key="key_b", status="worker_lost", completion_tokens=0)]:
        await stream.record(js, r)
    totals = {(s.key_id, s.model): s for s in await stream.summarize(js)}
    assert set(totals) == {("key_a", "m"), ("key_a", "other"), ("key_b", "m")}
    a = totals[("key_a", "m")]
    assert (a.requests, a.prompt_tokens, a.completion_tokens, a.errors) == (2, 20, 10, 0)
    assert totals[("key_b", "m")].errors == 1
    only_b = await stream.summarize(js, key_id="key_b")
    assert [(s.key_id, s.requests) for s in only_b] == [("key_b", 1)]


async def test_batch_lines_are_billed_at_their_price_factor(nc: NATS) -> None:
    js = nc.jetstream()
    await stream.record(js, rec())  # online: 15 tokens at full price
    for _ in range(2):
        await stream.record(js, rec(batch_id="batch_1", price_factor=0.5))
    [summary] = await stream.summarize(js)
    assert (summary.requests, summary.batch_requests) == (3, 2)
    assert summary.prompt_tokens + summary.completion_tokens == 45 and summary.billed_tokens == 30.0
    assert summary.as_dict()["billed_tokens"] == 30.0


async def test_a_redelivered_record_is_counted_once(nc: NATS) -> None:
    js = nc.jetstream()
    r = rec()
    for _ in range(3):
        await stream.record(js, r)  # a gateway retrying a publish whose ack it lost
    # A copy that slips past the duplicate window (different msg id, same request) is still counted once.
    await js.publish(stream.usage_subject(r.key_id), r.model_dump_json().encode(), headers={"Nats-Msg-Id": "x"})
    [summary] = await stream.summarize(js)
    assert summary.requests == 1 and summary.prompt_tokens == 10


async def test_since_filters_by_the_servers_time(nc: NATS) -> None:
    js = nc.jetstream()
    await stream.record(js, rec())
    await asyncio.sleep(0.05)
    cut = dt.datetime.now(dt.UTC)
    await asyncio.sleep(0.05)
    await stream.record(js, rec(prompt_tokens=1))
    [summary] = await stream.summarize(js, since=cut)
    assert summary.requests == 1 and summary.prompt_tokens == 1
    assert summary.first is not None and summary.first >= cut


async def test_an_empty_stream_summarizes_to_nothing(nc: NATS) -> None:
    assert await stream.summarize(nc.jetstream()) == []
    assert await stream.summarize(nc.jetstream(), key_id="nobody") == []


async def test_usage_survives_a_nats_restart(tmp_path: Path) -> None:
    data = tmp_path / "nats"
    with EmbeddedNats(data_dir=data) as server:
        client = await nats.connect(server.url)
        await stream.ensure_stream(client.jetstream())
        await stream.record(client.jetstream(), rec())
        await client.close()
    with EmbeddedNats(data_dir=data) as server:
        client = await nats.connect(server.url)
        await stream.ensure_stream(client.jetstream())  # finds the existing stream
        [summary] = await stream.summarize(client.jetstream())
        await client.close()
    assert summary.requests == 1


def test_since_accepts_durations_and_dates() -> None:
    from ember.config import ConfigError
    from ember.usage.stream import parse_since

    now = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    assert parse_since("90m", now) == now - dt.timedelta(minutes=90)
    assert parse_since("7d", now) == now - dt.timedelta(days=7)
    assert parse_since("2026-11-01", now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert parse_since(None, now) is None
    with pytest.raises(ConfigError, match="neither a duration"):
        parse_since("yesterday", now)
