"""The bus side of every worker: take jobs, answer pings, probes, cancels and discovery.

A runtime plugs in a ``JobHandler``; ``WorkerHost`` does the NATS part the same way for every modality::

    start()   subscribe (jobs sent to this worker, jobs in the model's queue group, cancel, ping, probe,
              discover), wait until the server has the subscriptions, announce, heartbeat; a job sent once
              start() returns finds this worker
    <job>     decode -> handler.handle(job, sink) in its own task; a bad message gets JobFailed, not a crash;
              a job past its deadline is aborted; a job cancelled before it arrived never starts
    <probe>   the job's state, and its replies from the gateway's next seq sent again (``ReplyLog``); asked to,
              the job given up if it has not started, for the gateway to send it to a worker with room
    stop()    announce leaving, stop taking jobs, let running ones finish (up to a grace period), close
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pydantic import ValidationError

from ember.bus import subjects
from ember.bus.connection import sync
from ember.bus.messages import (
    JOB_MODALITY,
    ErrorInfo,
    Job,
    JobAccepted,
    JobFailed,
    JobState,
    JobStatus,
    Modality,
    StreamReply,
    TextChunk,
    TokenLogprob,
    Usage,
    WireVersionError,
    WorkerInfo,
    decode_cancel,
    decode_job,
    decode_probe,
    encode,
)
from ember.bus.metrics import worker_metrics_page
from ember.bus.reply_log import ACCEPTED, ReplyLog
from ember.bus.tasks import cancel_and_wait

log = logging.getLogger("ember.worker")

R = TypeVar("R", bound=StreamReply)


class ReplySink:
    """Sends one job's replies, numbering the chunks; ignores sends after the final one.

    Every message also goes to the worker's ``ReplyLog`` first, so a publish that fails or is lost (NATS
    restarting) can be sent again when the gateway probes the job; a failed publish is therefore not an error.
    """

    def __init__(self, nc: NATS, reply: str, request_id: str, worker_id: str, log: ReplyLog | None = None) -> None:
        self._nc = nc
        self._reply = reply
        self.request_id = request_id
        self.worker_id = worker_id
        self._log = log
        self._seq = 0
        self.closed = False
        self._received = time.perf_counter()

    async def _publish(self, position: int, data: bytes, *, numbered: bool = False, final: bool = False) -> None:
        if self._log is not None:
            self._log.record(self.request_id, position, data, numbered=numbered, final=final)
        try:
            await self._nc.publish(self._reply, data)
        except nats.errors.Error as e:  # reconnecting; the log has it for the gateway's probe
            log.info("reply %d of %s not sent now (%s); kept for a resend", position, self.request_id, e)

    async def accepted(self, prompt_tokens: int, max_tokens: int | None = None) -> None:
        msg = JobAccepted(
            request_id=self.request_id, worker_id=self.worker_id, prompt_tokens=prompt_tokens, max_tokens=max_tokens
        )
        await self._publish(ACCEPTED, encode(msg))

    async def failed(self, error: ErrorInfo) -> None:
        """The job's last message, before or after acceptance."""
        if self.closed:
            return
        self.closed = True
        msg = JobFailed(request_id=self.request_id, worker_id=self.worker_id, error=error)
        await self._publish(self._seq, encode(msg), final=True)

    async def send(self, kind: type[R], status: JobStatus = JobStatus.RUNNING, **fields: Any) -> None:
        """Send one numbered reply of any modality; a finished ``status`` makes it the last."""
        if self.closed:
            return
        self.closed = status.finished
        msg = kind(
            request_id=self.request_id,
            seq=self._seq,
            status=status,
            worker_ms=(time.perf_counter() - self._received) * 1000 if status.finished else None,
            **fields,
        )
        self._seq += 1
        await self._publish(msg.seq, encode(msg), numbered=True, final=status.finished)

    async def chunk(
        self,
        text: str = "",
        token_ids: list[int] | None = None,
        *,
        logprobs: list[TokenLogprob] | None = None,
        status: JobStatus = JobStatus.RUNNING,
        usage: Usage | None = None,
    ) -> None:
        await self.send(TextChunk, status, text=text, token_ids=token_ids or [], logprobs=logprobs, usage=usage)


