"""Async jobs in-process on a real nats-server: the queue, the runner's state machine, cancels, Idempotency-Key and
webhooks. A lost worker is played by a raw pull on the job's consumer that never answers (tests/faults kills
real worker processes)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from nats.aio.client import Client as NATS

import ember
from ember._functions import function_def
from ember.bus.client import JobClient
from ember.bus.connection import connect
from ember.bus.messages import FunctionJob, Modality, UsageRecord, encode
from ember.config import Settings
from ember.functions import queue
from ember.functions.async_jobs import AsyncJobs, IdempotencyConflict, JobFinished
from ember.functions.jobs import FunctionJobRecord
from ember.functions.runner import QueuedJobs
from ember.functions.webhook import SIGNATURE_HEADER, WebhookRefused, check_url, verify
from ember.functions.worker import FunctionHandler, FunctionRuntime
from ember.usage import stream as usage_stream

SECRET = "test-webhook-secret-0123456789"
calls: list[str] = []
gate = asyncio.Event()
stopped: list[str] = []
stopped_now = asyncio.Event()


@ember.function(name="q.add")
async def add(a: int, b: int) -> int:
    calls.append(f"{a}+{b}")
    return a + b


@ember.function(name="q.held")
async def held(tag: str) -> str:
    """Runs until the test opens ``gate``."""
    calls.append(tag)
    try:
        await asyncio.wait_for(gate.wait(), 30)
    except asyncio.CancelledError:
        stopped.append(tag)
        stopped_now.set()
        raise
    return tag


def settings(**functions: Any) -> Settings:
    base = {"ack_wait_s": 1.0, "max_attempts": 2, "webhook_hosts": ["127.0.0.1"], "webhook_secret": SECRET}
    return Settings(functions={**base, "webhook_backoff_s": 0.05, **functions})


@dataclass
class Bench:
    """A connection, the gateway's AsyncJobs, and function workers started on demand."""

    nc: NATS
    jobs: AsyncJobs
    settings: Settings
    key_id: str = field(default_factory=lambda: f"key_{uuid.uuid4().hex[:8]}")
    workers: list[QueuedJobs] = field(default_factory=list)

    async def worker(self, fn: Any, **functions: Any) -> QueuedJobs:
        s = self.settings if not functions else settings(**functions)
        defn = function_def(fn)
        assert defn is not None
        handler = FunctionHandler(defn, FunctionRuntime(s, bus=None, blobs=None))
        w = await QueuedJobs.start(
            self.nc,
            self.jobs.store,
            s.functions,
            modality=Modality.FUNCTION,
            model=defn.name,
            executor=handler,
            worker_id=f"w-{uuid.uuid4().hex[:8]}",
            capacity=4,
        )
        self.workers.append(w)
        return w

    async def submit(self, name: str, value: dict[str, Any], **kw: Any) -> FunctionJobRecord:
        job = FunctionJob(request_id="req_x", model=name, input=value, timeout_s=30)
        return await self.jobs.submit(job, key_id=self.key_id, **kw)

    async def until(self, job_id: str, *states: str, within_s: float = 15.0) -> FunctionJobRecord:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            record = await self.jobs.get(job_id, self.key_id)
            if record is not None and record.status in states:
                return record
            await asyncio.sleep(0.02)
        raise TimeoutError(f"job {job_id} never reached {states}; last: {record}")

    async def usage(self) -> list[UsageRecord]:
        """Every usage record of this test's key, duplicates included."""
        return [rec async for _, rec in usage_stream.read(self.nc.jetstream(), key_id=self.key_id)]


@pytest.fixture
async def bench(nats_url: str) -> AsyncIterator[Bench]:
    calls.clear()
    stopped.clear()
    stopped_now.clear()
    gate.clear()
    nc = await connect(nats_url, name="test-async-jobs")
    js = nc.jetstream()
    await usage_stream.ensure_stream(js)
    s = settings()
    b = Bench(nc, await AsyncJobs.open(js, JobClient(nc), s.functions), s)
    yield b
    gate.set()
    for w in b.workers:
        await w.stop(grace_s=2)
    # Leave no job behind for the next test's workers of the same function.
    for name in ("q.add", "q.held"):
        await js.purge_stream(queue.STREAM, subject=queue.queue_subject(Modality.FUNCTION, name))
    await nc.drain()


