"""The rate-limit store every gateway shares, and what it answers.

A gateway handles one request in this order::

    lease = await limiter.acquire_slot(key_id, tier)          # None: too many running -> 429
    try:
        decision = await limiter.admit(key_id, tier, reserved)  # denied -> 429 with rate_limit_headers(decision)
        ... run the request; add rate_limit_headers(decision) to the response ...
        await limiter.reconcile(key_id, tier, reserved, actual)  # the usage the worker reported
    finally:
        await limiter.release(lease)

``admit`` checks every limit of the tier together, as one atomic step: a request that fails any limit is
charged nothing, and one that passes is charged on all of them. The reservation counts ``max_tokens`` as the
completion (the most the request may produce); ``reconcile`` then refunds what it did not use, or charges
what it used beyond the reservation (a prompt estimate that was low), whatever the limit: the work is done.

A lease is one running request's concurrency slot. Its holder renews it in the background; if the gateway
dies, the lease lapses within ``lease_ttl_s`` on its own, so a crash never leaks a slot.

Quotas are a key's business and answer 429; workers that are overloaded answer 503, never 429.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from ember.limits.gcra import NS_PER_S, Rate
from ember.limits.tiers import Tier


class LimiterUnavailable(Exception):
    """The shared limit store cannot be reached or stays contended; the gateway decides fail-open or closed."""


class Dimension(enum.StrEnum):
    """What a limit counts. The value names the ``Cost`` field and the key in stored state."""

    REQUESTS = "requests"
    PROMPT_TOKENS = "prompt_tokens"
    COMPLETION_TOKENS = "completion_tokens"
    IMAGES = "images"
    AUDIO_SECONDS = "audio_seconds"
    # Characters of text turned into speech (OpenAI bills its TTS models per character too).
    SPEECH_CHARACTERS = "speech_characters"


MINUTE_NS = 60 * NS_PER_S
HOUR_NS = 3600 * NS_PER_S


def tier_rates(tier: Tier) -> dict[Dimension, Rate]:
    """The tier's limits as GCRA rates; an unlimited (None) dimension is left out."""
    table = {
        Dimension.REQUESTS: (tier.requests_per_minute, MINUTE_NS),
        Dimension.PROMPT_TOKENS: (tier.prompt_tokens_per_minute, MINUTE_NS),
        Dimension.COMPLETION_TOKENS: (tier.completion_tokens_per_minute, MINUTE_NS),
        Dimension.IMAGES: (tier.images_per_minute, MINUTE_NS),
        Dimension.AUDIO_SECONDS: (tier.audio_seconds_per_hour, HOUR_NS),
        Dimension.SPEECH_CHARACTERS: (tier.speech_characters_per_minute, MINUTE_NS),
    }
    return {
        dim: Rate(limit, period, tier.burst_fraction) for dim, (limit, period) in table.items() if limit is not None
    }


@dataclass(frozen=True)
class Cost:
    """What one request uses of each dimension; at admission, completion_tokens is the request's max_tokens."""

    requests: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    # Whole seconds of audio, rounded up.
    audio_seconds: int = 0
    speech_characters: int = 0

    def __post_init__(self) -> None:
        for dim in Dimension:
            if self.of(dim) < 0:
                raise ValueError(f"{dim}={self.of(dim)} must not be negative")

    def of(self, dim: Dimension) -> int:
        value: int = getattr(self, dim.value)
        return value


@dataclass(frozen=True)
class DimensionState:
    """One limit as the response headers show it, after the decision."""

    # Cells per period (the tier's number) and the period it counts over.
    limit: int
    period_s: float
    # 1-cell requests still admissible now; an idle key may hold up to limit * (1 + burst_fraction).
    remaining: int
    # Until the bucket is full again.
    reset_after_s: float
    # What this request asked of the dimension.
    requested: int


@dataclass(frozen=True)
class Decision:
    """The answer to ``admit``: allowed or not, why, and every checked limit's state for the headers."""

    allowed: bool
    # The dimension that denied the request (the one with the longest wait); None when allowed.
    limiting: Dimension | None = None
    # Denied: seconds until this same request would fit; None when it never can (it is bigger than the bucket).
    retry_after_s: float | None = None
    # Every limited dimension of the tier (unlimited ones are absent).
    dimensions: Mapping[Dimension, DimensionState] = field(default_factory=dict)


@dataclass(frozen=True)
class Lease:
    """One concurrency slot, held by one running request until ``release``."""

    key_id: str
    lease_id: str
    # False for a tier without a concurrency limit: nothing is stored and release does nothing.
    tracked: bool = True
    # The tier's concurrent_requests and the slots still free once this one was taken (for the headers);
    # None for an untracked lease.
    limit: int | None = None
    remaining: int | None = None


class RateLimiter(abc.ABC):
    """A store of per-key limits shared by every gateway; see the module docstring for the call cycle."""

    @abc.abstractmethod
    async def admit(self, key_id: str, tier: Tier, cost: Cost) -> Decision:
        """Check and charge every limit of ``tier`` for ``cost`` at once, or nothing if any limit fails.

        Raises:
            LimiterUnavailable: the store could not be reached or updated.
        """

    @abc.abstractmethod
    async def reconcile(self, key_id: str, tier: Tier, reserved: Cost, actual: Cost) -> None:
        """Settle a finished request: refund ``reserved - actual``, or charge the excess. Never raises."""

    @abc.abstractmethod
    async def acquire_slot(self, key_id: str, tier: Tier) -> Lease | None:
        """Take one of the key's concurrent-request slots; None if all are held.

        Raises:
            LimiterUnavailable: the store could not be reached or updated.
        """

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give a slot back. Never raises: a lease that cannot be released lapses by itself."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop background work (lease renewal). Leases still held lapse after their TTL."""
