"""JobClient (gateway side) and WorkerHost (worker side) over a real nats-server, with a small real handler."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ember.bus.client import JobClient, JobRefused, StreamTiming
from ember.bus.connection import connect
from ember.bus.errors import NoWorkerError, WorkerLostError
from ember.bus.messages import ErrorInfo, JobStatus, Modality, TextJob, Usage
from ember.bus.worker import JobHandler, ReplySink, WorkerHost


class SpellHandler(JobHandler):
    """Streams the prompt back one character per chunk, ``delay`` apart; 'fail' prompts are refused."""

    modality = Modality.TEXT
    max_batch = 4

    def __init__(self, model: str, delay: float = 0.0) -> None:
        self.model = model
        self.delay = delay
        self.handled: list[str] = []
        self.cancelled: set[str] = set()

    async def handle(self, job: TextJob, sink: ReplySink) -> None:
        assert job.prompt is not None
        if job.prompt == "fail":
            error = ErrorInfo(status=400, type="invalid_request_error", code="nope", message="refused")
            await sink.failed(error)
            return
        self.handled.append(job.request_id)
        await sink.accepted(len(job.prompt))
        for ch in job.prompt:
            if job.request_id in self.cancelled:
                await sink.chunk(status=JobStatus.FINISHED_ABORTED)
                return
            await asyncio.sleep(self.delay)
            await sink.chunk(ch, [ord(ch)])
        await sink.chunk(status=JobStatus.FINISHED_STOPPED, usage=Usage(prompt_tokens=1, completion_tokens=1))

    def cancel(self, request_id: str) -> None:
        self.cancelled.add(request_id)


def job(model: str, prompt: str) -> TextJob:
    return TextJob(request_id=uuid.uuid4().hex, model=model, prompt=prompt)


@pytest.fixture
def model() -> str:
    return f"spell-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(nats_url: str):
    nc = await connect(nats_url, name="test-gateway")
    c = JobClient(nc, timing=StreamTiming(idle_probe_s=0.2, ping_timeout_s=0.5, max_missed_pings=2))
    await c.start()
    yield c
    await c.stop()
    await nc.close()


async def start_host(nats_url: str, handler: JobHandler) -> WorkerHost:
    nc = await connect(nats_url, name="test-worker")
    host = WorkerHost(nc, handler, announce_every_s=0.2)
    await host.start()
    return host


async def collect(client: JobClient, j: TextJob) -> str:
    stream = await client.submit(j)
    await stream.wait_accepted(5)
    return "".join([c.text async for c in stream])


async def test_chunks_arrive_in_order_with_the_final_status(client: JobClient, nats_url: str, model: str) -> None:
    host = await start_host(nats_url, SpellHandler(model))
    try:
        stream = await client.submit(job(model, "hello"))
        accepted = await stream.wait_accepted(5)
        assert accepted.worker_id == host.worker_id and accepted.prompt_tokens == 5
        chunks = [c async for c in stream]
        assert "".join(c.text for c in chunks) == "hello"
        assert [c.seq for c in chunks] == list(range(6))
        assert chunks[-1].status == JobStatus.FINISHED_STOPPED and chunks[-1].usage is not None
    finally:
        await host.stop()
        await host.nc.close()


async def test_no_worker_is_reported_at_once_not_after_a_timeout(client: JobClient, model: str) -> None:
    stream = await client.submit(job(model, "x"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(NoWorkerError):
        await stream.wait_accepted(30)
    assert loop.time() - started < 2.0


async def test_a_refused_job_carries_the_workers_error(client: JobClient, nats_url: str, model: str) -> None:
    host = await start_host(nats_url, SpellHandler(model))
    try:
        stream = await client.submit(job(model, "fail"))
        with pytest.raises(JobRefused) as e:
            await stream.wait_accepted(5)
        assert e.value.failed.error.code == "nope" and e.value.failed.error.status == 400
        assert await collect(client, job(model, "ok")) == "ok"  # and the worker still serves
    finally:
        await host.stop()
        await host.nc.close()


async def test_workers_of_a_queue_group_share_the_load(client: JobClient, nats_url: str, model: str) -> None:
    handlers = [SpellHandler(model), SpellHandler(model)]
    hosts = [await start_host(nats_url, h) for h in handlers]
    try:
        results = await asyncio.gather(*(collect(client, job(model, f"j{i}")) for i in range(40)))
        assert results == [f"j{i}" for i in range(40)]
        counts = [len(h.handled) for h in handlers]
        assert sum(counts) == 40 and min(counts) >= 5, counts
    finally:
        for h in hosts:
            await h.stop()
            await h.nc.close()


async def test_cancel_reaches_the_worker_that_runs_the_job(client: JobClient, nats_url: str, model: str) -> None:
    handler = SpellHandler(model, delay=0.05)
    host = await start_host(nats_url, handler)
    try:
        j = job(model, "a" * 100)
        stream = await client.submit(j)
        await stream.wait_accepted(5)
        async for _ in stream:
            break
        await stream.cancel()
        for _ in range(50):
            if j.request_id in handler.cancelled:
                break
            await asyncio.sleep(0.02)
        assert j.request_id in handler.cancelled
    finally:
        await host.stop()
        await host.nc.close()


async def test_a_worker_that_vanishes_mid_stream_is_noticed(client: JobClient, nats_url: str, model: str) -> None:
    host = await start_host(nats_url, SpellHandler(model, delay=0.05))
    stream = await client.submit(job(model, "b" * 200))
    await stream.wait_accepted(5)
    received = []
    with pytest.raises(WorkerLostError):
        async for chunk in stream:
            received.append(chunk)
            if len(received) == 3:
                await host.nc.close()  # the connection drops, as when the process is killed
    assert len(received) >= 3


async def test_announcements_fill_the_registry_and_leaving_empties_it(
    client: JobClient, nats_url: str, model: str
) -> None:
    host = await start_host(nats_url, SpellHandler(model))
    for _ in range(50):
        if model in client.registry.models():
            break
        await asyncio.sleep(0.02)
    assert [w.worker_id for w in client.registry.models()[model]] == [host.worker_id]
    await host.stop()
    await host.nc.close()
    for _ in range(50):
        if model not in client.registry.models():
            break
        await asyncio.sleep(0.02)
    assert model not in client.registry.models()


async def test_a_malformed_job_gets_an_error_and_the_worker_survives(
    client: JobClient, nats_url: str, model: str
) -> None:
    from ember.bus import subjects
    from ember.bus.messages import JobFailed, decode_reply

    host = await start_host(nats_url, SpellHandler(model))
    try:
        reply = await client.nc.request(subjects.jobs("text", model), b'{"v": 1, "kind": "text"}', timeout=5)
        failed = decode_reply(reply.data)
        assert isinstance(failed, JobFailed) and failed.error.status == 400
        assert await collect(client, job(model, "still here")) == "still here"
    finally:
        await host.stop()
        await host.nc.close()


async def test_no_responders_clears_the_models_stale_registry_entries(client: JobClient, model: str) -> None:
    from ember.bus.messages import WorkerInfo

    # An announcement from a worker that has since died without saying goodbye.
    client.registry.update(WorkerInfo(worker_id="ghost", modality=Modality.TEXT, model=model, max_batch=1))
    assert model in client.registry.models()
    stream = await client.submit(job(model, "x"))
    with pytest.raises(NoWorkerError):
        await stream.wait_accepted(5)
    assert model not in client.registry.models()