async def lose_one_delivery(b: Bench, name: str, max_deliver: int) -> None:
    """A worker that takes the next job of ``name`` and dies without a word."""
    js = b.nc.jetstream()
    config = queue.consumer_config(Modality.FUNCTION, name, b.settings.functions.ack_wait_s, max_deliver)
    await js.add_consumer(queue.STREAM, config)
    sub = await js.pull_subscribe_bind(durable=config.durable_name, stream=queue.STREAM)
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.metadata.num_delivered >= 1
    await sub.unsubscribe()


async def test_a_job_runs_once_and_is_billed_once_under_its_id(bench: Bench) -> None:
    await bench.worker(add)
    record = await bench.submit("q.add", {"a": 2, "b": 3})
    assert record.status == "queued" and record.id.startswith("fnjob_")
    done = await bench.until(record.id, "succeeded")
    assert done.output == 5 and done.attempts == 1 and done.finished_at is not None
    (usage,) = await bench.usage()
    assert (usage.request_id, usage.model, usage.modality, usage.status) == (record.id, "q.add", "function", "ok")
    assert calls == ["2+3"]


async def test_a_lost_worker_s_job_runs_on_the_next_worker(bench: Bench) -> None:
    record = await bench.submit("q.add", {"a": 1, "b": 1})
    await lose_one_delivery(bench, "q.add", max_deliver=3)
    started = time.monotonic()
    await bench.worker(add)
    done = await bench.until(record.id, "succeeded")
    # Redelivered only once ack_wait_s (1 s) had passed since the lost delivery.
    assert done.output == 2 and time.monotonic() - started < 5
    assert calls == ["1+1"] and len(await bench.usage()) == 1


async def test_a_job_whose_workers_keep_dying_fails_after_max_attempts(bench: Bench) -> None:
    record = await bench.submit("q.add", {"a": 1, "b": 2})
    for _ in range(2):  # max_attempts = 2
        await lose_one_delivery(bench, "q.add", max_deliver=3)
    await bench.worker(add)
    failed = await bench.until(record.id, "failed")
    assert failed.error is not None and failed.error.code == "worker_lost" and failed.error.status == 503
    assert "lost 2 times" in failed.error.message
    assert calls == []  # the last delivery only records the failure
    assert [u.status for u in await bench.usage()] == ["worker_lost"]


async def test_a_message_of_a_finished_job_is_acknowledged_without_running(bench: Bench) -> None:
    w = await bench.worker(add)
    record = await bench.submit("q.add", {"a": 4, "b": 4})
    await bench.until(record.id, "succeeded")
    # The same job delivered again (its ack was lost, or a copy came past the duplicate window).
    queued = queue.QueuedJob(
        job_id=record.id,
        job=FunctionJob(request_id=record.id, model="q.add", input={"a": 4, "b": 4}),
        key_id=bench.key_id,
        created_at=record.created_at,
    )
    js = bench.nc.jetstream()
    await js.publish(queue.queue_subject("function", "q.add"), encode(queued), stream=queue.STREAM)
    info = await js.consumer_info(queue.STREAM, queue.consumer_name("function", "q.add"))
    deadline = time.monotonic() + 10
    while (info.num_pending or info.num_ack_pending) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        info = await js.consumer_info(queue.STREAM, queue.consumer_name("function", "q.add"))
    assert (info.num_pending, info.num_ack_pending, w.consumer.load()) == (0, 0, 0)
    assert calls == ["4+4"] and len(await bench.usage()) == 1


async def test_a_second_message_of_a_running_job_is_dropped(bench: Bench) -> None:
    await bench.worker(held)
    record = await bench.submit("q.held", {"tag": "once"})
    await bench.until(record.id, "running")
    queued = queue.QueuedJob(
        job_id=record.id,
        job=FunctionJob(request_id=record.id, model="q.held", input={"tag": "once"}),
        key_id=bench.key_id,
        created_at=record.created_at,
    )
    await bench.nc.jetstream().publish(queue.queue_subject("function", "q.held"), encode(queued), stream=queue.STREAM)
    await asyncio.sleep(0.5)
    gate.set()
    done = await bench.until(record.id, "succeeded")
    assert done.output == "once" and calls == ["once"] and len(await bench.usage()) == 1


