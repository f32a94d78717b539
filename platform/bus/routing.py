"""Which worker gets a job: one this gateway knows is alive, the least loaded, never one that just failed it.

NATS queue groups pick a subscriber at random and cannot tell a frozen worker (SIGSTOP, a hung event loop)
from a live one: its subscription stays until its TCP connection dies, and every job routed to it waits for
an acceptance that never comes. So the gateway sends each job to one worker's own subject, chosen from the
workers whose announcements are fresh, and marks a worker that did not answer as suspect until it announces
itself again. The queue group remains for a gateway that has heard from no worker yet (it just started).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

from ember.bus.messages import Modality, WorkerInfo
from ember.bus.registry import WorkerRegistry


@dataclass
class WorkerRouter:
    registry: WorkerRegistry
    # Jobs this gateway has running on each worker (announced load lags by up to an interval).
    _outstanding: Counter[str] = field(default_factory=Counter)
    # worker id -> when it failed to answer; it is skipped until it announces itself after that.
    _suspect: dict[str, float] = field(default_factory=dict)

    def pick(self, modality: Modality, model: str, exclude: frozenset[str] = frozenset()) -> WorkerInfo | None:
        """The least loaded live worker of the model, or None if this gateway knows none (use the queue group)."""
        candidates = [w for w in self.registry.serving(modality, model) if w.worker_id not in exclude]
        candidates = [w for w in candidates if not self.is_suspect(w.worker_id)]
        if not candidates:
            return None

        def load(w: WorkerInfo) -> float:
            # Fill a worker's batch before queueing on it: busy relative to its batch size.
            return (self._outstanding[w.worker_id] + w.running + w.waiting) / w.max_batch

        best = min(load(w) for w in candidates)
        return random.choice([w for w in candidates if load(w) == best])

    def spare(self, modality: Modality, model: str, busy: str) -> WorkerInfo | None:
        """A live worker of the model with a free place in its batch (counting the jobs this gateway has on it),
        for a job waiting in the queue of worker ``busy``; None if ``busy`` queues nothing or no other has room.
        This is how jobs queued before a new worker came up reach it instead of waiting behind the old one."""
        workers = self.registry.serving(modality, model)
        queued = next((w for w in workers if w.worker_id == busy), None)
        if queued is None or not queued.waiting:
            return None
        room = [
            w
            for w in workers
            if w.worker_id != busy
            and not self.is_suspect(w.worker_id)
            and self._outstanding[w.worker_id] + w.running + w.waiting < w.max_batch
        ]
        return min(room, key=lambda w: self._outstanding[w.worker_id] + w.running + w.waiting, default=None)

    def is_suspect(self, worker_id: str) -> bool:
        marked = self._suspect.get(worker_id)
        if marked is None:
            return False
        seen = self.registry.seen(worker_id)
        if seen is None or seen <= marked:
            return True
        del self._suspect[worker_id]
        return False

    def suspect(self, worker_id: str) -> None:
        self._suspect[worker_id] = time.monotonic()

    def started(self, worker_id: str) -> None:
        self._outstanding[worker_id] += 1

    def ended(self, worker_id: str) -> None:
        self._outstanding[worker_id] -= 1
        if self._outstanding[worker_id] <= 0:
            del self._outstanding[worker_id]
