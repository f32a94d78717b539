"""How long an engine has been inside its current step: what a worker's probes report, so that a process whose
event loop still answers while its engine is stuck (a hung kernel, a deadlock) does not look healthy.

It also keeps the engine's step metrics (every runtime has the same two): how long steps take, and how many rows
(sequences, images, windows, inputs, pieces) each one ran together.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import Histogram
from prometheus_client.metrics_core import Metric

STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class StepClock:
    """Wrap each step in ``with clock.step():``; ``stalled_s()`` may be read from any thread."""

    def __init__(self) -> None:
        # When the step running now began; None between steps. One float, written by the engine thread only.
        self._started: float | None = None
        # Not in any registry: the worker's metrics page collects them through its job handler.
        self.step_seconds = Histogram(
            "ember_engine_step_seconds", "Time an engine step takes.", buckets=STEP_BUCKETS, registry=None
        )
        self.batch_rows = Histogram(
            "ember_engine_batch_rows", "Rows an engine step runs together.", buckets=ROW_BUCKETS, registry=None
        )

    @contextmanager
    def step(self) -> Iterator[None]:
        self._started = time.monotonic()
        try:
            yield
        finally:
            self.step_seconds.observe(time.monotonic() - self._started)
            self._started = None

    def rows(self, n: int) -> None:
        """Record how many rows the current step runs together (an empty step records none)."""
        if n > 0:
            self.batch_rows.observe(n)

    def stalled_s(self) -> float:
        """Seconds inside the current step (0 between steps)."""
        started = self._started
        return 0.0 if started is None else time.monotonic() - started

    def collect(self) -> Iterable[Metric]:
        yield from self.step_seconds.collect()
        yield from self.batch_rows.collect()
