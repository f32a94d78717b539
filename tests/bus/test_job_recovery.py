"""Deadlines, stalls, early cancels and probes between JobClient and WorkerHost, over a real nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from ember.bus import subjects
from ember.bus.client import JobClient, StreamTiming
from ember.bus.connection import connect, sync
from ember.bus.errors import DeadlineExceededError, NoWorkerError, ReplyTimeoutError, WorkerStalledError
from ember.bus.messages import CancelJob, JobProbe, JobStatus, Modality, TextJob, decode_job_state, encode
from ember.bus.worker import WorkerHost
from tests.bus.test_job_flow import SpellHandler


class StuckHandler(SpellHandler):
    """A worker whose event loop answers while its engine has been inside one step for a long time."""

    def stalled_s(self) -> float:
        return 120.0


@pytest.fixture
async def client(nats_url: str):
    nc = await connect(nats_url, name="test-gateway")
    timing = StreamTiming(
        idle_probe_s=0.2, probe_timeout_s=0.5, max_missed_probes=2, stall_limit_s=5.0, deadline_grace_s=0.3
    )
    c = JobClient(nc, timing=timing)
    await c.start()
    yield c
    await c.stop()
    await nc.close()


async def start_host(nats_url: str, handler: SpellHandler, client: JobClient) -> WorkerHost:
    host = WorkerHost(await connect(nats_url, name="test-worker"), handler, announce_every_s=0.2)
    await host.start()
    while not client.registry.serving(Modality.TEXT, handler.model):  # noqa: ASYNC110 (the registry has no event)
        await asyncio.sleep(0.02)
    return host


async def stop_host(host: WorkerHost) -> None:
    await host.stop(grace_s=1.0)
    await host.nc.close()


async def test_a_job_past_its_deadline_is_stopped_on_the_worker_and_fails(
    client: JobClient, nats_url: str, model: str
) -> None:
    handler = SpellHandler(model, delay=0.1)
    host = await start_host(nats_url, handler, client)
    try:
        j = TextJob(request_id=uuid.uuid4().hex, model=model, prompt="x" * 100, deadline=time.time() + 0.6)
        stream = await client.submit(j)
        await stream.wait_accepted(5)
        started = time.monotonic()
        got = []
        with pytest.raises(DeadlineExceededError):
            async for chunk in stream:
                got.append(chunk)
        assert time.monotonic() - started < 2.0
        assert 0 < len(got) < 100
        assert j.request_id in handler.cancelled  # the worker's own timer stopped it
    finally:
        await stop_host(host)


async def test_a_job_already_past_its_deadline_is_refused(client: JobClient, nats_url: str, model: str) -> None:
    host = await start_host(nats_url, SpellHandler(model), client)
    try:
        j = TextJob(request_id=uuid.uuid4().hex, model=model, prompt="late", deadline=time.time() - 1)
        stream = await client.submit(j)
        with pytest.raises(Exception) as e:
            await stream.wait_accepted(5)
        assert e.value.failed.error.code == "deadline_exceeded"
    finally:
        await stop_host(host)


async def test_a_worker_stuck_in_one_step_fails_its_jobs(client: JobClient, nats_url: str, model: str) -> None:
    host = await start_host(nats_url, StuckHandler(model, delay=30), client)
    try:
        stream = await client.submit(TextJob(request_id=uuid.uuid4().hex, model=model, prompt="stuck"))
        await stream.wait_accepted(5)
        started = time.monotonic()
        with pytest.raises(WorkerStalledError):
            async for _ in stream:
                pass
        assert time.monotonic() - started < 2.0
    finally:
        await stop_host(host)


async def test_a_job_cancelled_before_it_arrives_never_runs(client: JobClient, nats_url: str, model: str) -> None:
    """What a gateway that gave up on a slow worker relies on: its cancel overtakes the job."""
    handler = SpellHandler(model)
    host = await start_host(nats_url, handler, client)
    try:
        j = TextJob(request_id=uuid.uuid4().hex, model=model, prompt="never")
        await client.send_cancel(host.worker_id, j.request_id)
        await sync(client.nc)
        stream = await client.submit(j)
        with pytest.raises(ReplyTimeoutError):
            await stream.wait_accepted(1.5)
        assert j.request_id not in handler.handled
        # ...and a job of another id right after runs as usual.
        other = await client.submit(TextJob(request_id=uuid.uuid4().hex, model=model, prompt="ok"))
        await other.wait_accepted(5)
        assert "".join([c.text async for c in other]) == "ok"
    finally:
        await stop_host(host)


async def test_a_probe_resends_what_the_gateway_lacks(client: JobClient, nats_url: str, model: str) -> None:
    """The worker keeps a job's replies: asked from seq 2 on, it publishes 2.. again to the job's reply subject."""
    host = await start_host(nats_url, SpellHandler(model), client)
    try:
        j = TextJob(request_id=uuid.uuid4().hex, model=model, prompt="abcd")
        stream = await client.submit(j)
        await stream.wait_accepted(5)
        first = [c async for c in stream]
        assert [c.seq for c in first] == [0, 1, 2, 3, 4] and first[-1].status == JobStatus.FINISHED_STOPPED

        inbox = client.nc.new_inbox()
        sub = await client.nc.subscribe(inbox)
        # A stand-in for the reply subject: point the job's log entry at our inbox.
        logged = host.replies.get(j.request_id)
        assert logged is not None
        logged.reply = inbox
        probe = JobProbe(request_id=j.request_id, next_seq=2)
        answer = decode_job_state(
            (await client.nc.request(subjects.worker_probe(host.worker_id), encode(probe), timeout=2)).data
        )
        assert answer.known and answer.finished and answer.sent == 5 and answer.resent
        resent = [await sub.next_msg(2) for _ in range(3)]
        assert [m.data for m in resent] == [e for pos, e in logged.entries if pos >= 2]

        unknown = JobProbe(request_id="nope", next_seq=0)
        answer = decode_job_state(
            (await client.nc.request(subjects.worker_probe(host.worker_id), encode(unknown), timeout=2)).data
        )
        assert not answer.known and not answer.resent
        await client.nc.publish(subjects.worker_cancel(host.worker_id), encode(CancelJob(request_id="nope")))
    finally:
        await stop_host(host)


class SwitchableHandler(SpellHandler):
    """An engine we can declare stuck (inside one step for a long time) and moving again."""

    stuck_for = 0.0

    def stalled_s(self) -> float:
        return self.stuck_for


async def test_a_stuck_worker_leaves_the_rotation_until_its_engine_moves(
    client: JobClient, nats_url: str, model: str
) -> None:
    handler = SwitchableHandler(model)
    host = WorkerHost(await connect(nats_url, name="test-worker"), handler, announce_every_s=0.1, stall_limit_s=1.0)
    await host.start()
    try:
        while not client.registry.serving(Modality.TEXT, model):  # noqa: ASYNC110 (the registry has no event)
            await asyncio.sleep(0.02)
        handler.stuck_for = 5.0
        started = time.monotonic()
        while client.registry.serving(Modality.TEXT, model):
            assert time.monotonic() - started < 2.0, "the stuck worker still announces itself"
            await asyncio.sleep(0.02)
        assert host.stalled
        stream = await client.submit(TextJob(request_id=uuid.uuid4().hex, model=model, prompt="x"))
        with pytest.raises(NoWorkerError):  # not queued behind a stuck engine: nobody takes it
            await stream.wait_accepted(5)

        handler.stuck_for = 0.0
        while not client.registry.serving(Modality.TEXT, model):
            assert time.monotonic() - started < 5.0, "the worker did not come back"
            await asyncio.sleep(0.02)
        again = await client.submit(TextJob(request_id=uuid.uuid4().hex, model=model, prompt="back"))
        await again.wait_accepted(5)
        assert "".join([c.text async for c in again]) == "back"
    finally:
        await stop_host(host)
