"""The usage stream: every finished request's UsageRecord, on ``ember.v1.usage.<key id>``, kept in JetStream.

A record is published with its request id as ``Nats-Msg-Id``, so JetStream drops a redelivered copy within its
duplicate window; summaries also count each request id once, so a copy that arrives later is not counted twice.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from ember.bus import subjects
from ember.bus.messages import UsageRecord, WireVersionError, decode_usage, encode
from ember.config import ConfigError

STREAM = "EMBER_USAGE"
SUBJECTS = f"{subjects.PREFIX}.usage.>"


def usage_subject(key_id: str) -> str:
    return f"{subjects.PREFIX}.usage.{subjects.token(key_id)}"


async def ensure_stream(js: JetStreamContext, max_age_days: float = 90.0) -> None:
    """Create the usage stream if it is missing (file storage: usage outlives restarts)."""
    config = StreamConfig(
        name=STREAM,
        subjects=[SUBJECTS],
        storage=StorageType.FILE,
        max_age=max_age_days * 86_400,
        duplicate_window=600.0,
    )
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(config)


async def record(js: JetStreamContext, rec: UsageRecord) -> None:
    """Append one record; a second publish of the same request id within the window is dropped by JetStream."""
    await js.publish(usage_subject(rec.key_id), encode(rec), headers={"Nats-Msg-Id": rec.request_id})


async def read(
    js: JetStreamContext, *, key_id: str | None = None, since: dt.datetime | None = None
) -> AsyncIterator[tuple[dt.datetime, UsageRecord]]:
    """Every stored record (for one key, from a time on), with the server's timestamp, oldest first."""
    subject = usage_subject(key_id) if key_id else SUBJECTS
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME if since else DeliverPolicy.ALL,
        opt_start_time=since.astimezone(dt.UTC) if since else None,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await js.pull_subscribe(subject, stream=STREAM, config=config)
    try:
        pending = (await sub.consumer_info()).num_pending or 0
        while pending > 0:
            for msg in await sub.fetch(batch=min(pending, 512), timeout=5):
                pending = msg.metadata.num_pending
                try:
                    rec = decode_usage(msg.data)
                except (ValueError, WireVersionError):
                    continue  # a record from another Ember version: not ours to count
                yield msg.metadata.timestamp, rec
    finally:
        await sub.unsubscribe()


@dataclass
class Summary:
    """Totals for one (key, model)."""

    key_id: str
    model: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    audio_seconds: float = 0.0
    duration_ms: float = 0.0
    first: dt.datetime | None = None
    last: dt.datetime | None = None

    def add(self, at: dt.datetime, rec: UsageRecord) -> None:
        self.requests += 1
        self.errors += rec.status != "ok"
        self.prompt_tokens += rec.prompt_tokens
        self.completion_tokens += rec.completion_tokens
        self.images += rec.images
        self.audio_seconds += rec.audio_seconds
        self.duration_ms += rec.duration_ms
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)

    def as_dict(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "model": self.model,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "images": self.images,
            "audio_seconds": round(self.audio_seconds, 3),
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
        }


async def summarize(
    js: JetStreamContext, *, key_id: str | None = None, since: dt.datetime | None = None
) -> list[Summary]:
    """Totals per (key, model), each request id counted once however often its record was delivered."""
    totals: dict[tuple[str, str], Summary] = {}
    seen: set[str] = set()
    async for at, rec in read(js, key_id=key_id, since=since):
        if rec.request_id in seen:
            continue
        seen.add(rec.request_id)
        totals.setdefault((rec.key_id, rec.model), Summary(rec.key_id, rec.model)).add(at, rec)
    return sorted(totals.values(), key=lambda s: (s.key_id, s.model))


_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """'90m', '24h', '7d' ago, or an ISO date/time (UTC unless it says otherwise)."""
    if not text:
        return None
    now = now or dt.datetime.now(dt.UTC)
    if m := _AGO.match(text.strip()):
        return now - dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is neither a duration like 24h nor an ISO date") from None
    return at if at.tzinfo else at.replace(tzinfo=dt.UTC)
