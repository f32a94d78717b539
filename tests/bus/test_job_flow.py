"""JobClient (gateway side) and WorkerHost (worker side) over a real nats-server, with a small real handler."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from urllib.parse import urlsplit

import pytest
from nats.aio.msg import Msg

from ember.bus import subjects
from ember.bus.client import JobClient, JobRefused, StreamTiming
from ember.bus.connection import connect, sync
from ember.bus.errors import NoWorkerError, WorkerLostError
from ember.bus.messages import ErrorInfo, JobStatus, Modality, TextJob, Usage, decode_worker_info
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
async def client(nats_url: str):
    nc = await connect(nats_url, name="test-gateway")
    c = JobClient(nc, timing=StreamTiming(idle_probe_s=0.2, probe_timeout_s=0.5, max_missed_probes=2))
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
        # The gateway routes to the workers it has heard from: wait for both announcements.
        while len(client.registry.serving(Modality.TEXT, model)) < 2:  # noqa: ASYNC110 (the registry has no event)
            await asyncio.sleep(0.02)
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


# A worker takes jobs the moment WorkerHost.start returns, and the moment the gateway hears it announced: NATS
# answers "no responders" to a job that reaches the server before the worker's queue subscription. nats-py's
# flush() did not ensure that (it writes its PING ahead of the SUBs still queued for its flusher task);
# SlowLink widens that window enough to hit it every time, the loop over fresh workers meets it as it comes.

PING = b"PING\r\n"


class SlowLink:
    """A TCP relay in front of nats-server that is slow the way a busy server can be.

    Every byte a client sends arrives ``latency_s`` late, in order, and what follows a PING arrives ``hold_s``
    after the PING itself: the server answers the PING and only later gets to the rest of what was sent.
    The server's bytes to the client pass straight through.
    """

    def __init__(self, upstream: str, latency_s: float = 0.1, hold_s: float = 0.3) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self._upstream = (parts.hostname, parts.port)
        self.latency_s = latency_s
        self.hold_s = hold_s
        self._relays: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> SlowLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"nats://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Stop the pumps, not the relays: asyncio's server logs a relay task that ends cancelled as an error.
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        server_r, server_w = await asyncio.open_connection(*self._upstream)
        sent: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        pumps = [
            asyncio.create_task(self._receive(client_r, sent)),
            asyncio.create_task(self._deliver(sent, server_w)),
            asyncio.create_task(self._copy(server_r, client_w)),
        ]
        self._pumps.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._pumps.difference_update(pumps)
            for w in (client_w, server_w):
                w.close()
                with contextlib.suppress(OSError):
                    await w.wait_closed()
            self._relays.discard(relay)

    async def _receive(self, src: asyncio.StreamReader, sent: asyncio.Queue[tuple[float, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        while data := await src.read(65536):
            sent.put_nowait((loop.time(), data))

    async def _deliver(self, sent: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            at, data = await sent.get()
            await asyncio.sleep(at + self.latency_s - loop.time())
            head, ping, rest = data.partition(PING)
            while ping:
                dst.write(head + ping)
                await dst.drain()
                await asyncio.sleep(self.hold_s)
                head, ping, rest = rest.partition(PING)
            dst.write(head)
            await dst.drain()

    async def _copy(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()


async def test_sync_returns_once_other_connections_see_the_subscription(nats_url: str) -> None:
    async def answer(msg: Msg) -> None:
        await nc.publish(msg.reply, b"here")

    async with SlowLink(nats_url) as link:
        nc = await connect(link.url, name="slow-subscriber")
        other = await connect(nats_url, name="other")
        try:
            await nc.subscribe("ember.test.sync", cb=answer)
            await sync(nc)
            reply = await other.request("ember.test.sync", b"", timeout=5)  # NoRespondersError if too early
            assert reply.data == b"here"
        finally:
            await other.close()
            await nc.close()


async def test_a_job_sent_the_moment_start_returns_is_taken(client: JobClient, nats_url: str, model: str) -> None:
    async with SlowLink(nats_url) as link:
        host = await start_host(link.url, SpellHandler(model))
        try:
            assert await collect(client, job(model, "now")) == "now"  # NoWorkerError if start returned too early
        finally:
            await host.stop()
            await host.nc.close()


async def test_a_job_sent_the_moment_the_worker_is_announced_is_taken(
    client: JobClient, nats_url: str, model: str
) -> None:
    announced = asyncio.Event()

    async def on_announce(msg: Msg) -> None:
        if decode_worker_info(msg.data).model == model:
            announced.set()

    sub = await client.nc.subscribe(subjects.WORKERS_ANNOUNCE, cb=on_announce)
    async with SlowLink(nats_url) as link:
        nc = await connect(link.url, name="test-worker")
        host = WorkerHost(nc, SpellHandler(model), announce_every_s=0.2)
        starting = asyncio.create_task(host.start())
        try:
            await asyncio.wait_for(announced.wait(), 10)
            assert await collect(client, job(model, "announced")) == "announced"
        finally:
            await starting
            await sub.unsubscribe()
            await host.stop()
            await nc.close()


async def test_fresh_workers_take_a_job_sent_the_moment_start_returns(client: JobClient, nats_url: str) -> None:
    for i in range(50):
        model = f"fresh-{i}-{client.gateway_id}"
        host = await start_host(nats_url, SpellHandler(model))
        try:
            assert await collect(client, job(model, "x")) == "x", f"worker {i}"
        finally:
            await host.stop()
            await host.nc.close()
