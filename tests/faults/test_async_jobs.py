"""Async jobs across real process deaths: `ember gateway` and `ember worker functions` killed with -9 while jobs
are accepted and running; every job completes, and is billed, exactly once."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.functions.async_stack import FUNCTION, AsyncJobsStack, wait_until
from tests.functions.durable_functions import runs

N = 16


def test_async_jobs_survive_a_gateway_kill_and_a_worker_kill(nats_url: str, tmp_path: Path) -> None:
    stack = AsyncJobsStack(tmp_path, nats_url, ack_wait_s=1.0)
    try:
        stack.start_gateway()
        stack.start_worker()

        def kill_gateway_while_accepting() -> None:
            wait_until(lambda: stack.accepted >= 5, 30, "5 jobs accepted")
            stack.kill_gateway()  # requests in flight fail; their clients ask again with the same Idempotency-Key
            stack.start_gateway()

        killer = threading.Thread(target=kill_gateway_while_accepting)
        killer.start()
        ids = stack.submit_all(N, seconds=3.0, clients=2, pace_s=0.05)
        killer.join()
        assert len(set(ids)) == N
        wait_until(lambda: stack.started() >= N, 30, f"{N} jobs started")
        stack.kill_worker()  # the jobs it runs are neither finished nor acknowledged
        stack.start_worker()
        tally = stack.tally(ids, within_s=60)
    finally:
        stack.close()
    assert (tally.completed, tally.lost, tally.failed) == (N, 0, 0), tally
    assert (tally.usage_records, tally.duplicated) == (N, 0), tally
    # Jobs that were running on the killed worker ran again on the new one (and were still billed once).
    assert tally.reruns >= 1, tally


def test_a_known_function_without_a_live_worker(nats_url: str, tmp_path: Path) -> None:
    stack = AsyncJobsStack(tmp_path, nats_url, ack_wait_s=1.0)
    invoke = f"{stack.url}/v1/functions/{FUNCTION}/invoke"
    body = {"input": {"a": 0, "b": 1, "seconds": 0.0}}  # what job 0 of the stack adds (see Tally)
    try:
        stack.start_gateway()
        stack.start_worker()  # declares the function
        assert stack.worker is not None
        stack.worker.terminate()  # it announces that it leaves
        stack.worker.wait(15)
        r = httpx.post(invoke, json=body)
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_worker" and r.headers["Retry-After"]
        r = httpx.post(f"{stack.url}/v1/functions/durable.nope/invoke", json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "function_not_found"
        # Async is durable: it waits on the queue for a worker.
        cancel_me = httpx.post(f"{invoke}?async=true", json=body)
        keep = httpx.post(f"{invoke}?async=true", json=body)
        assert (cancel_me.status_code, keep.status_code) == (202, 202)
        assert keep.json()["status"] == "queued"
        job = cancel_me.json()["id"]
        for _ in range(2):  # cancelling twice is cancelling once
            r = httpx.post(f"{stack.url}/v1/jobs/{job}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert httpx.post(f"{stack.url}/v1/jobs/fnjob_nope/cancel").status_code == 404
        # Webhooks are off in this config; and they are for async calls only.
        hook = {**body, "webhook_url": "http://127.0.0.1:9/hook"}
        r = httpx.post(f"{invoke}?async=true", json=hook)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_webhook_url"
        assert httpx.post(invoke, json=hook).status_code == 400
        stack.start_worker()
        tally = stack.tally([keep.json()["id"]], within_s=20)
        assert tally.completed == 1 and tally.usage_records == 1, tally
        r = httpx.post(f"{stack.url}/v1/jobs/{keep.json()['id']}/cancel")
        assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished"
        assert httpx.get(f"{stack.url}/v1/jobs/{job}").json()["status"] == "cancelled"
    finally:
        stack.close()
    assert job not in runs(stack.runs_file)  # the cancelled job never ran
