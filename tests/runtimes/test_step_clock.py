"""StepClock: how long an engine has been inside its current step, read from another thread."""

from __future__ import annotations

import threading
import time

import pytest

from ember.runtimes.step_clock import StepClock


def test_inside_a_step_the_clock_runs_and_between_steps_it_reads_zero() -> None:
    clock = StepClock()
    assert clock.stalled_s() == 0.0
    inside, release = threading.Event(), threading.Event()

    def engine() -> None:
        with clock.step():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=engine)
    t.start()
    inside.wait(5)
    time.sleep(0.2)
    assert clock.stalled_s() >= 0.2  # read from this thread while the engine's step runs
    release.set()
    t.join()
    assert clock.stalled_s() == 0.0


def test_a_failed_step_does_not_leave_the_clock_running() -> None:
    clock = StepClock()
    with pytest.raises(RuntimeError), clock.step():
        raise RuntimeError("the step failed")
    assert clock.stalled_s() == 0.0
