"""GCRA, the generic cell rate algorithm: a token bucket kept as one timestamp.

A limit of ``L`` cells (requests, tokens, images, ...) per period ``P`` costs ``P / L`` of time per cell. The
state is the theoretical arrival time (TAT): when the bucket will be full again. A request of ``c`` cells
arriving at ``now`` moves it to ``max(TAT, now) + c * P / L``, and it is admitted if that is at most
``now + D``, where ``D`` is the bucket's depth in time. So an idle key may spend ``D`` worth of cells at once
and afterwards ``L`` per ``P``; in any window of length ``W`` it gets at most ``D + W`` worth.

``D = P * (1 + burst_fraction)``: an idle key may send a full period's limit plus the burst at once, and over
any one period it can never get more than twice that. A request of more cells than the bucket holds can never
be admitted; ``retry_after_ns`` is None for it.

Times are nanoseconds, and a TAT is an exact fraction of one (``c * P / L`` rarely divides), so there is no
rounding to drift on: "remaining" is exactly the number of 1-cell requests that would still be admitted at
``now``, and also the largest single request that would. Waits are rounded up to the next nanosecond.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Rate:
    """One limit: ``limit`` cells per ``period_ns``, with a bucket ``1 + burst_fraction`` periods deep."""

    # Cells per period; 0 admits nothing (a request of 0 cells still passes).
    limit: int
    # The period the limit is counted over: a minute for requests and tokens, an hour for audio seconds.
    period_ns: int
    # How far above one period's limit an idle key may burst (Tier.burst_fraction).
    burst_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not (self.limit >= 0 and self.period_ns > 0 and self.burst_fraction >= 0.0):
            raise ValueError(f"unsupported rate: {self.limit} per {self.period_ns} ns, burst {self.burst_fraction}")

    @property
    def depth_ns(self) -> Fraction:
        """D: how far ahead of now the TAT may be after an admission."""
        # The float 0.3 is 0.29999999999999998890; read it as the decimal the operator wrote.
        return self.period_ns * (1 + Fraction(self.burst_fraction).limit_denominator(1_000_000))

    @property
    def capacity(self) -> int:
        """Cells a full (idle) bucket admits at once."""
        return self.cells_within(self.depth_ns)

    def cost_ns(self, cells: int) -> Fraction:
        """The time ``cells`` cells move the TAT."""
        assert cells >= 0
        if cells == 0:
            return Fraction(0)
        if self.limit == 0:
            raise ValueError("a limit of 0 admits no cells")
        return Fraction(cells * self.period_ns, self.limit)

    def cells_within(self, ns: Fraction | int) -> int:
        """The most cells whose cost fits in ``ns``."""
        if ns < 0 or self.limit == 0:
            return 0
        return math.floor(ns * self.limit / self.period_ns)


@dataclass(frozen=True)
class Outcome:
    """GCRA's answer for one request on one limit."""

    allowed: bool
    # The TAT to store: moved on admission, unchanged on denial (None: nothing stored, the bucket is full).
    tat_ns: Fraction | None
    # 1-cell requests that would still be admitted at now, after this one.
    remaining: int
    # Until the bucket is full again (OpenAI's x-ratelimit-reset-*), rounded up.
    reset_after_ns: int
    # Denied: the wait after which this same request fits, rounded up; None if it never can. Allowed: 0.
    retry_after_ns: int | None


def _base(tat_ns: Fraction | None, now_ns: int) -> Fraction:
    return Fraction(now_ns) if tat_ns is None else max(tat_ns, Fraction(now_ns))


def peek(rate: Rate, tat_ns: Fraction | None, now_ns: int) -> Outcome:
    """The bucket as it is at ``now``, charging nothing."""
    base = _base(tat_ns, now_ns)
    return Outcome(True, tat_ns, rate.cells_within(now_ns + rate.depth_ns - base), math.ceil(base - now_ns), 0)


def admit(rate: Rate, tat_ns: Fraction | None, now_ns: int, cells: int) -> Outcome:
    """Admit ``cells`` cells at ``now`` if the bucket holds them; a denial changes nothing."""
    assert cells >= 0
    if cells == 0:
        return peek(rate, tat_ns, now_ns)
    base = _base(tat_ns, now_ns)
    if rate.limit == 0 or rate.cost_ns(cells) > rate.depth_ns:
        # More than a full bucket: waiting never helps.
        left = rate.cells_within(now_ns + rate.depth_ns - base)
        return Outcome(False, tat_ns, left, math.ceil(base - now_ns), None)
    new_tat = base + rate.cost_ns(cells)
    room = now_ns + rate.depth_ns - new_tat
    if room >= 0:
        return Outcome(True, new_tat, rate.cells_within(room), math.ceil(new_tat - now_ns), 0)
    left = rate.cells_within(now_ns + rate.depth_ns - base)
    return Outcome(False, tat_ns, left, math.ceil(base - now_ns), math.ceil(-room))


def charge(rate: Rate, tat_ns: Fraction | None, now_ns: int, cells: int) -> Fraction | None:
    """Spend ``cells`` cells whatever the bucket holds (usage beyond a reservation); the key owes the excess."""
    if cells == 0 or rate.limit == 0:
        return tat_ns
    return _base(tat_ns, now_ns) + rate.cost_ns(cells)


def refund(rate: Rate, tat_ns: Fraction | None, now_ns: int, cells: int) -> Fraction | None:
    """Give back ``cells`` unused cells; the TAT never drops below now (a bucket holds no more than full)."""
    if tat_ns is None or cells == 0 or rate.limit == 0:
        return tat_ns
    return max(tat_ns - rate.cost_ns(cells), Fraction(now_ns))
