"""GCRA's math, exhaustively: bursts, remaining, retry-after, reset, refunds, and the token-bucket bound."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ember.limits import gcra
from ember.limits.gcra import NS_PER_S, Rate

MINUTE = 60 * NS_PER_S

rates = st.builds(
    Rate,
    limit=st.integers(1, 5_000),
    period_ns=st.sampled_from([NS_PER_S, MINUTE, 3600 * NS_PER_S]) | st.integers(1, 10**13),
    burst_fraction=st.floats(0.0, 1.0),
)
small_rates = st.builds(
    Rate,
    limit=st.integers(1, 200),
    period_ns=st.sampled_from([NS_PER_S, MINUTE, 3600 * NS_PER_S]) | st.integers(1, 10**12),
    burst_fraction=st.floats(0.0, 1.0),
)
nows = st.integers(0, 2 * 10**18)
# A history of (wait, cells) steps that leaves a bucket in some arbitrary state.
histories = st.lists(st.tuples(st.integers(0, 10**11), st.integers(0, 300)), max_size=30)


def run(rate: Rate, start: int, history: list[tuple[int, int]]) -> tuple[int | None, int]:
    """Apply ``history`` from an empty bucket; returns (tat, now)."""
    tat, now = None, start
    for wait, cells in history:
        now += wait
        tat = gcra.admit(rate, tat, now, cells).tat_ns
    return tat, now


def test_a_60_rpm_bucket_with_10_percent_burst() -> None:
    rate = Rate(60, MINUTE, 0.1)
    assert (rate.depth_ns, rate.capacity, rate.cost_ns(1)) == (66 * NS_PER_S, 66, NS_PER_S)
    assert Rate(60, MINUTE, 0.3).capacity == 78  # not 77: 0.3 is not exact in binary
    tat, now = None, 1_000 * NS_PER_S
    for i in range(66):
        out = gcra.admit(rate, tat, now, 1)
        assert out.allowed and out.remaining == 65 - i and out.reset_after_ns == (i + 1) * NS_PER_S
        tat = out.tat_ns
    denied = gcra.admit(rate, tat, now, 1)
    assert not denied.allowed and denied.remaining == 0 and denied.retry_after_ns == NS_PER_S
    assert denied.tat_ns == tat and denied.reset_after_ns == 66 * NS_PER_S
    # One emission interval later exactly one more fits.
    later = gcra.admit(rate, tat, now + NS_PER_S, 1)
    assert later.allowed and later.remaining == 0


def test_rounding_never_denies_a_full_period_of_an_awkward_limit() -> None:
    rate = Rate(7, MINUTE, 0.0)  # 60s / 7 is not a whole number of nanoseconds
    tat = None
    for _ in range(7):
        out = gcra.admit(rate, tat, 0, 1)
        assert out.allowed
        tat = out.tat_ns
    assert not gcra.admit(rate, tat, 0, 1).allowed


@given(rate=rates)
def test_capacity_is_the_limit_plus_the_burst(rate: Rate) -> None:
    burst = Fraction(rate.burst_fraction).limit_denominator(10**6)
    assert rate.capacity == math.floor(rate.limit * (1 + burst)) >= rate.limit
    assert rate.cost_ns(rate.capacity) <= rate.depth_ns < rate.cost_ns(rate.capacity + 1)


@given(rate=small_rates, now=nows)
def test_an_idle_bucket_admits_exactly_its_capacity_at_once(rate: Rate, now: int) -> None:
    tat = None
    for i in range(rate.capacity):
        out = gcra.admit(rate, tat, now, 1)
        assert out.allowed, i
        assert out.remaining == rate.capacity - i - 1
        tat = out.tat_ns
    assert not gcra.admit(rate, tat, now, 1).allowed


@given(rate=small_rates, start=nows, history=histories)
def test_remaining_is_exactly_how_many_more_fit_now(rate: Rate, start: int, history: list[tuple[int, int]]) -> None:
    tat, now = run(rate, start, history)
    remaining = gcra.peek(rate, tat, now).remaining
    assert remaining <= rate.capacity
    for _ in range(remaining):
        out = gcra.admit(rate, tat, now, 1)
        assert out.allowed
        tat = out.tat_ns
    assert not gcra.admit(rate, tat, now, 1).allowed


@given(rate=rates, start=nows, history=histories, cells=st.integers(1, 10_000))
def test_a_denial_changes_nothing_and_its_retry_after_is_exact(
    rate: Rate, start: int, history: list[tuple[int, int]], cells: int
) -> None:
    tat, now = run(rate, start, history)
    out = gcra.admit(rate, tat, now, cells)
    assume(not out.allowed)
    assert out.tat_ns == tat
    if out.retry_after_ns is None:
        # Bigger than a full bucket: it fails even after the bucket has long refilled.
        assert rate.cost_ns(cells) > rate.depth_ns
        assert not gcra.admit(rate, tat, now + 10 * rate.depth_ns + 10**12, cells).allowed
        return
    assert out.retry_after_ns > 0
    assert gcra.admit(rate, tat, now + out.retry_after_ns, cells).allowed
    assert not gcra.admit(rate, tat, now + out.retry_after_ns - 1, cells).allowed


@given(rate=rates, start=nows, history=histories, cells=st.integers(0, 10_000))
def test_an_admission_reports_a_zero_wait_and_a_reset_when_the_bucket_is_full(
    rate: Rate, start: int, history: list[tuple[int, int]], cells: int
) -> None:
    tat, now = run(rate, start, history)
    out = gcra.admit(rate, tat, now, cells)
    assume(out.allowed)
    assert out.retry_after_ns == 0 and out.reset_after_ns >= 0
    full = gcra.peek(rate, out.tat_ns, now + out.reset_after_ns)
    assert full.remaining == rate.capacity and full.reset_after_ns == 0
    if out.reset_after_ns > 0:
        assert gcra.peek(rate, out.tat_ns, now + out.reset_after_ns - 1).reset_after_ns == 1


@given(rate=rates, start=nows, history=histories, steps=histories)
def test_admissions_in_any_window_never_exceed_the_bucket_plus_the_refill(
    rate: Rate, start: int, history: list[tuple[int, int]], steps: list[tuple[int, int]]
) -> None:
    """The GCRA guarantee: what is admitted within [t0, t1] costs at most depth + (t1 - t0)."""
    tat, now = run(rate, start, history)
    admitted: list[tuple[int, int]] = []  # (time, cells)
    for wait, cells in steps:
        now += wait
        out = gcra.admit(rate, tat, now, cells)
        if out.allowed and cells:
            admitted.append((now, cells))
        tat = out.tat_ns
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            window = admitted[i : j + 1]
            elapsed = admitted[j][0] - admitted[i][0]
            cells = sum(c for _, c in window)
            assert rate.cost_ns(cells) <= rate.depth_ns + elapsed
            assert cells <= math.floor((rate.depth_ns + elapsed) * rate.limit / rate.period_ns)


@given(rate=rates, steps=st.lists(st.tuples(st.integers(0, 5 * 10**9), st.integers(0, 50)), max_size=60))
@settings(max_examples=200)
def test_decisions_match_an_exact_token_bucket(rate: Rate, steps: list[tuple[int, int]]) -> None:
    """GCRA is a token bucket of the same depth and rate, to the last fraction of a token."""
    per_ns = Fraction(rate.limit, rate.period_ns)  # tokens refilled per nanosecond
    capacity = rate.depth_ns * per_ns
    tokens, last, now, tat = capacity, 0, 0, None
    for wait, cells in steps:
        now += wait
        tokens = min(capacity, tokens + (now - last) * per_ns)
        last = now
        out = gcra.admit(rate, tat, now, cells)
        assert out.allowed == (tokens >= cells), (tokens, cells)
        if out.allowed:
            tokens -= cells
        assert out.remaining == math.floor(tokens)
        tat = out.tat_ns


@given(rate=rates, start=nows, history=histories, cells=st.integers(0, 10_000), later=st.integers(0, 10**11))
def test_a_refund_undoes_an_admission_and_never_goes_below_now(
    rate: Rate, start: int, history: list[tuple[int, int]], cells: int, later: int
) -> None:
    tat, now = run(rate, start, history)
    before = gcra.peek(rate, tat, now)
    out = gcra.admit(rate, tat, now, cells)
    assume(out.allowed)
    after = gcra.peek(rate, gcra.refund(rate, out.tat_ns, now, cells), now)
    assert (after.remaining, after.reset_after_ns) == (before.remaining, before.reset_after_ns)
    refunded = gcra.refund(rate, out.tat_ns, now + later, cells)
    if refunded is not None:
        assert refunded >= now + later or refunded == out.tat_ns
        assert gcra.peek(rate, refunded, now + later).remaining <= rate.capacity
    # Refunding more than was ever charged leaves a full bucket, not a fuller one.
    over = gcra.refund(rate, out.tat_ns, now, cells + 10**6)
    assert over is None if out.tat_ns is None else over == max(now, out.tat_ns - rate.cost_ns(cells + 10**6))
    assert gcra.peek(rate, over, now).remaining == rate.capacity


@given(rate=rates, start=nows, history=histories, cells=st.integers(0, 10**6))
def test_a_charge_always_lands_even_past_the_limit(
    rate: Rate, start: int, history: list[tuple[int, int]], cells: int
) -> None:
    tat, now = run(rate, start, history)
    charged = gcra.charge(rate, tat, now, cells)
    if cells == 0:
        assert charged == tat
    else:
        assert charged == max(tat or now, now) + rate.cost_ns(cells)


def test_a_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported rate"):
        Rate(-1, NS_PER_S)
    with pytest.raises(ValueError, match="unsupported rate"):
        Rate(1, NS_PER_S, -0.5)


def test_a_limit_of_zero_admits_nothing_but_empty_requests() -> None:
    rate = Rate(0, MINUTE, 0.1)
    out = gcra.admit(rate, None, 5, 1)
    assert not out.allowed and out.retry_after_ns is None and out.remaining == 0
    assert gcra.admit(rate, None, 5, 0).allowed
    assert rate.capacity == 0
    assert gcra.refund(rate, 10, 5, 3) == 10 and gcra.charge(rate, 10, 5, 3) == 10
    with pytest.raises(ValueError, match="limit of 0"):
        rate.cost_ns(1)


def test_tokens_cost_many_cells_at_once() -> None:
    rate = Rate(40_000, MINUTE, 0.1)  # 44,000 tokens in a full bucket, 1.5 ms each
    out = gcra.admit(rate, None, 0, 30_000)
    assert out.allowed and out.remaining == 14_000
    denied = gcra.admit(rate, out.tat_ns, 0, 20_000)
    assert not denied.allowed and denied.retry_after_ns == 6_000 * 1_500_000  # 6,000 tokens short, 1.5 ms each
    assert gcra.admit(rate, out.tat_ns, 0, 44_001).retry_after_ns is None
    # 10,000 unused tokens come back.
    back = gcra.refund(rate, out.tat_ns, 0, 10_000)
    assert gcra.peek(rate, back, 0).remaining == 24_000
