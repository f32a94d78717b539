"""OpenAI's rate-limit headers and 429 error, built from a ``Decision``.

Every response of a rate-limited key carries, as OpenAI's do::

    x-ratelimit-limit-requests: 60          the tier's requests per minute
    x-ratelimit-remaining-requests: 59      requests that would still be admitted now
    x-ratelimit-reset-requests: 1s          until the bucket is full again (Go's duration format)

and the same three for ``-tokens``. Ember limits prompt and completion tokens apart, so ``-tokens`` shows the
one of the two nearer to running out; ``-prompt-tokens``, ``-completion-tokens``, ``-images``,
``-audio-seconds`` and ``-speech-characters`` show each dimension a request used, by name. ``remaining`` may
exceed ``limit`` for an idle key: its bucket holds ``limit * (1 + burst_fraction)``.

Ember's extension, for a tier with ``concurrent_requests``::

    x-ratelimit-limit-concurrency: 4        requests the key may run at once
    x-ratelimit-remaining-concurrency: 3    of them still free (this request's slot taken)

A slot has no reset time (it is free when a request ends), so the pair has no ``-reset-``. Every 429 carries
the whole family, whichever limit refused it.
"""

from __future__ import annotations

import math

from ember.gateway.errors import GatewayError
from ember.limits.interface import Decision, Dimension, DimensionState

_TOKENS = (Dimension.PROMPT_TOKENS, Dimension.COMPLETION_TOKENS)
_LABELS = {
    Dimension.REQUESTS: "requests",
    Dimension.PROMPT_TOKENS: "prompt tokens",
    Dimension.COMPLETION_TOKENS: "completion tokens",
    Dimension.IMAGES: "images",
    Dimension.AUDIO_SECONDS: "audio seconds",
    Dimension.SPEECH_CHARACTERS: "speech characters",
}
# OpenAI's error.type for a rate limit names what ran out.
_ERROR_TYPES = {
    Dimension.REQUESTS: "requests",
    Dimension.PROMPT_TOKENS: "tokens",
    Dimension.COMPLETION_TOKENS: "tokens",
    Dimension.IMAGES: "images",
    Dimension.AUDIO_SECONDS: "audio_seconds",
    Dimension.SPEECH_CHARACTERS: "speech_characters",
}


def format_duration(seconds: float) -> str:
    """Go's time.Duration format, as OpenAI's reset headers use it, rounded up to the millisecond.

    ``0s``, ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h0m0s``.
    """
    ms = max(0, math.ceil(round(seconds * 1000, 6)))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _per(state: DimensionState) -> str:
    return {60.0: "per minute", 3600.0: "per hour"}.get(state.period_s, f"per {state.period_s:g}s")


def _triple(suffix: str, state: DimensionState) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{suffix}": str(state.limit),
        f"x-ratelimit-remaining-{suffix}": str(state.remaining),
        f"x-ratelimit-reset-{suffix}": format_duration(state.reset_after_s),
    }


def _fraction_left(state: DimensionState) -> float:
    return state.remaining / state.limit if state.limit else 0.0


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The x-ratelimit-* headers for a response, allowed or not; empty for a key with no limits."""
    dims = decision.dimensions
    headers: dict[str, str] = {}
    if Dimension.REQUESTS in dims:
        headers |= _triple("requests", dims[Dimension.REQUESTS])
    tokens = [dims[d] for d in _TOKENS if d in dims]
    if tokens:
        headers |= _triple("tokens", min(tokens, key=_fraction_left))
    for dim, state in dims.items():
        if dim is not Dimension.REQUESTS and (state.requested > 0 or dim is decision.limiting):
            headers |= _triple(dim.value.replace("_", "-"), state)
    return headers


def concurrency_headers(limit: int, remaining: int) -> dict[str, str]:
    """Ember's x-ratelimit-*-concurrency pair: the tier's concurrent requests, and how many are still free."""
    return {
        "x-ratelimit-limit-concurrency": str(limit),
        "x-ratelimit-remaining-concurrency": str(max(0, remaining)),
    }


def retry_after_header(seconds: float) -> str:
    """Retry-After in whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(round(seconds, 6))))


class RateLimitExceeded(GatewayError):
    """429: the key is over one of its tier's limits (not the workers' capacity, which is 503)."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, error_type: str = "requests", headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.type = error_type

    @classmethod
    def from_decision(cls, decision: Decision) -> RateLimitExceeded:
        """The 429 for a denied admission, naming the limit, with Retry-After and the x-ratelimit headers.

        A request bigger than the whole bucket (or any request under a limit of 0) can never pass: its 429 says
        so and has no Retry-After, since waiting would not help.
        """
        assert not decision.allowed and decision.limiting is not None, decision
        dim = decision.limiting
        state = decision.dimensions[dim]
        what = f"{_LABELS[dim]} {_per(state)}" + (" (RPM)" if dim is Dimension.REQUESTS else "")
        headers = rate_limit_headers(decision)
        if decision.retry_after_s is None:
            message = (
                f"Request too large for {what}: limit {state.limit}, requested {state.requested}. "
                f"The request can never fit this limit; reduce it (for tokens: the prompt or max_tokens)."
            )
        else:
            headers["Retry-After"] = retry_after_header(decision.retry_after_s)
            message = (
                f"Rate limit reached for {what}: limit {state.limit}, remaining {state.remaining}, "
                f"requested {state.requested}. Please try again in {format_duration(decision.retry_after_s)}."
            )
        return cls(message, error_type=_ERROR_TYPES[dim], headers=headers)

    @classmethod
    def too_many_concurrent(cls, limit: int, decision: Decision | None = None) -> RateLimitExceeded:
        """The 429 for a key already running its tier's ``concurrent_requests``.

        ``decision``: the key's other limits as they stand (a zero-cost admission), so that this 429 carries the
        same x-ratelimit-* headers as the others, plus the concurrency pair.
        """
        headers = rate_limit_headers(decision) if decision is not None else {}
        headers |= concurrency_headers(limit, 0)
        if limit == 0:
            message = "Rate limit reached for concurrent requests: this key's tier allows none."
        else:
            headers["Retry-After"] = "1"
            message = (
                f"Rate limit reached for concurrent requests: limit {limit} running at once. "
                f"Please try again when one of them finishes."
            )
        return cls(message, error_type="requests", headers=headers)
