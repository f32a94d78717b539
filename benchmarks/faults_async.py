"""Async jobs under faults: 50 jobs, the functions worker killed (-9) twice while running them and the gateway
killed (-9) once while accepting them; every job should complete once and be billed once.

    python benchmarks/faults_async.py [--jobs 50] [--job-seconds 3] [--ack-wait 3]

Real processes on loopback: a nats-server, `ember gateway` and `ember worker functions`
(tests.functions.async_stack). Clients whose request died with the gateway ask again with the same
Idempotency-Key. Prints one row: scenario, N, completed, lost, duplicated (jobs with more than one usage record),
usage records, re-runs (jobs whose function started more than once: the work of a killed worker, done again),
and the seconds from the first submission to the last job's end. ``run`` is importable (benchmarks/faults.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` is importable from here

from ember.bus.nats_server import EmbeddedNats
from tests.functions.async_stack import AsyncJobsStack, Tally, wait_until

SCENARIO = "async jobs: worker killed x2, gateway killed x1"


def run(jobs: int = 50, job_seconds: float = 3.0, ack_wait_s: float = 3.0) -> Tally:
    """The scenario once, on a nats-server of its own; what became of the jobs."""
    with (
        tempfile.TemporaryDirectory(prefix="ember-faults-async-") as tmp,
        EmbeddedNats(data_dir=Path(tmp) / "nats") as nats,
    ):
        stack = AsyncJobsStack(Path(tmp), nats.url, ack_wait_s=ack_wait_s)
        try:
            stack.start_gateway()
            stack.start_worker()

            def kill_gateway_while_accepting() -> None:
                wait_until(lambda: stack.accepted >= jobs // 3, 60, f"{jobs // 3} jobs accepted")
                stack.kill_gateway()
                stack.start_gateway()

            killer = threading.Thread(target=kill_gateway_while_accepting)
            killer.start()
            started = time.monotonic()
            ids = stack.submit_all(jobs, seconds=job_seconds, clients=4, pace_s=0.05)
            killer.join()
            # First kill: once some jobs run; second: once the next worker has taken the redelivered ones.
            wait_until(lambda: stack.started() >= jobs // 2, 60, f"{jobs // 2} jobs started")
            stack.kill_worker()
            stack.start_worker()
            before = stack.started()
            wait_until(lambda: stack.started() >= before + jobs // 4, 60, "the next worker running jobs")
            stack.kill_worker()
            stack.start_worker()
            return stack.tally(ids, within_s=120 + 4 * ack_wait_s, started=started)
        finally:
            stack.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--job-seconds", type=float, default=3.0, help="how long each job's function runs")
    p.add_argument("--ack-wait", type=float, default=3.0, help="functions.ack_wait_s (the default is 30)")
    args = p.parse_args()
    t = run(args.jobs, args.job_seconds, args.ack_wait)
    header = ["scenario", "N", "completed", "lost", "failed", "duplicated", "usage records", "re-runs", "seconds"]
    row = [SCENARIO, t.n, t.completed, t.lost, t.failed, t.duplicated, t.usage_records, t.reruns, f"{t.seconds:.1f}"]
    print(" | ".join(header))
    print(" | ".join(str(v) for v in row))
    ok = (t.completed, t.lost, t.duplicated, t.usage_records) == (t.n, 0, 0, t.n)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
