"""The usage stream: every finished request's UsageRecord, on ``ember.v1.usage.<key id>``, kept in JetStream.

A record is published with its request id as ``Nats-Msg-Id``, so JetStream drops a redelivered copy within its
duplicate window; summaries also count each request id once, so a copy that arrives later is not counted twice.
That is also what makes a retry safe: a record that cannot be written now (NATS restarting) waits in a backlog
and is retried in the background until the stream takes it, without delaying the response it describes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from ember.bus import subjects
from ember.bus.messages import UsageRecord, WireVersionError, decode_usage, encode
from ember.config import ConfigError

log = logging.getLogger("ember.usage")

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
    """Append one record; a second publish of the same request id within the window is dropped by JetStream.

    If the stream cannot take it now, the record is kept and retried in the background (``Backlog``).
    """
    try:
        await _publish(js, rec)
    except (nats.errors.Error, TimeoutError) as e:
        log.info("usage record %s kept for a retry: %s", rec.request_id, e)
        _backlog(js).add(rec)


async def _publish(js: JetStreamContext, rec: UsageRecord) -> None:
    await js.publish(usage_subject(rec.key_id), encode(rec), headers={"Nats-Msg-Id": rec.request_id}, timeout=2.0)


@dataclass
class Backlog:
    """Records waiting for the usage stream, oldest first, retried with a growing pause until written."""

    js: JetStreamContext
    # An outage long enough to fill this loses the oldest records (and says so), rather than all memory.
    max_records: int = 100_000
    pending: deque[UsageRecord] = field(default_factory=deque)
    _task: asyncio.Task[None] | None = None

    def add(self, rec: UsageRecord) -> None:
        if len(self.pending) >= self.max_records:
            dropped = self.pending.popleft()
            log.error("usage backlog full: record %s dropped", dropped.request_id)
        self.pending.append(rec)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        pause = 0.2
        while self.pending:
            try:
                await _publish(self.js, self.pending[0])
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            self.pending.popleft()
            pause = 0.2
        log.info("usage backlog written")

    async def flush(self, within_s: float) -> bool:
        """Wait (up to ``within_s``) until every kept record is written; True if none is left."""
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task], timeout=within_s)
        return not self.pending


_BACKLOGS: dict[int, Backlog] = {}


def _backlog(js: JetStreamContext) -> Backlog:
    found = _BACKLOGS.get(id(js))
    if found is None or found.js is not js:
        found = _BACKLOGS[id(js)] = Backlog(js)
    return found


async def flush_backlog(js: JetStreamContext, within_s: float = 5.0) -> bool:
    """At shutdown: give kept records a last chance to be written; True if none is left."""
    found = _BACKLOGS.get(id(js))
    return found is None or found.js is not js or await found.flush(within_s)


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
    characters: int = 0
    duration_ms: float = 0.0
    # Lines of batches among the requests, and the tokens as billed: each request's at its price factor
    # (a batch line's batch.price_factor, 1 online).
    batch_requests: int = 0
    billed_tokens: float = 0.0
    first: dt.datetime | None = None
    last: dt.datetime | None = None

    def add(self, at: dt.datetime, rec: UsageRecord) -> None:
        self.requests += 1
        self.batch_requests += rec.batch_id is not None
        self.billed_tokens += (rec.prompt_tokens + rec.completion_tokens) * rec.price_factor
        self.errors += rec.status != "ok"
        self.prompt_tokens += rec.prompt_tokens
        self.completion_tokens += rec.completion_tokens
        self.images += rec.images
        self.audio_seconds += rec.audio_seconds
        self.characters += rec.characters
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
            "characters": self.characters,
            "batch_requests": self.batch_requests,
            "billed_tokens": round(self.billed_tokens, 3),
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