class JobHandler(abc.ABC):
    """What a runtime implements to serve one model on the bus."""

    modality: Modality
    model: str
    max_batch: int
    context_length: int | None = None

    @abc.abstractmethod
    async def handle(self, job: Any, sink: ReplySink) -> None:
        """Run one job to the end, sending accepted/chunks/failed through ``sink``; must not raise."""

    @abc.abstractmethod
    def cancel(self, request_id: str) -> None:
        """Stop a job early (its client went away); its final chunk says FINISHED_ABORTED."""

    async def release(self, request_id: str) -> bool:
        """Give a job up if it has not started (still waiting for a place, nothing sent but the acceptance): its
        ``handle`` then ends without sending anything more, and the gateway sends the job to another worker.
        False where it started, ended, is unknown, or the runtime cannot tell (the default)."""
        return False

    def load(self) -> tuple[int, int]:
        """(running, waiting) jobs, for announcements."""
        return (0, 0)

    def stalled_s(self) -> float:
        """Seconds the engine has been inside its current step (0 between steps), for probes: a worker whose
        event loop answers while its engine is stuck must not look healthy."""
        return 0.0

    def ttft_p90_s(self) -> float | None:
        """p90 of recent jobs' time from arrival to first output, for announcements (the scaler's latency signal);
        None where the runtime does not measure it."""
        return None

    def close(self) -> None:
        """Release what the handler holds of its own (threads, pools); called once, after serving ended."""
        return None

    def metrics(self) -> Iterable[Metric]:
        """The handler's metric families for the worker's metrics page: running and waiting jobs here; runtimes
        add their engine's (read when scraped, so the engine's hot path counts in plain ints)."""
        running, waiting = self.load()
        yield GaugeMetricFamily("ember_worker_requests_running", "Jobs the engine is running.", value=running)
        yield GaugeMetricFamily(
            "ember_worker_requests_waiting", "Jobs accepted and waiting for a place.", value=waiting
        )


def internal_error(e: BaseException) -> ErrorInfo:
    return ErrorInfo(status=500, type="server_error", code="internal_error", message=f"worker failed: {e}")


def deadline_error() -> ErrorInfo:
    return ErrorInfo(status=504, type="server_error", code="deadline_exceeded", message="the job ran past its deadline")


# Cancels that arrived before their job (the gateway gave up on one worker and sent the job to another) are
# remembered this long, so the job is dropped when it does arrive rather than run for nobody.
EARLY_CANCEL_TTL_S = 120.0


