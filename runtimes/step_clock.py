"""How long an engine has been inside its current step: what a worker's probes report, so that a process whose
event loop still answers while its engine is stuck (a hung kernel, a deadlock) does not look healthy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StepClock:
    """Wrap each step in ``with clock.step():``; ``stalled_s()`` may be read from any thread."""

    def __init__(self) -> None:
        # When the step running now began; None between steps. One float, written by the engine thread only.
        self._started: float | None = None

    @contextmanager
    def step(self) -> Iterator[None]:
        self._started = time.monotonic()
        try:
            yield
        finally:
            self._started = None

    def stalled_s(self) -> float:
        """Seconds inside the current step (0 between steps)."""
        started = self._started
        return 0.0 if started is None else time.monotonic() - started
