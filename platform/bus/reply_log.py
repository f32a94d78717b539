"""What a worker has sent for each job, kept a little while so that replies lost on the way can be sent again.

Core NATS delivers at most once: a reply published while the gateway is cut off from the server (a NATS
restart, a network blip) is gone. The worker keeps every job's replies, in order, while the job runs and for
``retain_s`` after it ends, so a gateway that notices a gap (a probe after a quiet spell, a reconnect, a seq
that skips) gets them again instead of waiting for them forever. The log is bounded in bytes; past the bound
the oldest finished jobs go first, then the oldest replies of running ones, and a job whose replies were
dropped can no longer be resent (the gateway then fails it cleanly).

Positions: -1 is the acceptance, 0.. the numbered replies (``seq``), and a ``JobFailed`` that ends a job takes
the position after its last numbered reply.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ember.bus.messages import ReleaseState

ACCEPTED = -1


@dataclass
class JobLog:
    reply: str
    # (position, encoded message), in the order sent.
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    # Positions below this were dropped to stay within the byte bound.
    dropped_below: int = ACCEPTED
    sent: int = 0
    finished_at: float | None = None
    nbytes: int = 0
    # Whether the gateway asked the worker to give the job up before it started, and how that went.
    release: ReleaseState = ""


@dataclass
class ReplyLog:
    retain_s: float = 60.0
    max_bytes: int = 32 * 1024 * 1024
    _jobs: OrderedDict[str, JobLog] = field(default_factory=OrderedDict)
    # (finished at, request id) in the order jobs finished: expiry looks only at its head, so a busy worker's
    # thousands of retained jobs cost nothing per reply.
    _finished: deque[tuple[float, str]] = field(default_factory=deque)
    _bytes: int = 0

    def open(self, request_id: str, reply: str) -> None:
        self._forget(request_id)  # a job id sent again (a retried acceptance) starts afresh
        self._jobs[request_id] = JobLog(reply)

    def record(self, request_id: str, position: int, data: bytes, *, numbered: bool, final: bool) -> None:
        job = self._jobs.get(request_id)
        if job is None:
            return
        job.entries.append((position, data))
        job.nbytes += len(data)
        self._bytes += len(data)
        if numbered:
            job.sent = position + 1
        if final and job.finished_at is None:
            job.finished_at = time.monotonic()
            self._finished.append((job.finished_at, request_id))
        self._trim()

    def released(self, request_id: str) -> None:
        """The job was given up before it sent anything: it ends here, and the gateway sends it elsewhere."""
        job = self._jobs.get(request_id)
        if job is None:
            return
        job.release = "released"
        if job.finished_at is None:
            job.finished_at = time.monotonic()
            self._finished.append((job.finished_at, request_id))

    def get(self, request_id: str) -> JobLog | None:
        self._expire()
        return self._jobs.get(request_id)

    def since(self, request_id: str, position: int) -> list[bytes] | None:
        """Every message from ``position`` on, or None if some of them were dropped (or the job is unknown)."""
        job = self.get(request_id)
        if job is None or position < job.dropped_below:
            return None
        return [data for pos, data in job.entries if pos >= position]

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        while self._finished and now - self._finished[0][0] > self.retain_s:
            finished_at, rid = self._finished.popleft()
            job = self._jobs.get(rid)
            if job is not None and job.finished_at == finished_at:  # not a later job under the same id
                self._forget(rid)

    def _forget(self, request_id: str) -> None:
        job = self._jobs.pop(request_id, None)  # gone already if the byte bound took it first
        if job is not None:
            self._bytes -= job.nbytes

    def _trim(self) -> None:
        self._expire()
        if self._bytes <= self.max_bytes:
            return
        for rid, job in list(self._jobs.items()):  # oldest first
            if job.finished_at is not None:
                self._forget(rid)
                if self._bytes <= self.max_bytes:
                    return
        for job in self._jobs.values():
            while job.entries and self._bytes > self.max_bytes:
                pos, data = job.entries.pop(0)
                job.nbytes -= len(data)
                self._bytes -= len(data)
                job.dropped_below = pos + 1
            if self._bytes <= self.max_bytes:
                return
