"""The scaler's decision on scripted signals, with fake time: up on sustained pressure, one start per pressure,
down after an idle period, never below min_workers or above max_workers, from zero on demand."""

from __future__ import annotations

from ember.cli.scaler import Decision, Policy, ScaleState, Signals, decide

POLICY = Policy(min_workers=1, max_workers=3, waiting_per_worker=1.0, ttft_p90_s=2.0, sustain_s=3.0, idle_s=10.0)


def run(policy: Policy, script: list[tuple[float, Signals]], state: ScaleState | None = None) -> list[Decision]:
    state = state or ScaleState()
    return [decide(policy, signals, state, now) for now, signals in script]


def ticks(start: float, end: float, signals: Signals, step: float = 0.5) -> list[tuple[float, Signals]]:
    n = round((end - start) / step)
    return [(start + i * step, signals) for i in range(n + 1)]


def starts(decisions: list[Decision]) -> int:
    return sum(d.start for d in decisions)


def stops(decisions: list[Decision]) -> int:
    return sum(d.stop for d in decisions)


def test_sustained_waiting_starts_one_worker_after_sustain_s() -> None:
    busy = Signals(live=1, running=4, waiting=5)
    decisions = run(POLICY, ticks(0, 4, busy))
    first = next(i for i, d in enumerate(decisions) if d.start)
    assert first * 0.5 == 3.0  # not before the pressure lasted sustain_s
    assert decisions[first].start == 1 and "waiting per worker" in decisions[first].reason


def test_a_burst_shorter_than_sustain_starts_nothing() -> None:
    busy, calm = Signals(live=1, running=4, waiting=5), Signals(live=1, running=4, waiting=0)
    script = ticks(0, 2.5, busy) + ticks(3, 4, calm) + ticks(4.5, 7, busy)
    assert starts(run(POLICY, script)) == 0


def test_latency_alone_is_pressure() -> None:
    slow = Signals(live=1, running=4, ttft_p90_s=3.5)
    assert starts(run(POLICY, ticks(0, 3, slow))) == 1
    off = Policy(min_workers=1, max_workers=3, ttft_p90_s=0)  # 0 turns the signal off
    assert starts(run(off, ticks(0, 10, slow))) == 0
    fast = Signals(live=1, running=4, ttft_p90_s=0.5)
    assert starts(run(POLICY, ticks(0, 10, fast))) == 0


def test_no_second_start_for_the_same_pressure() -> None:
    state = ScaleState()
    busy = Signals(live=1, running=4, waiting=6)
    assert starts(run(POLICY, ticks(0, 3, busy), state)) == 1
    # The new worker loads for 20 s while the pressure stays: nothing more is started meanwhile.
    loading = Signals(live=1, starting=1, running=4, waiting=6)
    assert starts(run(POLICY, ticks(3.5, 23.5, loading), state)) == 0
    # It has announced itself and the pressure is still there: a fresh sustain_s, then one more start.
    two = Signals(live=2, running=8, waiting=6)
    decisions = run(POLICY, ticks(24, 27, two), state)
    assert [i * 0.5 + 24 for i, d in enumerate(decisions) if d.start] == [27.0]
    # The third loads; then all three are live and still under pressure: max_workers, so no more.
    assert starts(run(POLICY, ticks(27.5, 40, Signals(live=2, starting=1, running=8, waiting=6)), state)) == 0
    assert starts(run(POLICY, ticks(40.5, 60, Signals(live=3, running=12, waiting=6)), state)) == 0


def test_the_latency_of_before_a_worker_joined_is_not_pressure_for_its_window() -> None:
    """The workers' TTFT p90 covers their last 10 s: just after a new worker joins it still holds the waits it
    came to relieve (the autoscale benchmark started a third worker on that alone)."""
    state = ScaleState()
    slow = Signals(live=1, running=8, ttft_p90_s=6.0)
    assert starts(run(POLICY, ticks(0, 3, slow), state)) == 1
    run(POLICY, ticks(3.5, 10, Signals(live=1, starting=1, running=8, ttft_p90_s=6.0)), state)
    # Joined at 10.5: the p90 stays high while old samples age out, and the queue is gone.
    after = Signals(live=2, running=10, ttft_p90_s=6.0)
    assert starts(run(POLICY, ticks(10.5, 20, after), state)) == 0
    # Still slow a whole window later: that is the new pair's own latency, and pressure again.
    assert starts(run(POLICY, ticks(20.5, 24, after), state)) == 1


def test_never_above_max_workers() -> None:
    busy = Signals(live=3, running=12, waiting=30, ttft_p90_s=9.0)
    assert starts(run(POLICY, ticks(0, 60, busy))) == 0
    nearly = Signals(live=2, starting=1, running=8, waiting=30)
    assert starts(run(POLICY, ticks(0, 60, nearly))) == 0


def test_idle_scales_down_to_min_after_idle_s() -> None:
    state = ScaleState()
    idle = Signals(live=3)
    decisions = run(POLICY, ticks(0, 12, idle), state)
    down = [(i * 0.5, d) for i, d in enumerate(decisions) if d.stop]
    assert down[0][0] == 10.0 and down[0][1].stop == 2  # to min_workers, at once (none of them has work)
    # Once at min, idleness stops nothing more.
    assert stops(run(POLICY, ticks(12.5, 100, Signals(live=1)), state)) == 0


def test_any_work_resets_the_idle_period() -> None:
    idle, one = Signals(live=2), Signals(live=2, running=1)
    script = [*ticks(0, 9, idle), (9.5, one), *ticks(10, 19, idle)]
    assert stops(run(POLICY, script)) == 0
    assert stops(run(POLICY, script + ticks(19.5, 20, idle))) == 1


def test_no_scale_down_while_a_worker_is_starting() -> None:
    assert stops(run(POLICY, ticks(0, 30, Signals(live=2, starting=1)))) == 0


def test_below_min_starts_the_missing_ones_at_once() -> None:
    policy = Policy(min_workers=2, max_workers=4)
    assert run(policy, [(0.0, Signals(live=0))])[0].start == 2
    assert run(policy, [(0.0, Signals(live=1, starting=1))])[0].start == 0


def test_scale_to_zero_and_back_on_demand() -> None:
    policy = Policy(min_workers=0, max_workers=2, idle_s=5.0)
    state = ScaleState()
    # Nobody asks: nothing starts.
    assert starts(run(policy, ticks(0, 10, Signals(live=0)), state)) == 0
    # A gateway holds a request: one worker at once, and no second one while it loads.
    d = run(policy, [(10.5, Signals(live=0, demand=True))], state)[0]
    assert d.start == 1 and "scale from zero" in d.reason
    assert starts(run(policy, ticks(11, 20, Signals(live=0, starting=1, demand=True)), state)) == 0
    # It served, then idles: back to zero after idle_s.
    run(policy, [(21.0, Signals(live=1, running=1))], state)
    decisions = run(policy, ticks(21.5, 26.5, Signals(live=1)), state)
    assert [(i * 0.5 + 21.5, d.stop) for i, d in enumerate(decisions) if d.stop] == [(26.5, 1)]
    # At zero it stays there, idle or not, until the next demand.
    assert run(policy, ticks(27, 40, Signals(live=0)), state) == [Decision()] * 27