async def test_an_idempotency_key_names_one_job(bench: Bench) -> None:
    first = await bench.submit("q.add", {"a": 5, "b": 5}, idempotency_key="order-17")
    again = await bench.submit("q.add", {"a": 5, "b": 5}, idempotency_key="order-17")
    other = await bench.submit("q.add", {"a": 5, "b": 5}, idempotency_key="order-18")
    assert first.id == again.id != other.id
    with pytest.raises(IdempotencyConflict):
        await bench.submit("q.add", {"a": 5, "b": 6}, idempotency_key="order-17")
    await bench.worker(add)
    await bench.until(first.id, "succeeded")
    await bench.until(other.id, "succeeded")
    assert calls == ["5+5", "5+5"] and len(await bench.usage()) == 2
    # A retry after the end gets the finished job, and runs nothing.
    assert (await bench.submit("q.add", {"a": 5, "b": 5}, idempotency_key="order-17")).output == 10
    assert len(calls) == 2


async def test_a_cancelled_queued_job_never_runs(bench: Bench) -> None:
    record = await bench.submit("q.add", {"a": 7, "b": 7})
    cancelled = await bench.jobs.cancel(record.id, bench.key_id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert await bench.jobs.cancel(record.id, "key_someone_else") is None
    w = await bench.worker(add)
    await asyncio.sleep(1.0)
    assert calls == [] and w.consumer.load() == 0
    assert (await bench.jobs.get(record.id, bench.key_id)).status == "cancelled"  # type: ignore[union-attr]
    assert [u.status for u in await bench.usage()] == ["cancelled"]


async def test_a_cancelled_running_job_is_stopped_on_its_worker(bench: Bench) -> None:
    await bench.worker(held)
    record = await bench.submit("q.held", {"tag": "stop-me"})
    await bench.until(record.id, "running")
    started = time.monotonic()
    await bench.jobs.cancel(record.id, bench.key_id)
    await asyncio.wait_for(stopped_now.wait(), 5)
    assert stopped == ["stop-me"] and time.monotonic() - started < 1.0
    assert (await bench.until(record.id, "cancelled")).output is None
    await asyncio.sleep(0.3)  # the worker's own end of the job (usage) comes after the stop
    assert [u.status for u in await bench.usage()] == ["cancelled"]
    assert (await bench.jobs.cancel(record.id, bench.key_id)).status == "cancelled"  # type: ignore[union-attr]


async def test_a_finished_job_cannot_be_cancelled(bench: Bench) -> None:
    await bench.worker(add)
    record = await bench.submit("q.add", {"a": 1, "b": 0})
    await bench.until(record.id, "succeeded")
    with pytest.raises(JobFinished):
        await bench.jobs.cancel(record.id, bench.key_id)


class Hooks(BaseHTTPRequestHandler):
    """Answers 500 to the first delivery and 200 after, keeping what it got."""

    got: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hooks.got.append((dict(self.headers), body))
        self.send_response(500 if len(Hooks.got) == 1 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_finished_job_s_webhook_is_signed_and_retried(bench: Bench) -> None:
    Hooks.got = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        await bench.worker(add)
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        record = await bench.submit("q.add", {"a": 20, "b": 22}, webhook_url=url)
        deadline = time.monotonic() + 10
        while (await bench.jobs.get(record.id, bench.key_id)).webhook_status != "delivered":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
    assert len(Hooks.got) == 2
    (headers, body), _ = Hooks.got[1], Hooks.got[0]
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify(SECRET, body + b" ", headers[SIGNATURE_HEADER])
    assert not verify("another-secret-0123456789", body, headers[SIGNATURE_HEADER])
    assert headers["Ember-Job-Id"] == record.id and headers["Ember-Delivery-Attempt"] == "2"
    payload = json.loads(body)
    assert (payload["id"], payload["status"], payload["output"]) == (record.id, "succeeded", 42)
    assert "key_id" not in payload


def test_webhook_urls_are_checked_against_the_allow_list() -> None:
    assert check_url("https://hooks.example.com:8443/x", ["hooks.example.com"])
    for url, hosts in [
        ("https://hooks.example.com/x", []),
        ("https://evil.example.com/x", ["hooks.example.com"]),
        ("ftp://hooks.example.com/x", ["hooks.example.com"]),
        ("https://user:pw@hooks.example.com/x", ["hooks.example.com"]),
        ("not a url", ["hooks.example.com"]),
    ]:
        with pytest.raises(WebhookRefused):
            check_url(url, hosts)


def test_webhooks_need_a_secret() -> None:
    with pytest.raises(ValueError, match="webhook_secret"):
        Settings(functions={"webhook_hosts": ["127.0.0.1"]})
