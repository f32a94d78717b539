"""The time-to-first-token window a worker announces: p90 of the last few seconds, and nothing once it is quiet."""

from __future__ import annotations

from ember.runtimes.serving import LatencyWindow


def test_p90_of_the_window_then_none_once_it_has_passed() -> None:
    window = LatencyWindow(window_s=10.0)
    assert window.p90(now=0.0) is None
    for i in range(1, 11):
        window.add(i / 10, now=float(i))  # 0.1 .. 1.0 s, one a second
    assert window.p90(now=10.0) == 0.9  # nearest rank: the 9th of 10
    assert window.p90(now=15.0) == 1.0  # the four fastest have left the window: p90 of 0.5 .. 1.0
    assert window.p90(now=21.0) is None  # quiet for a whole window: no signal, not a stale one
