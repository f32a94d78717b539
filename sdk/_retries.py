"""When a failed request is tried again, and how long to wait first.

Retried: connection errors and timeouts, and the statuses in ``RETRY_STATUSES``. Never retried: any other
4xx, because the same request would fail the same way. A ``Retry-After`` (or ``retry-after-ms``) header is
honoured up to ``MAX_RETRY_AFTER`` seconds; a longer one is not waited out, so the caller gets the error (with
``retry_after`` set) instead of a call that blocks for minutes. Without the header the wait doubles from
``INITIAL_RETRY_DELAY`` up to ``MAX_RETRY_DELAY``, less up to 25% of jitter so that clients that failed
together do not come back together.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

# 408 timeout, 409 conflict (a lock held by another request), 429 rate limited, 502/503/504 from a proxy or an
# overloaded gateway. A 500 is not retried: it is most likely a bug that the same request hits again.
RETRY_STATUSES = frozenset({408, 409, 429, 502, 503, 504})

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0

# Transport errors worth another try: the request may never have reached the server, or the connection dropped.
# Others (a malformed URL, an unsupported scheme) fail the same way every time.
RETRY_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def backoff(retries_taken: int) -> float:
    """The wait before retry number ``retries_taken + 1`` when the server named none."""
    delay = min(INITIAL_RETRY_DELAY * 2.0**retries_taken, MAX_RETRY_DELAY)
    return delay * (1 - 0.25 * random.random())


def retry_delay(response: httpx.Response, retries_taken: int) -> float | None:
    """How long to wait before trying ``response``'s request again, or None if it must not be retried."""
    if response.status_code not in RETRY_STATUSES:
        return None
    retry_after = parse_retry_after(response.headers)
    if retry_after is None:
        return backoff(retries_taken)
    if retry_after > MAX_RETRY_AFTER:
        return None
    return retry_after
