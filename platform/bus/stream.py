"""One job's replies as the gateway reads them: acceptance, then numbered replies in order, never waited for
forever.

The worker numbers its replies; core NATS may drop any of them (the gateway cut off from the server for a
moment, a restart) and nothing else would say so. So the stream
- puts replies back in order and drops the ones it already has (a resend may repeat some);
- probes the job's worker when the stream is quiet, when a gap stays open, or after a reconnect: the worker
  says where the job stands and sends again what the gateway is missing (``JobProbe`` / ``ReplyLog``);
- fails the job cleanly when the worker is gone (no responders), stops answering (missed probes), no longer
  holds the lost replies, has had its engine stuck in one step past the stall limit, when the job's deadline
  passes, or when the gateway's own NATS connection stays down past the outage limit.

Acceptance works the same way: a job goes to one live worker (``WorkerRouter``); a worker that does not accept
it and does not answer a probe is marked suspect and the job is sent, once, to another.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import nats.errors
from nats.aio.msg import Msg

from ember.bus import subjects
from ember.bus.errors import (
    BusUnavailableError,
    DeadlineExceededError,
    NoWorkerError,
    ReplyTimeoutError,
    WorkerLostError,
    WorkerStalledError,
)
from ember.bus.messages import (
    JOB_MODALITY,
    Job,
    JobAccepted,
    JobFailed,
    JobProbe,
    JobState,
    JobStatus,
    Reply,
    StreamReply,
    WireVersionError,
    decode_job_state,
    decode_reply,
    encode,
)

if TYPE_CHECKING:
    from ember.bus.client import JobClient

log = logging.getLogger("ember.bus.stream")

R = TypeVar("R", bound=StreamReply)


# The jobs the current gateway request has started, in order: its middleware sets a list here, and
# ``JobClient.submit`` appends each stream, so timings are taken for every route without each route's help.
request_jobs: contextvars.ContextVar[list[JobStream[Any]] | None] = contextvars.ContextVar(
    "ember_request_jobs", default=None
)


@dataclass
class JobTimeline:
    """When a job passed each hop, as time.perf_counter() readings (None: not yet), for the gateway's per-hop
    histograms and its Server-Timing headers."""

    published: float | None = None
    accepted: float | None = None
    first_reply: float | None = None
    last_reply: float | None = None


@dataclass(frozen=True)
class StreamTiming:
    """How the gateway watches a job, from submission to its last reply."""

    # Longest wait for a worker to accept (validate and queue) a job.
    accept_timeout_s: float = 30.0
    # A worker that has not accepted a job within this is probed; one that does not answer loses the job.
    accept_probe_s: float = 1.0
    # A stream quiet for this long makes the gateway probe the worker...
    idle_probe_s: float = 1.0
    # ...which must answer within this; no responders means it is gone at once.
    probe_timeout_s: float = 1.0
    # Unanswered probes in a row before the worker counts as lost (its event loop may be briefly busy).
    max_missed_probes: int = 3
    # A reply that skips ahead waits this long for the missing ones before the worker is asked for them.
    gap_wait_s: float = 0.25
    # A worker whose engine has been inside one step for longer has stalled (no step takes this long).
    stall_limit_s: float = 30.0
    # How long a job waits for this gateway's connection to NATS to come back before it fails.
    outage_limit_s: float = 30.0
    # Every job's deadline when its sender sets none.
    job_timeout_s: float = 600.0
    # How long after its deadline the gateway still waits for the worker's own ending of the job.
    deadline_grace_s: float = 2.0


class JobStream(Generic[R]):
    """The replies to one job, in order; iterate for them until the finished one.

    ``reply_type`` is what the caller expects (``TextChunk`` for text, ``StreamReply`` to take every kind);
    a reply of another kind is a protocol error.
    """

    def __init__(self, client: JobClient, job: Job, reply_type: type[R]) -> None:
        self._client = client
        self._job = job
        self._reply_type = reply_type
        self.request_id = job.request_id
        self.model = job.model
        self.modality = JOB_MODALITY[job.kind]
        self.accepted: JobAccepted | None = None
        # The worker the job was sent to (None: the model's queue group) and the reply subject of that attempt.
        self.target: str | None = None
        self._tried: frozenset[str] = frozenset()
        self._reply = ""
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._done = False
        self._next_seq = 0
        self._ahead: dict[int, StreamReply] = {}
        self._offline_since: float | None = None
        self._counted: str | None = None
        # A worker with room this job may move to (counted there) while its own worker is asked to release it.
        self._moving_to: str | None = None
        self.moves = 0
        self.timeline = JobTimeline()

    @property
    def worker_id(self) -> str | None:
        return self.accepted.worker_id if self.accepted is not None else self.target

    @property
    def deadline(self) -> float:
        assert self._job.deadline is not None
        return self._job.deadline

    # --- sending ----------------------------------------------------------------------------------------------

    async def publish(self, prefer: str | None = None, *, group: bool = False) -> None:
        """Send the job to a live worker (``prefer`` if it is one), or to the queue group if none is known (or
        ``group``: every worker this gateway knew of is gone, but one it has not heard from yet may serve)."""
        client = self._client
        self.close()
        self._reply = client.new_route(self._queue)
        modality = JOB_MODALITY[self._job.kind]
        target = None
        if prefer is not None and prefer not in self._tried and not client.router.is_suspect(prefer):
            target = next((w for w in client.registry.serving(modality, self.model) if w.worker_id == prefer), None)
        if target is None and not group:
            target = client.router.pick(modality, self.model, exclude=self._tried)
        self.target = target.worker_id if target is not None else None
        if self.target is not None:
            self._tried |= {self.target}
            client.router.started(self.target)
            self._counted = self.target
            subject = subjects.worker_jobs(self.target)
        else:
            subject = subjects.jobs(modality, self.model)
        await client.nc.publish(subject, encode(self._job), reply=self._reply)
        if self.timeline.published is None:
            self.timeline.published = time.perf_counter()

    async def _retarget(self, why: str) -> bool:
        """Send the job to another live worker; False if there is none left to try."""
        modality = JOB_MODALITY[self._job.kind]
        if self._client.router.pick(modality, self.model, exclude=self._tried) is None:
            return False
        log.info("job %s: %s; sending it to another worker", self.request_id, why)
        if self.target is not None:
            await self._client.send_cancel(self.target, self.request_id)
        await self.publish()
        return True

    # --- acceptance -------------------------------------------------------------------------------------------

    async def _next_message(self, within_s: float) -> Reply:
        msg = await asyncio.wait_for(self._queue.get(), max(within_s, 0.0))
        if msg.headers and msg.headers.get("Status") == "503":
            raise NoWorkerError("no worker is serving this model")
        return decode_reply(msg.data)

    async def wait_accepted(self, within_s: float) -> JobAccepted:
        """Wait for a worker to take the job; raises NoWorkerError, or returns the JobFailed error as raised."""
        try:
            first = await self._accept(time.monotonic() + within_s)
        except BaseException:
            self.close()
            raise
        if isinstance(first, JobFailed):
            self.close()
            raise JobRefused(first)
        if not isinstance(first, JobAccepted):
            self.close()
            raise WireVersionError(f"expected an accepted message first, got {first.kind!r}")
        self.accepted = first
        self.timeline.accepted = time.perf_counter()
        return first

    async def _accept(self, until: float) -> Reply:
        timing = self._client.timing
        retried = False
        while True:
            left = until - time.monotonic()
            try:
                return await self._next_message(min(left, timing.accept_probe_s) if self.target else left)
            except NoWorkerError:
                # The worker we picked is gone (its announcement was not yet stale): try the others, then give up.
                if self.target is None:
                    self._client.registry.forget_model(self.model)
                    raise
                self._client.registry.forget(self.target)
                if not await self._retarget("its worker is gone"):
                    await self.publish(group=True)  # the queue group answers no-responders at once if empty
                continue
            except TimeoutError:
                pass
            if time.monotonic() >= until:
                raise ReplyTimeoutError("no worker accepted the job in time")
            if self.target is None:
                continue
            try:
                state = await self._probe(self.target, next_seq=-1)
            except WorkerLostError:
                state = None
            if state is not None:
                continue  # alive: it has the job (its acceptance is being resent) or is about to read it
            self._client.router.suspect(self.target)
            if retried or not await self._retarget(f"worker {self.target} does not answer"):
                raise ReplyTimeoutError(f"worker {self.target} took the job but does not answer")
            retried = True

    # --- the reply stream -------------------------------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[R]:
        assert self.accepted is not None, "wait_accepted() first"
        timing = self._client.timing
        missed = 0
        try:
            gap_since: float | None = None
            while not self._done:
                # A gap is repaired gap_wait_s after it opened, however many later replies keep arriving.
                if self._ahead and gap_since is None:
                    gap_since = time.monotonic()
                elif not self._ahead:
                    gap_since = None
                if gap_since is not None:
                    wait = gap_since + timing.gap_wait_s - time.monotonic()
                else:
                    wait = timing.idle_probe_s
                wait = min(wait, self.deadline + timing.deadline_grace_s - time.time())
                try:
                    reply = await self._next_message(wait)
                except TimeoutError:
                    missed = await self._check(missed)
                    gap_since = None if gap_since is None else time.monotonic()
                    continue
                except NoWorkerError as e:  # a resend to a reply subject nobody had any more; cannot happen here
                    raise WorkerLostError(str(e)) from e
                missed = 0
                if isinstance(reply, JobFailed):
                    self._done = True
                    raise JobRefused(reply)
                if isinstance(reply, JobAccepted):
                    continue  # a resend of the acceptance
                if not isinstance(reply, self._reply_type):
                    raise WireVersionError(f"expected {self._reply_type.__name__} replies, got {reply.kind!r}")
                if reply.seq < self._next_seq:
                    continue  # already delivered (a resend)
                self._ahead[reply.seq] = reply
                while self._next_seq in self._ahead:
                    ready = self._ahead.pop(self._next_seq)
                    self._next_seq += 1
                    self.timeline.last_reply = time.perf_counter()
                    if self.timeline.first_reply is None:
                        self.timeline.first_reply = self.timeline.last_reply
                    if ready.finished:
                        self._done = True
                        if ready.status == JobStatus.FINISHED_ABORTED and time.time() >= self.deadline:
                            raise DeadlineExceededError("the job ran past its deadline and was stopped")
                    yield ready
                    if self._done:
                        break
        finally:
            self.close()

    async def _check(self, missed: int) -> int:
        """After a quiet spell (or an open gap): is the job still alive? Returns the missed-probe count."""
        timing = self._client.timing
        if time.time() >= self.deadline + timing.deadline_grace_s:
            await self.cancel()
            raise DeadlineExceededError("the job's worker did not finish it by its deadline")
        if not self._client.nc.is_connected:
            # Probes cannot go out; replies sent meanwhile are lost, but the worker keeps them for the resend.
            now = time.monotonic()
            if self._offline_since is None:
                self._offline_since = now
            elif now - self._offline_since > timing.outage_limit_s:
                raise BusUnavailableError(f"cut off from NATS for over {timing.outage_limit_s:.0f}s")
            return missed
        self._offline_since = None
        assert self.accepted is not None
        release = self._next_seq == 0 and self._wants_move()
        state = await self._probe(self.accepted.worker_id, self._next_seq, release=release)
        if state is None:
            if missed + 1 >= timing.max_missed_probes:
                raise WorkerLostError(f"worker {self.accepted.worker_id} stopped answering")
            return missed + 1
        if not state.known:
            raise WorkerLostError(f"worker {self.accepted.worker_id} no longer has this job")
        if state.release == "released":  # it sent nothing and never will: the job starts afresh elsewhere
            await self._move()
            return 0
        if state.release == "refused" or state.sent:
            self._unreserve()
        if state.sent > self._next_seq and not state.resent:
            raise WorkerLostError("replies of this job were lost and the worker no longer holds them")
        if state.finished and state.sent <= self._next_seq and not state.resent:
            raise WorkerLostError("the job ended on its worker but its last reply was lost")
        if state.stalled_s > timing.stall_limit_s:
            stuck = f"worker {self.accepted.worker_id} has been stuck in one step for {state.stalled_s:.0f}s"
            raise WorkerStalledError(stuck)
        return 0

    # --- moving to a worker with room -------------------------------------------------------------------------

    def _wants_move(self) -> bool:
        """Whether to ask this job's worker to release it: it has sent nothing yet, and another worker has room
        (reserved there for this job until the move is done or refused)."""
        if self._moving_to is not None:
            return True
        assert self.accepted is not None
        spare = self._client.router.spare(self.modality, self.model, busy=self.accepted.worker_id)
        if spare is None:
            return False
        self._moving_to = spare.worker_id
        self._client.router.started(spare.worker_id)
        return True

    def _unreserve(self) -> None:
        if self._moving_to is not None:
            self._client.router.ended(self._moving_to)
            self._moving_to = None

    async def _move(self) -> None:
        """The worker released the job before starting it: send it to the one with room (or, if that one is gone
        meanwhile, the least loaded) and wait for its acceptance."""
        assert self.accepted is not None
        old, prefer = self.accepted.worker_id, self._moving_to
        self._unreserve()
        self._tried -= {old}  # it may take the job back if it is the least loaded after all
        self.accepted = None
        self.moves += 1
        log.info("job %s: released by %s before it started; moving it to %s", self.request_id, old, prefer)
        await self.publish(prefer)
        accept_until = time.monotonic() + self._client.timing.accept_timeout_s
        first = await self._accept(accept_until)
        if isinstance(first, JobFailed):
            self._done = True
            raise JobRefused(first)
        if not isinstance(first, JobAccepted):
            raise WireVersionError(f"expected an accepted message first, got {first.kind!r}")
        self.accepted = first

    async def _probe(self, worker_id: str, next_seq: int, *, release: bool = False) -> JobState | None:
        """The job's state on its worker (None: no answer in time); WorkerLostError if nobody listens."""
        probe = JobProbe(request_id=self.request_id, next_seq=next_seq, release=release)
        try:
            msg = await self._client.nc.request(
                subjects.worker_probe(worker_id), encode(probe), timeout=self._client.timing.probe_timeout_s
            )
        except nats.errors.NoRespondersError as e:
            self._client.registry.forget(worker_id)
            raise WorkerLostError(f"worker {worker_id} went away") from e
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
            return None
        return decode_job_state(msg.data)

    # --- ending -----------------------------------------------------------------------------------------------

    async def cancel(self) -> None:
        """Ask the worker to stop this job (the client went away); safe to call at any point."""
        worker = self.worker_id
        if not self._done and worker is not None:
            self._done = True
            await self._client.send_cancel(worker, self.request_id)
        self.close()

    def close(self) -> None:
        self._unreserve()
        if self._reply:
            self._client.drop_route(self._reply)
        if self._counted is not None:
            self._client.router.ended(self._counted)
            self._counted = None


class JobRefused(Exception):
    """A worker refused or failed a job; ``failed.error`` is the error to show the client."""

    def __init__(self, failed: JobFailed) -> None:
        super().__init__(failed.error.message)
        self.failed = failed