@dataclass
class WorkerHost:
    nc: NATS
    handler: JobHandler
    worker_id: str = field(default_factory=lambda: f"w-{uuid.uuid4().hex[:12]}")
    announce_every_s: float = 1.0
    # An engine inside one step for longer has stalled: the worker leaves the rotation until the step ends.
    stall_limit_s: float = 30.0
    replies: ReplyLog = field(default_factory=ReplyLog)
    # More families for the metrics page than the handler's: a device group's memory shares (device_group).
    extra_metrics: Callable[[], Iterable[Metric]] | None = None
    _job_subs: list[Subscription] = field(default_factory=list, init=False)
    _subs: list[Subscription] = field(default_factory=list, init=False)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)
    _releases: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _early_cancels: dict[str, float] = field(default_factory=dict, init=False)
    stalled: bool = field(default=False, init=False)
    _heartbeat: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        h = self.handler
        sub = self.nc.subscribe
        await self._take_jobs()
        self._subs = [
            await sub(subjects.worker_cancel(self.worker_id), cb=self._on_cancel),
            await sub(subjects.worker_ping(self.worker_id), cb=self._on_ping),
            await sub(subjects.worker_probe(self.worker_id), cb=self._on_probe),
            await sub(subjects.WORKERS_DISCOVER, cb=self._on_discover),
            await sub(subjects.METRICS, cb=self._on_metrics),
        ]
        # Announce and return only once the server has the subscriptions: a gateway may send a job the moment
        # either happens, on its own connection, and NATS answers "no responders" to one that comes first.
        await sync(self.nc)
        await self.announce()
        self._heartbeat = asyncio.create_task(self._announce_forever())
        log.info("worker %s serving %s model %r", self.worker_id, h.modality, h.model)

    async def _take_jobs(self) -> None:
        h = self.handler
        group = subjects.queue_group(h.modality, h.model)
        self._job_subs = [
            # Gateways send to a worker they know is alive; the queue group is for those that know none yet.
            await self.nc.subscribe(subjects.worker_jobs(self.worker_id), cb=self._on_job),
            await self.nc.subscribe(subjects.jobs(h.modality, h.model), queue=group, cb=self._on_job),
        ]

    async def _leave_rotation(self) -> None:
        for s in self._job_subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._job_subs.clear()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Leave the queue group first so no new job arrives, then let running jobs finish."""
        # Ended, not just cancelled: a beat still running could announce the worker after it said it was leaving.
        await cancel_and_wait(self._heartbeat)
        with contextlib.suppress(Exception):
            await self.announce(leaving=True)
        await self._leave_rotation()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks.values()), timeout=grace_s)
            for rid, task in list(self._tasks.items()):
                if task in pending:
                    self.handler.cancel(rid)
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for s in self._subs:
            with contextlib.suppress(Exception):
                await s.unsubscribe()
        self._subs.clear()

    async def announce(self, leaving: bool = False) -> None:
        h = self.handler
        running, waiting = h.load()
        info = WorkerInfo(
            worker_id=self.worker_id,
            modality=h.modality,
            model=h.model,
            context_length=h.context_length,
            max_batch=h.max_batch,
            running=running,
            waiting=waiting,
            leaving=leaving,
            interval_s=self.announce_every_s,
            ttft_p90_s=h.ttft_p90_s(),
        )
        await self.nc.publish(subjects.WORKERS_ANNOUNCE, encode(info))

    async def _announce_forever(self) -> None:
        while True:
            await asyncio.sleep(self.announce_every_s)
            try:
                if await self._watch_engine():
                    await self.announce()
            except Exception as e:  # a reconnecting client; the next beat will do
                log.debug("announce failed: %s", e)

    async def _watch_engine(self) -> bool:
        """Leave the rotation while the engine is stuck in one step, and come back when it moves; True if the
        worker takes jobs (and so announces itself)."""
        stalled = self.handler.stalled_s() > self.stall_limit_s
        if stalled and not self.stalled:
            log.error("engine stuck in one step for over %.0fs: leaving the rotation", self.stall_limit_s)
            self.stalled = True
            await self.announce(leaving=True)
            await self._leave_rotation()
        elif not stalled and self.stalled:
            log.warning("engine moving again: back in the rotation")
            await self._take_jobs()
            await sync(self.nc)
            self.stalled = False
        return not self.stalled

    async def _on_job(self, msg: Msg) -> None:
        if not msg.reply:
            log.warning("dropping a job with no reply subject")
            return
        try:
            job = decode_job(msg.data)
        except (ValidationError, WireVersionError, ValueError) as e:
            error = ErrorInfo(status=400, type="invalid_request_error", code="bad_job", message=f"bad job: {e}")
            await ReplySink(self.nc, msg.reply, "?", self.worker_id).failed(error)
            return
        if self._early_cancels.pop(job.request_id, None) is not None or job.request_id in self._tasks:
            log.info("dropping job %s: cancelled before it arrived, or already running here", job.request_id)
            return
        self.replies.open(job.request_id, msg.reply)
        sink = ReplySink(self.nc, msg.reply, job.request_id, self.worker_id, self.replies)
        if JOB_MODALITY[job.kind] != self.handler.modality:
            kind = job.kind
            error = ErrorInfo(
                status=400,
                type="invalid_request_error",
                code="bad_job",
                message=f"a {kind} job sent to a {self.handler.modality} worker",
            )
            await sink.failed(error)
            return
        if job.deadline is not None and job.deadline <= time.time():
            await sink.failed(deadline_error())
            return
        # Callbacks of one subscription run one after another: hand the job to its own task at once.
        task = asyncio.create_task(self._run(job, sink))
        self._tasks[job.request_id] = task

    async def _run(self, job: Job, sink: ReplySink) -> None:
        timer = None
        if job.deadline is not None:
            # The engine ends the job as aborted; the gateway, past the same deadline, tells its client why.
            timer = asyncio.get_running_loop().call_later(
                max(0.0, job.deadline - time.time()), self.handler.cancel, job.request_id
            )
        try:
            await self.handler.handle(job, sink)
        except Exception as e:
            log.exception("job %s failed", job.request_id)
            with contextlib.suppress(Exception):
                await sink.failed(internal_error(e))
        finally:
            if timer is not None:
                timer.cancel()
            self._tasks.pop(job.request_id, None)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            request_id = decode_cancel(msg.data).request_id
        except (ValidationError, WireVersionError, ValueError) as e:
            log.warning("ignoring a bad cancel: %s", e)
            return
        if request_id in self._tasks:
            self.handler.cancel(request_id)
        elif self.replies.get(request_id) is None:
            now = time.monotonic()
            self._early_cancels = {r: t for r, t in self._early_cancels.items() if now - t < EARLY_CANCEL_TTL_S}
            self._early_cancels[request_id] = now

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, b"pong")

    async def _on_probe(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            probe = decode_probe(msg.data)
        except (ValidationError, WireVersionError, ValueError) as e:
            log.warning("ignoring a bad probe: %s", e)
            return
        job = self.replies.get(probe.request_id)
        if probe.release and job is not None:
            self._release(probe.request_id)
        resent = False
        if job is not None and probe.resend:
            lost = self.replies.since(probe.request_id, probe.next_seq)
            if lost:
                resent = True
                for data in lost:
                    await self.nc.publish(job.reply, data)
        state = JobState(
            request_id=probe.request_id,
            known=job is not None,
            finished=job is not None and job.finished_at is not None,
            sent=job.sent if job is not None else 0,
            resent=resent,
            stalled_s=self.handler.stalled_s(),
            release=job.release if job is not None else "",
        )
        # The resent replies go out before the answer: the gateway may read them as soon as it has it.
        await self.nc.publish(msg.reply, encode(state))

    def _release(self, request_id: str) -> None:
        """Start giving up a job that has sent nothing but its acceptance; the engine decides at its next step,
        so the answer to this probe says "pending" and a later probe's says how it went."""
        job = self.replies.get(request_id)
        if job is None or job.finished_at is not None or job.sent or job.release in ("pending", "released"):
            return
        if request_id not in self._tasks:
            return
        job.release = "pending"

        async def release() -> None:
            try:
                released = await self.handler.release(request_id)
            except Exception:
                log.exception("releasing job %s failed", request_id)
                released = False
            if released:
                self.replies.released(request_id)
                log.info("job %s released before it started, for a worker with room", request_id)
            elif job.release == "pending":
                job.release = "refused"

        task = asyncio.create_task(release())
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _on_discover(self, msg: Msg) -> None:
        await self.announce()

    async def _on_metrics(self, msg: Msg) -> None:
        """A gateway gathering every worker's metrics: this process's page, named by the worker's id."""
        if not msg.reply:
            return
        try:
            families = list(self.handler.metrics())
            if self.extra_metrics is not None:
                families += self.extra_metrics()
            page = worker_metrics_page(families)
        except Exception as e:  # a failing collector must not take the worker's subscriptions down
            log.warning("metrics failed: %s", e)
            return
        await self.nc.publish(msg.reply, page, headers={subjects.WORKER_HEADER: self.worker_id})


def stop_event(stop: asyncio.Event | None) -> asyncio.Event:
    """``stop`` itself, or (None) a new event that SIGINT and SIGTERM set: how a worker process is told to leave."""
    if stop is not None:
        return stop
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(host: WorkerHost, what: str, stop: asyncio.Event | None = None, drain_timeout_s: float = 10.0) -> None:
    """Serve ``host``'s jobs until ``stop`` (or a signal), then leave the queue group, let running jobs finish for
    up to ``drain_timeout_s`` (the rest are aborted cleanly) and drain the connection."""
    stop = stop_event(stop)
    try:
        await host.start()
        print(f"ember worker: {what} ready ({host.worker_id})", flush=True)
        await stop.wait()
    finally:
        await host.stop(drain_timeout_s)
        await host.nc.drain()
