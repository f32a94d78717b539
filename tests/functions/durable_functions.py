"""Functions for the async-job tests: each run is written down, so a test can tell a job run twice from one
billed or completed twice.

`ember worker functions --module tests.functions.durable_functions` with ``EMBER_TEST_RUNS=<file>`` appends
``start <job id> <pid>`` and ``end <job id> <pid>`` lines to that file (one write each: lines of processes that run
at once do not interleave).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import ember
from ember.functions import context


def note(event: str) -> None:
    path = os.environ.get("EMBER_TEST_RUNS")
    if path:
        with Path(path).open("a") as f:
            f.write(f"{event} {context.current().request_id} {os.getpid()}\n")


@ember.function(name="durable.slow_add")
async def slow_add(a: int, b: int, seconds: float = 1.0) -> int:
    """Add two integers, slowly."""
    note("start")
    await asyncio.sleep(seconds)
    note("end")
    return a + b


def runs(path: Path) -> dict[str, dict[str, list[int]]]:
    """job id -> {"start": [pid, ...], "end": [pid, ...]} from a runs file."""
    out: dict[str, dict[str, list[int]]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        event, job_id, pid = line.split()
        out.setdefault(job_id, {"start": [], "end": []})[event].append(int(pid))
    return out
