"""The tiers table: what a key of each tier may use. Operators override or add tiers in the config file::

[tiers.pro]
requests_per_minute = 3000
priority = 20
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Tier(BaseModel):
    """Limits for every key of one tier. A limit of 0 means "none allowed"; None means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests_per_minute: int | None = Field(default=60, ge=0)
    # Admitted on prompt tokens + max_tokens, reconciled with the real usage when the request ends.
    prompt_tokens_per_minute: int | None = Field(default=40_000, ge=0)
    completion_tokens_per_minute: int | None = Field(default=10_000, ge=0)
    concurrent_requests: int | None = Field(default=4, ge=0)
    images_per_minute: int | None = Field(default=5, ge=0)
    audio_seconds_per_hour: int | None = Field(default=3_600, ge=0)
    # Text spoken by /v1/audio/speech, charged in full at admission (the input is known up front). A minute of
    # speech is about 900 characters, so each tier's default lets a key keep many listeners busy at once.
    speech_characters_per_minute: int | None = Field(default=50_000, ge=0)
    # A request's max_tokens may not exceed this (None: the model's context).
    max_tokens_per_request: int | None = Field(default=4_096, ge=1)
    # How far a key may burst above its steady rate, as a fraction of the per-minute limit (GCRA's tolerance).
    burst_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    # Higher is served first when the workers are saturated.
    priority: int = Field(default=0, ge=0, le=100)


def default_tiers() -> dict[str, Tier]:
    return {
        "free": Tier(
            requests_per_minute=20,
            prompt_tokens_per_minute=10_000,
            completion_tokens_per_minute=2_000,
            concurrent_requests=2,
            images_per_minute=2,
            audio_seconds_per_hour=600,
            speech_characters_per_minute=10_000,
            max_tokens_per_request=1_024,
            priority=0,
        ),
        "developer": Tier(
            requests_per_minute=60,
            prompt_tokens_per_minute=40_000,
            completion_tokens_per_minute=10_000,
            concurrent_requests=4,
            images_per_minute=5,
            audio_seconds_per_hour=3_600,
            speech_characters_per_minute=50_000,
            max_tokens_per_request=4_096,
            priority=10,
        ),
        "pro": Tier(
            requests_per_minute=600,
            prompt_tokens_per_minute=400_000,
            completion_tokens_per_minute=100_000,
            concurrent_requests=32,
            images_per_minute=60,
            audio_seconds_per_hour=36_000,
            speech_characters_per_minute=500_000,
            max_tokens_per_request=8_192,
            priority=20,
        ),
        "enterprise": Tier(
            requests_per_minute=6_000,
            prompt_tokens_per_minute=4_000_000,
            completion_tokens_per_minute=1_000_000,
            concurrent_requests=256,
            images_per_minute=600,
            audio_seconds_per_hour=360_000,
            speech_characters_per_minute=5_000_000,
            max_tokens_per_request=None,
            priority=30,
        ),
    }
