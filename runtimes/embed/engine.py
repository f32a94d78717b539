"""Dynamic batching for a sentence encoder: inputs of every waiting request share forward passes.

One step::

    rows from the fair queue, up to max_batch rows and max_batch_tokens real tokens
    sorted by length, cut into groups whose padding stays small      -> [B_g, T_g] each
    one forward per group                                             -> [B_g, dimensions]
    each vector into its request's matrix; a request whose last row is done gets its matrix

The unit of admission is one input (a row), not one request: a request of 2,000 inputs takes many steps, and a
one-sentence request of another key that arrives meanwhile rides in the next step instead of waiting behind it
(fair_queue.py: priority first, then the key served least). NOTE: all model work runs on the one engine thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ember.runtimes.embed.loader import LoadedEncoder
from ember.runtimes.fair_queue import FairQueue
from ember.runtimes.serving import EngineOverloaded
from ember.runtimes.step_clock import StepClock

log = logging.getLogger("ember.embed.engine")

# A group of rows grows until the padding the next (longer) row would add passes both a share of its real tokens
# and what a separate forward pass costs in fixed overhead, counted in tokens (cutting small groups buys nothing).
PADDING_SLACK = 0.25
FORWARD_OVERHEAD_TOKENS = 128


@dataclass(frozen=True)
class EngineConfig:
    # Inputs encoded in one step (over all its groups).
    max_batch: int = 64
    # Real tokens encoded in one step; bounds how long a step holds the engine (and its activation memory).
    max_batch_tokens: int = 8192
    # Requests queued before new ones are refused with 503.
    max_waiting: int = 256


@dataclass
class EmbedRequest:
    request_id: str
    # Each input's token ids, special tokens included.
    rows: list[list[int]]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[np.ndarray]
    priority: int = 0
    key: str = ""
    cancelled: bool = False
    # Taken back before any of its rows was encoded (``EmbedEngine.withdraw``): its worker hands the job on.
    withdrawn: bool = False
    # [len(rows), dimensions] float32, filled on the engine thread as rows are encoded.
    vectors: np.ndarray | None = None
    remaining: int = 0

    def __post_init__(self) -> None:
        self.remaining = len(self.rows)

    def finish(self, result: np.ndarray | BaseException | None) -> None:
        """Resolve ``done`` from the engine thread: the vectors, the failure, or (None) cancelled."""

        def set_result() -> None:
            if self.done.done():
                return
            if result is None:
                self.done.cancel()
            elif isinstance(result, BaseException):
                self.done.set_exception(result)
            else:
                self.done.set_result(result)

        self.loop.call_soon_threadsafe(set_result)


@dataclass(frozen=True)
class _Row:
    request: EmbedRequest
    index: int

    @property
    def ids(self) -> list[int]:
        return self.request.rows[self.index]


@dataclass
class EngineStats:
    steps: int = 0
    rows: int = 0
    # Tokens computed, padding included, and the real ones among them.
    padded_tokens: int = 0
    real_tokens: int = 0
    forwards: int = 0


class EmbedEngine:
    def __init__(self, loaded: LoadedEncoder, config: EngineConfig) -> None:
        self.loaded = loaded
        self.config = config
        self._lock = threading.Condition()
        self._rows: FairQueue[_Row] = FairQueue()
        # Requests with rows still to encode (waiting or in the step running now).
        self._open: dict[str, EmbedRequest] = {}
        self._stopped = False
        self.stats = EngineStats()
        self.clock = StepClock()

    def load(self) -> tuple[int, int]:
        """(requests with rows being encoded or queued, rows queued) for announcements."""
        with self._lock:
            return len(self._open), len(self._rows)

    def submit(self, request: EmbedRequest) -> None:
        with self._lock:
            if len(self._open) >= self.config.max_waiting:
                raise EngineOverloaded(f"the worker has {len(self._open)} requests waiting; retry shortly")
            if self._stopped:
                raise EngineOverloaded("the worker is stopping")
            request.vectors = np.empty((len(request.rows), self.loaded.dimensions), dtype=np.float32)
            self._open[request.request_id] = request
            for i in range(len(request.rows)):
                row = _Row(request, i)
                self._rows.push(row, request_id=request.request_id, key=request.key, priority=request.priority)
            self._lock.notify()

    def abort(self, request_id: str) -> None:
        with self._lock:
            request = self._open.pop(request_id, None)
            if request is None:
                return
            request.cancelled = True
            self._rows.remove({request_id})
            request.finish(None)

    def withdraw(self, request_id: str) -> bool:
        """Take a request back if none of its rows has been taken into a step: its ``done`` is cancelled with
        ``withdrawn`` set, and its worker hands the job to another. False where it started or is unknown."""
        with self._lock:
            request = self._open.get(request_id)
            if request is None or sum(row.request is request for row in self._rows) < len(request.rows):
                return False
            del self._open[request_id]
            self._rows.remove({request_id})
            request.withdrawn = request.cancelled = True
        request.finish(None)
        return True

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def run(self) -> None:
        """The engine thread: step while rows wait, sleep on the condition when none do."""
        while True:
            with self._lock:
                while not self._stopped and not self._rows:
                    self._lock.wait()
                if self._stopped:
                    for request in self._open.values():
                        request.finish(EngineOverloaded("the worker stopped"))
                    self._open.clear()
                    return
                rows = self._take()
            with self.clock.step():
                self.step(rows)

    def _take(self) -> list[_Row]:
        """The next step's rows in fair order, within the row and token budgets (one row at least)."""
        rows: list[_Row] = []
        tokens = 0
        while len(rows) < self.config.max_batch:
            nxt = self._rows.peek()
            if nxt is None or (rows and tokens + len(nxt.ids) > self.config.max_batch_tokens):
                break
            rows += self._rows.take(1)
            tokens += len(nxt.ids)
        return rows

    def step(self, rows: list[_Row]) -> None:
        """Encode ``rows`` (in groups of similar length) and hand each finished request its vectors."""
        started = time.perf_counter()
        live = [r for r in rows if not r.request.cancelled]
        self.clock.rows(len(live))
        try:
            for group in length_groups(live):
                vectors = self._forward(group)
                for row, vector in zip(group, vectors, strict=True):
                    assert row.request.vectors is not None
                    row.request.vectors[row.index] = vector
        except Exception as e:  # one bad step fails its requests, never the worker
            log.exception("embedding step failed")
            with self._lock:
                for request in {id(r.request): r.request for r in live}.values():
                    self._open.pop(request.request_id, None)
                    request.cancelled = True
                    self._rows.remove({request.request_id})
                    request.finish(RuntimeError(f"embedding failed: {e}"))
            return
        self.stats.steps += 1
        self.stats.rows += len(live)
        with self._lock:
            for row in live:
                request = row.request
                request.remaining -= 1
                if request.remaining == 0 and not request.cancelled:
                    self._open.pop(request.request_id, None)
                    assert request.vectors is not None
                    request.finish(request.vectors)
        log.debug("step: %d rows in %.1f ms", len(live), (time.perf_counter() - started) * 1000)

    @torch.inference_mode()
    def _forward(self, group: list[_Row]) -> np.ndarray:
        device = self.loaded.device
        width = max(len(r.ids) for r in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.bool)
        for i, row in enumerate(group):
            ids[i, : len(row.ids)] = torch.tensor(row.ids)
            mask[i, : len(row.ids)] = True
        out = self.loaded.model(ids.to(device), mask.to(device))  # [B, dimensions] float32
        self.stats.forwards += 1
        self.stats.padded_tokens += ids.numel()
        self.stats.real_tokens += int(mask.sum())
        return out.cpu().numpy()


def length_groups(rows: list[_Row]) -> list[list[_Row]]:
    """Rows sorted by length and cut where the next row would pad its group too much (PADDING_SLACK)."""
    groups: list[list[_Row]] = []
    group: list[_Row] = []
    real = 0
    for row in sorted(rows, key=lambda r: len(r.ids)):
        n = len(row.ids)
        # Sorted ascending, so the new row is the longest: every row of the group would pad to n.
        waste = n * (len(group) + 1) - (real + n)
        if group and waste > max(PADDING_SLACK * (real + n), FORWARD_OVERHEAD_TOKENS):
            groups.append(group)
            group, real = [], 0
        group.append(row)
        real += n
    if group:
        groups.append(group)
    return groups
