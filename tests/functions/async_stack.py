"""Async jobs through real processes that a test (or benchmarks/faults_async.py) kills: `ember gateway` and
`ember worker functions`, on a nats-server of the caller's.

    stack = AsyncJobsStack(tmp, nats_url, ack_wait_s=2)
    stack.start_gateway(); stack.start_worker()
    ids = stack.submit_all(20)              # each with an Idempotency-Key, retried across gateway restarts
    stack.kill_worker(); stack.start_worker()
    tally = stack.tally(ids, within_s=30)    # completed, lost, duplicated, usage records, re-runs

Jobs are ``durable.slow_add`` calls (tests.functions.durable_functions), whose every start and end is written to
a file, so a job run twice is told apart from one billed or completed twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ember.bus.connection import connect
from ember.bus.nats_server import free_port
from ember.usage import stream as usage_stream
from tests.functions.cluster import start_functions_worker
from tests.functions.durable_functions import runs
from tests.helpers.cluster import stop_process, write_config

MODULE = "tests.functions.durable_functions"
FUNCTION = "durable.slow_add"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Tally:
    """What became of ``n`` submitted jobs."""

    n: int
    completed: int  # succeeded with the right output
    failed: int
    lost: int  # not finished in time (or no record)
    duplicated: int  # jobs with more than one usage record
    usage_records: int
    reruns: int  # jobs whose function started more than once (a lost worker's job, run again: expected)
    seconds: float


class AsyncJobsStack:
    def __init__(self, root: Path, nats_url: str, *, ack_wait_s: float = 2.0, max_attempts: int = 3) -> None:
        self.root = root
        self.nats_url = nats_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runs_file = root / "runs.txt"
        self.config = write_config(
            root / "ember.toml",
            {},
            auth={"enabled": False},
            functions={"builtins": False, "ack_wait_s": ack_wait_s, "max_attempts": max_attempts},
        )
        self.gateway: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.accepted = 0  # 202s so far
        self._lock = threading.Lock()

    # --- processes -----------------------------------------------------------------------------------------------

    def start_gateway(self) -> None:
        cmd = [sys.executable, "-m", "ember.cli", "--config", str(self.config), "gateway"]
        cmd += ["--nats", self.nats_url, "--port", str(self.port)]
        with open(self.root / "gateway.log", "ab") as out:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.gateway = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.gateway.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the gateway did not come up:\n{(self.root / 'gateway.log').read_text()[-3000:]}")

    def start_worker(self) -> None:
        """A functions worker; returns once it says it is ready (it pulls queued jobs from then on)."""
        log = self.root / "worker.log"
        before = self._ready_count()
        os.environ["EMBER_TEST_RUNS"] = str(self.runs_file)  # the worker inherits it
        self.worker = start_functions_worker(self.config, self.nats_url, [MODULE], log=log)
        deadline = time.monotonic() + 60
        while self._ready_count() == before:
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the functions worker did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def _ready_count(self) -> int:
        log = self.root / "worker.log"
        return log.read_text().count("functions ready") if log.exists() else 0

    def kill_worker(self) -> None:
        assert self.worker is not None
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait()

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.send_signal(signal.SIGKILL)
        self.gateway.wait()

    def close(self) -> None:
        for proc in (self.worker, self.gateway):
            if proc is not None:
                stop_process(proc)

    # --- jobs ----------------------------------------------------------------------------------------------------

    def started(self) -> int:
        """Job runs started so far (re-runs included)."""
        return sum(len(r["start"]) for r in runs(self.runs_file).values())

    def submit(self, i: int, seconds: float = 1.0, within_s: float = 60.0) -> str:
        """Job ``i``, retried with its Idempotency-Key until a gateway accepts it (a gateway may be restarting)."""
        body = {"input": {"a": i, "b": 1, "seconds": seconds}}
        headers = {"Idempotency-Key": f"job-{i}"}
        deadline = time.monotonic() + within_s
        while True:
            try:
                r = httpx.post(f"{self.url}/v1/functions/{FUNCTION}/invoke?async=true", json=body, headers=headers)
                if r.status_code == 202:
                    with self._lock:
                        self.accepted += 1
                    return str(r.json()["id"])
                problem: Any = r.text
            except httpx.TransportError as e:  # the gateway died under this request: ask again
                problem = e
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {i} not accepted: {problem}")
            time.sleep(0.1)

    def submit_all(self, n: int, seconds: float = 1.0, clients: int = 4, pace_s: float = 0.0) -> list[str]:
        """Jobs 0..n-1 from ``clients`` threads, each waiting ``pace_s`` before each job; their ids in order."""

        def one(i: int) -> str:
            time.sleep(pace_s)
            return self.submit(i, seconds)

        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(one, range(n)))

    def tally(self, ids: list[str], within_s: float, started: float | None = None) -> Tally:
        """Wait for every job to finish (up to ``within_s``), then count."""
        started = time.monotonic() if started is None else started
        deadline = time.monotonic() + within_s
        final: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline and len(final) < len(ids):
            for job_id in ids:
                if job_id in final:
                    continue
                try:
                    body = httpx.get(f"{self.url}/v1/jobs/{job_id}", timeout=5).json()
                except httpx.TransportError:
                    break  # the gateway is restarting
                if body.get("status") in ("succeeded", "failed", "cancelled"):
                    final[job_id] = body
            time.sleep(0.1)
        seconds = time.monotonic() - started
        usage = asyncio.run(self._usage_counts(set(ids)))
        started_runs = runs(self.runs_file)
        inputs = {job_id: i for i, job_id in enumerate(ids)}
        return Tally(
            n=len(ids),
            completed=sum(1 for j, b in final.items() if b["status"] == "succeeded" and b["output"] == inputs[j] + 1),
            failed=sum(1 for b in final.values() if b["status"] != "succeeded"),
            lost=len(ids) - len(final),
            duplicated=sum(1 for count in usage.values() if count > 1),
            usage_records=sum(usage.values()),
            reruns=sum(1 for j in ids if len(started_runs.get(j, {}).get("start", [])) > 1),
            seconds=seconds,
        )

    async def _usage_counts(self, ids: set[str]) -> dict[str, int]:
        """Usage records per job id as stored (not deduplicated the way summaries are)."""
        nc = await connect(self.nats_url, name="async-jobs-tally")
        try:
            counts: dict[str, int] = {}
            async for _, rec in usage_stream.read(nc.jetstream()):
                if rec.request_id in ids:
                    counts[rec.request_id] = counts.get(rec.request_id, 0) + 1
            return counts
        finally:
            await nc.drain()


def wait_until(check: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {within_s}s")
        time.sleep(0.02)
