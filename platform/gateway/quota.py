"""What one request may use, and what it leaves behind: its key's tier, limits, and usage record.

A generation route goes through a Quota in two steps, so that no model work is done for a key over its limits
and token limits count the prompt's real tokens, not a guess::

    quota = await Quota.open(request, model)      # tier, a concurrency slot, one request admitted    -> 429
    ... publish the jobs; the workers accept them and report the prompt's exact token count ...
    await quota.admit_tokens(prompt, reserved)     # prompt + max_tokens admitted (jobs cancelled)      -> 429
    ... stream or collect; quota.headers() go on the response ...
    await quota.close(usage, status)               # refund unused tokens, free the slot, write usage
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from starlette.requests import Request

from ember.auth.keys import ApiKey
from ember.bus.messages import Modality, UsageRecord
from ember.config import ConfigError
from ember.gateway import metrics
from ember.gateway.auth import current_key
from ember.gateway.errors import InvalidRequest, PermissionDenied, ServiceUnavailable
from ember.gateway.state import state
from ember.limits.headers import RateLimitExceeded, concurrency_headers, rate_limit_headers
from ember.limits.interface import Cost, Decision, Dimension, Lease, LimiterUnavailable, RateLimiter
from ember.limits.tiers import Tier
from ember.usage import stream as usage_stream

log = logging.getLogger("ember.gateway.quota")

# Tiers' priorities are 0 and up.
BATCH_PRIORITY = -1


@dataclass
class Quota:
    request_id: str
    key: ApiKey
    tier: Tier
    model: str
    limiter: RateLimiter | None
    usage: JetStreamContext | None
    modality: Modality = Modality.TEXT
    lease: Lease | None = None
    decision: Decision | None = None
    reserved: Cost = field(default_factory=lambda: Cost(requests=0))
    started: float = field(default_factory=time.perf_counter)
    closed: bool = False
    # The request's state: the metrics middleware reads the model, tier and tokens generated from it.
    request_state: Any = None
    # A line of a batch (``ember.batches.line_call``): lowest priority, no concurrency slot of the key's, and
    # the batch runner writes its usage record (one per line, whatever its tries).
    batch_line: bool = False

    @property
    def priority(self) -> int:
        """The priority of this request's jobs in the workers' queues: its tier's, or below every tier's for a
        batch line, which fills the capacity interactive requests leave."""
        return BATCH_PRIORITY if self.batch_line else self.tier.priority

    @classmethod
    async def open(cls, request: Request, model: str) -> Quota:
        """Check the key's tier, take a concurrency slot and admit one request; raises 429 / 503."""
        gw = state(request)
        settings = gw.settings
        key = current_key(request)
        try:
            tier = settings.tier(key.tier)
        except ConfigError:
            raise PermissionDenied(f"this key's tier {key.tier!r} is not configured on this server") from None
        quota = cls(
            request_id=request.state.request_id,
            key=key,
            tier=tier,
            model=model,
            limiter=gw.limiter,
            usage=gw.js,
            request_state=request.state,
            batch_line=getattr(request.state, "batch_line", None) is not None,
        )
        request.state.metrics_model = model
        request.state.metrics_tier = key.tier
        if quota.limiter is None:
            return quota
        try:
            # A batch's lines are bounded by the batch runner's share of the model, not the key's slots.
            quota.lease = None if quota.batch_line else await quota.limiter.acquire_slot(key.id, tier)
            if quota.lease is None and not quota.batch_line:
                # A zero-cost admission charges nothing: it reads the other limits, for this 429's headers.
                standing = await quota.limiter.admit(key.id, tier, Cost(requests=0))
                raise RateLimitExceeded.too_many_concurrent(tier.concurrent_requests or 0, standing)
            quota.decision = await quota.limiter.admit(key.id, tier, Cost(requests=1))
            quota._count(Cost(requests=1), quota.decision)
        except LimiterUnavailable as e:
            await quota.close(status="limiter_unavailable")
            raise ServiceUnavailable(f"rate limits cannot be checked right now: {e}", code="limiter_unavailable") from e
        except RateLimitExceeded:
            await quota.close(status="rate_limit_exceeded")
            raise
        if not quota.decision.allowed:
            await quota.close(status="rate_limit_exceeded")
            raise RateLimitExceeded.from_decision(quota.decision)
        return quota

    async def max_tokens(self, requested: int | None) -> int | None:
        """The request's max_tokens within its tier's cap (the cap when it asked for none); over it, a 400."""
        cap = self.tier.max_tokens_per_request
        if requested is not None and cap is not None and requested > cap:
            await self.close(status="max_tokens_exceeds_tier")
            raise InvalidRequest(
                f"max_tokens={requested} exceeds this key's tier limit of {cap} tokens per request",
                code="max_tokens_exceeds_tier",
                param="max_tokens",
            )
        return requested if requested is not None else cap

    async def admit_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Admit the prompt's tokens and the most the completion may use; raises 429 (or 503)."""
        await self.admit(Cost(requests=0, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))

    async def admit(self, cost: Cost) -> None:
        """Admit ``cost`` on top of the request and hold it until ``close`` settles it; raises 429 (or 503).

        What is admitted is an upper bound (max_tokens, n images, a second of audio); ``close`` charges what was
        really used and gives the rest back.
        """
        if self.limiter is None:
            return
        try:
            decision = await self.limiter.admit(self.key.id, self.tier, cost)
        except LimiterUnavailable as e:
            raise ServiceUnavailable(f"rate limits cannot be checked right now: {e}", code="limiter_unavailable") from e
        self.decision = decision
        self._count(cost, decision)
        if not decision.allowed:
            raise RateLimitExceeded.from_decision(decision)
        self.reserved = Cost(**{d.value: self.reserved.of(d) + cost.of(d) for d in Dimension})

    def _count(self, cost: Cost, decision: Decision) -> None:
        """The limiter's decision in ember_limit_decisions_total: each dimension asked of, admitted, or the one
        dimension that refused."""
        if not decision.allowed:
            dimension = decision.limiting.value if decision.limiting is not None else "unknown"
            metrics.LIMIT_DECISIONS.labels(self.key.tier, dimension, "refused").inc()
            return
        for dim in Dimension:
            if cost.of(dim) > 0:
                metrics.LIMIT_DECISIONS.labels(self.key.tier, dim.value, "admitted").inc()

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers of the latest admission (every response carries them)."""
        headers = rate_limit_headers(self.decision) if self.decision is not None else {}
        if self.lease is not None and self.lease.limit is not None and self.lease.remaining is not None:
            headers |= concurrency_headers(self.lease.limit, self.lease.remaining)
        return headers

    async def close(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        status: str = "ok",
        *,
        refund: bool = False,
        images: int = 0,
        audio_seconds: float = 0.0,
        characters: int = 0,
    ) -> None:
        """Settle what was admitted against what was used, free the slot and record the usage; safe to call twice.

        ``refund``: the platform, not the client, failed the request before any generation (no worker, workers
        overloaded): the request is given back to the key's limit, since a 503 must not cost quota.
        """
        if self.closed:
            return
        self.closed = True
        metrics.PROMPT_TOKENS.labels(self.model).inc(prompt_tokens)
        metrics.COMPLETION_TOKENS.labels(self.model).inc(completion_tokens)
        if self.request_state is not None:
            self.request_state.metrics_completion_tokens = completion_tokens
        if self.limiter is not None:
            actual = Cost(
                requests=0,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                images=images,
                audio_seconds=math.ceil(audio_seconds),
                speech_characters=characters,
            )
            if refund and self.decision is not None and self.decision.allowed:
                await self.limiter.reconcile(self.key.id, self.tier, Cost(requests=1), Cost(requests=0))
            if self.reserved != Cost(requests=0):
                await self.limiter.reconcile(self.key.id, self.tier, self.reserved, actual)
            if self.lease is not None:
                await self.limiter.release(self.lease)
        if self.usage is not None and not self.batch_line:
            record = UsageRecord(
                request_id=self.request_id,
                key_id=self.key.id,
                model=self.model,
                modality=self.modality,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                images=images,
                audio_seconds=audio_seconds,
                characters=characters,
                duration_ms=(time.perf_counter() - self.started) * 1000,
                status=status,
            )
            try:
                await usage_stream.record(self.usage, record)
            except Exception as e:  # usage must never fail the request it describes
                log.warning("usage record for %s not written: %s", self.request_id, e)
