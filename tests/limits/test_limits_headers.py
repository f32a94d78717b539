"""OpenAI's x-ratelimit-* headers, Retry-After, and the 429 body, built from a Decision."""

from __future__ import annotations

import json

import pytest

from ember.gateway.errors import GatewayError, error_response
from ember.limits.headers import (
    RateLimitExceeded,
    concurrency_headers,
    format_duration,
    rate_limit_headers,
    retry_after_header,
)
from ember.limits.interface import Decision, Dimension, DimensionState


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0001, "1ms"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (0.9991, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (1.25, "1.25s"),
        (59.1, "59.1s"),
        (60, "1m0s"),
        (90, "1m30s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3723.5, "1h2m3.5s"),
        (1.000000001, "1.001s"),  # rounded up: waiting that long is always enough
    ],
)
def test_durations_read_like_openais(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(0.0, "1"), (0.001, "1"), (1.0, "1"), (1.2, "2"), (24.06, "25")])
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(seconds: float, text: str) -> None:
    assert retry_after_header(seconds) == text


def state(limit: int, remaining: int, reset: float, requested: int = 0, period: float = 60.0) -> DimensionState:
    return DimensionState(limit=limit, period_s=period, remaining=remaining, reset_after_s=reset, requested=requested)


def test_an_allowed_text_request_gets_requests_and_tokens_headers() -> None:
    decision = Decision(
        allowed=True,
        dimensions={
            Dimension.REQUESTS: state(60, 59, 1.0, requested=1),
            Dimension.PROMPT_TOKENS: state(40_000, 39_000, 1.5, requested=1_000),
            Dimension.COMPLETION_TOKENS: state(10_000, 6_000, 24.0, requested=4_000),
            Dimension.IMAGES: state(5, 5, 0.0),
        },
    )
    assert rate_limit_headers(decision) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        # The token limit nearer to running out: 60% of completion tokens left vs 97.5% of prompt tokens.
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "6000",
        "x-ratelimit-reset-tokens": "24s",
        "x-ratelimit-limit-prompt-tokens": "40000",
        "x-ratelimit-remaining-prompt-tokens": "39000",
        "x-ratelimit-reset-prompt-tokens": "1.5s",
        "x-ratelimit-limit-completion-tokens": "10000",
        "x-ratelimit-remaining-completion-tokens": "6000",
        "x-ratelimit-reset-completion-tokens": "24s",
        # No images were asked for, so no -images headers.
    }


def test_an_image_request_names_its_own_limit() -> None:
    decision = Decision(
        allowed=False,
        limiting=Dimension.IMAGES,
        retry_after_s=11.5,
        dimensions={Dimension.REQUESTS: state(60, 50, 10.0), Dimension.IMAGES: state(5, 0, 60.0, requested=2)},
    )
    error = RateLimitExceeded.from_decision(decision)
    assert error.status == 429 and error.type == "images" and error.code == "rate_limit_exceeded"
    assert error.message == (
        "Rate limit reached for images per minute: limit 5, remaining 0, requested 2. Please try again in 11.5s."
    )
    assert error.headers["Retry-After"] == "12"
    assert error.headers["x-ratelimit-remaining-images"] == "0"
    assert error.headers["x-ratelimit-reset-images"] == "1m0s"


def test_audio_limits_count_per_hour() -> None:
    decision = Decision(
        allowed=False,
        limiting=Dimension.AUDIO_SECONDS,
        retry_after_s=None,
        dimensions={Dimension.AUDIO_SECONDS: state(3_600, 3_600, 0.0, requested=4_000, period=3600.0)},
    )
    error = RateLimitExceeded.from_decision(decision)
    assert error.type == "audio_seconds" and "Retry-After" not in error.headers
    assert error.message.startswith("Request too large for audio seconds per hour: limit 3600, requested 4000.")
    assert error.headers["x-ratelimit-limit-audio-seconds"] == "3600"


def test_the_429_response_is_openai_shaped() -> None:
    decision = Decision(
        allowed=False,
        limiting=Dimension.REQUESTS,
        retry_after_s=0.4,
        dimensions={Dimension.REQUESTS: state(60, 0, 66.0, requested=1)},
    )
    error = RateLimitExceeded.from_decision(decision)
    assert isinstance(error, GatewayError)
    response = error_response(error, request_id="req-1")
    assert response.status_code == 429
    assert json.loads(response.body) == {
        "error": {
            "message": "Rate limit reached for requests per minute (RPM): limit 60, remaining 0, requested 1. "
            "Please try again in 400ms.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-ratelimit-limit-requests"] == "60"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"] == "1m6s"
    assert response.headers["x-request-id"] == "req-1"


def test_an_allowed_decision_cannot_become_a_429() -> None:
    with pytest.raises(AssertionError):
        RateLimitExceeded.from_decision(Decision(allowed=True))


def test_the_concurrency_429_has_the_same_family_as_the_others() -> None:
    standing = Decision(allowed=True, dimensions={Dimension.REQUESTS: state(60, 41, 12.0, requested=0)})
    error = RateLimitExceeded.too_many_concurrent(4, standing)
    assert error.status == 429 and error.headers["Retry-After"] == "1"
    assert error.headers["x-ratelimit-limit-requests"] == "60"
    assert error.headers["x-ratelimit-remaining-requests"] == "41"
    assert error.headers["x-ratelimit-limit-concurrency"] == "4"
    assert error.headers["x-ratelimit-remaining-concurrency"] == "0"
    # A tier that allows none: the pair says so, and there is nothing to wait for.
    none = RateLimitExceeded.too_many_concurrent(0, standing)
    assert none.headers["x-ratelimit-limit-concurrency"] == "0" and "Retry-After" not in none.headers
    assert concurrency_headers(4, -1)["x-ratelimit-remaining-concurrency"] == "0"
