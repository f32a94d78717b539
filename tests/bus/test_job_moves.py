"""Jobs queued on a busy worker move to one that came up after them (a scale-up), over a real nats-server.

The gateway asks a job's worker to release it when the job has sent nothing yet and another worker has room;
the worker gives it up only if it has not started, and the gateway sends it on. Every job still runs exactly
once and its client sees one whole answer."""

from __future__ import annotations

import asyncio
import uuid

from ember.bus.client import JobClient, StreamTiming
from ember.bus.connection import connect
from ember.bus.messages import JobStatus, Modality, TextJob, Usage
from ember.bus.worker import JobHandler, ReplySink, WorkerHost


class QueueHandler(JobHandler):
    """Runs ``max_batch`` jobs at a time, spelling the prompt back a character per ``delay``; the others wait
    their turn in order and can be released while they wait."""

    modality = Modality.TEXT

    def __init__(self, model: str, max_batch: int = 1, delay: float = 0.05) -> None:
        self.model = model
        self.max_batch = max_batch
        self.delay = delay
        self._places = asyncio.Semaphore(max_batch)
        self._waiting: dict[str, asyncio.Event] = {}
        self.running = 0
        self.ran: list[str] = []
        self.released: list[str] = []

    async def handle(self, job: TextJob, sink: ReplySink) -> None:
        assert job.prompt is not None
        await sink.accepted(len(job.prompt))
        leave = self._waiting[job.request_id] = asyncio.Event()
        place = asyncio.create_task(self._places.acquire())
        left = asyncio.create_task(leave.wait())
        await asyncio.wait([place, left], return_when=asyncio.FIRST_COMPLETED)
        del self._waiting[job.request_id]
        left.cancel()
        if not place.done() or place.cancelled():
            place.cancel()
            return  # released: nothing more is sent
        self.running += 1
        self.ran.append(job.request_id)
        try:
            for ch in job.prompt:
                await asyncio.sleep(self.delay)
                await sink.chunk(ch, [ord(ch)])
            await sink.chunk(status=JobStatus.FINISHED_STOPPED, usage=Usage(prompt_tokens=1, completion_tokens=1))
        finally:
            self.running -= 1
            self._places.release()

    async def release(self, request_id: str) -> bool:
        leave = self._waiting.get(request_id)
        if leave is None or leave.is_set():
            return False
        leave.set()
        self.released.append(request_id)
        return True

    def cancel(self, request_id: str) -> None:
        pass

    def load(self) -> tuple[int, int]:
        return self.running, len(self._waiting)


async def test_jobs_waiting_on_a_busy_worker_move_to_a_new_one_and_each_runs_once(nats_url: str) -> None:
    model = f"queue-{uuid.uuid4().hex[:8]}"
    nc = await connect(nats_url, name="test-gateway")
    client = JobClient(nc, timing=StreamTiming(idle_probe_s=0.2, probe_timeout_s=0.5))
    await client.start()
    hosts: list[WorkerHost] = []

    async def start(handler: QueueHandler) -> None:
        host = WorkerHost(await connect(nats_url, name="test-worker"), handler, announce_every_s=0.1)
        await host.start()
        hosts.append(host)

    try:
        old, new = QueueHandler(model), QueueHandler(model)
        await start(old)
        await client.discover()
        prompt = "abcdefghijklmnop"  # about 0.8 s a job
        streams = []
        for _ in range(4):
            stream = await client.submit(TextJob(request_id=uuid.uuid4().hex, model=model, prompt=prompt))
            await stream.wait_accepted(5)
            streams.append(stream)
        assert old.ran == [streams[0].request_id]  # the others wait behind it

        async def read(stream) -> str:  # type: ignore[no-untyped-def]
            return "".join([c.text async for c in stream])

        answers = asyncio.gather(*(read(s) for s in streams))
        await start(new)  # the scale-up
        assert await asyncio.wait_for(answers, 30) == [prompt] * 4
    finally:
        for host in hosts:
            await host.stop()
            await host.nc.close()
        await client.stop()
        await nc.close()

    moved = {s.request_id for s in streams if s.moves}
    assert moved and moved == set(old.released) and moved <= set(new.ran)
    assert streams[0].request_id not in moved  # it had started
    # Exactly once: each job ran on one worker only.
    assert sorted(old.ran + new.ran) == sorted(s.request_id for s in streams)
