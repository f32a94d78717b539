"""Listing a JetStream KV bucket: which keys it has, and the newest entry of each, never short.

nats-py's ``KeyValue.keys()`` (and ``history()``, and the ``None`` that ``watch()`` yields at the end of the
initial values) cannot be trusted for this. The watcher subscribes an ordered push consumer, which the server
starts feeding at once, and only then asks ``consumer_info()``; it takes the initial values for done when that
says ``num_pending == 0`` and the subscription has ``delivered`` none (``if cinfo.num_pending == 0 and
received == 0`` in ``KeyValue.watch``). While the entries are on their way (sent by the server, not yet read by
the client) both hold, so the end marker comes before any entry: ``keys()`` returns a short list or raises
NoKeysError with keys in the bucket.

Here the keys come from the stream's own index instead: a bucket is the stream ``KV_<bucket>`` with one subject
``$KV.<bucket>.<key>`` per key, and ``STREAM.INFO`` with a subjects filter answers every matching subject from
one snapshot, so a key written before the call began is always in the answer. Each key is then read with
``get``, which skips the ones whose newest entry is a delete or purge marker.
"""

from __future__ import annotations

import asyncio
import json

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

MISSING = (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, nats.js.errors.InvalidKeyError)

# Keys read at once (one KV request each) by ``latest_entries``.
READ_AT_ONCE = 64
# Subjects each further page of a long listing repeats from the page before (see ``_subjects``).
PAGE_OVERLAP = 1000
# Pages asked again after subjects went away under a long listing, before giving up on it.
PAGE_RETRIES = 10


async def key_names(kv: KeyValue, pattern: str = ">") -> list[str]:
    """Every key matching ``pattern`` that has an entry, a delete or purge marker included."""
    # NOTE: nats-py keeps a bucket's JetStream context, stream and subject prefix private (no accessor).
    js: JetStreamContext = kv._js
    prefix: str = kv._pre
    return [s[len(prefix) :] for s in await _subjects(js, kv._stream, f"{prefix}{pattern}")]


async def latest_entries(kv: KeyValue, pattern: str = ">") -> list[KeyValue.Entry]:
    """The newest entry of every live key matching ``pattern`` (deleted and purged keys left out)."""
    return await read_entries(kv, await key_names(kv, pattern))


async def read_entries(kv: KeyValue, keys: list[str]) -> list[KeyValue.Entry]:
    """The newest entry of each of ``keys`` that has a live one, ``READ_AT_ONCE`` requests at a time."""
    found: list[KeyValue.Entry] = []
    for start in range(0, len(keys), READ_AT_ONCE):
        entries = await asyncio.gather(*(_get(kv, k) for k in keys[start : start + READ_AT_ONCE]))
        found.extend(e for e in entries if e is not None)
    return found


async def _get(kv: KeyValue, key: str) -> KeyValue.Entry | None:
    try:
        return await kv.get(key)
    except MISSING:  # deleted, or expired since the listing
        return None


async def _subjects(js: JetStreamContext, stream: str, subjects_filter: str) -> set[str]:
    """Every subject of ``stream`` that matches ``subjects_filter`` and holds a message.

    The server answers at most ``limit`` (100,000) subjects an info; past that it pages through them sorted,
    by ``offset``. Subjects that go away between two pages (expired, purged) would shift the next page past
    some that stayed, so each page starts ``PAGE_OVERLAP`` back and must reach the last subject seen, else it
    is asked again a page further back.
    """
    found: set[str] = set()
    offset = 0
    last: str | None = None  # the greatest subject of the page before
    retries = 0
    while True:
        request = json.dumps({"subjects_filter": subjects_filter, "offset": offset}).encode()
        # NOTE: nats-py's stream_info takes no offset and drops the answer's total; this is its request.
        answer = await js._api_request(f"{js._prefix}.STREAM.INFO.{stream}", request, timeout=js._timeout)
        page = sorted((answer.get("state") or {}).get("subjects") or {})
        total: int = answer.get("total", 0)
        if last is not None and offset > 0 and (not page or page[0] > last):
            retries += 1
            if retries > PAGE_RETRIES:
                raise RuntimeError(f"the subjects of {stream} kept going away while listing {subjects_filter!r}")
            offset = max(0, offset - answer.get("limit", len(found)))
            continue
        found.update(page)
        if offset + len(page) >= total:
            return found
        last = page[-1]
        offset += max(1, len(page) - PAGE_OVERLAP)
