"""Scheduling for speech: one thread synthesizes a piece (a sentence) per step, and requests take turns.

One step::

    admit      waiting -> running, up to max_batch: priority (the key's tier), then the key served least, then
               age (fair_queue.py)
    pick       the running request whose listener runs out of audio first: priority, then when its audio so far
               ends if played from its start (a new request has none: its first piece comes next)
    synthesize that request's next piece -> Audio; after its last piece, Finished; it leaves the batch

So a long input streams while a short one arriving behind it is heard at once, and every running request keeps
ahead of real time as long as the engine is faster than real time for all of them together. NOTE: all onnx work
runs on the one engine thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeAlias

import numpy as np

from ember.runtimes.fair_queue import FairQueue
from ember.runtimes.serving import EngineOverloaded, Withdrawn, request_events, withdraw_waiting
from ember.runtimes.speech.model import PiperModel, Voice
from ember.runtimes.step_clock import StepClock

log = logging.getLogger("ember.speech.engine")


@dataclass
class Audio:
    """One piece's samples: [n] float32 in [-1, 1] at the model's rate."""

    samples: np.ndarray


@dataclass
class Finished:
    # Seconds of audio in all.
    seconds: float


@dataclass
class Failed:
    message: str


@dataclass
class Aborted:
    """Cancelled (the client went away, or the deadline passed)."""


Event: TypeAlias = Audio | Finished | Failed | Aborted | Withdrawn


@dataclass
class SpeechRequest:
    request_id: str
    # Phonemes of each piece, in order (PiperModel.pieces).
    pieces: list[list[str]]
    voice: Voice
    loop: asyncio.AbstractEventLoop
    # Higher is admitted (and served) first: the key's tier. Keys of one priority share the engine fairly.
    priority: int = 0
    key: str = ""
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    # Pieces done, samples made, and when it was admitted (monotonic; its audio's playback starts about then).
    done: int = 0
    samples: int = 0
    admitted: float = 0.0

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(frozen=True)
class EngineConfig:
    # Requests taking turns piece by piece.
    max_batch: int = 8
    # Requests queued beyond those before new ones get 503.
    max_waiting: int = 256


class SpeechEngine:
    def __init__(self, model: PiperModel, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self._lock = threading.Condition()
        self._waiting: FairQueue[SpeechRequest] = FairQueue()
        self._running: list[SpeechRequest] = []
        self._stopped = False
        self.steps = 0
        # For metrics: seconds of audio synthesized.
        self.audio_seconds = 0.0
        # How long the current piece has run: probes report a stuck engine from it.
        self.clock = StepClock()

    def load(self) -> tuple[int, int]:
        with self._lock:
            return len(self._running), len(self._waiting)

    def submit(self, request: SpeechRequest) -> None:
        """Queue a request; raises EngineOverloaded when the queue is full."""
        with self._lock:
            # Counted together: whether the thread has admitted the latest ones yet does not change the answer.
            live = sum(not r.cancelled for r in [*self._running, *self._waiting])
            if live >= self.config.max_waiting + self.config.max_batch:
                raise EngineOverloaded(f"the worker has {live} requests running or waiting; retry shortly")
            self._waiting.push(request, request_id=request.request_id, key=request.key, priority=request.priority)
            self._lock.notify()

    @staticmethod
    def events(request: SpeechRequest) -> AsyncIterator[Event]:
        """A submitted request's events until the last one (Finished, Failed, Aborted); leaving early cancels it."""
        return request_events(request, (Finished, Failed, Aborted))

    def abort(self, request_id: str) -> None:
        with self._lock:
            for r in [*self._running, *self._waiting]:
                if r.request_id == request_id and not r.cancelled:
                    r.cancelled = True
                    r.emit(Aborted())

    def withdraw(self, request_id: str) -> bool:
        """Take a request back if it is still waiting (nothing of it spoken); see ``serving.withdraw_waiting``."""
        return withdraw_waiting(self._lock, self._waiting, request_id)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def run(self) -> None:
        """The engine thread: a piece per step while there is work; asleep on the condition when there is none."""
        while True:
            with self._lock:
                while not self._stopped and not self._waiting and not self._running:
                    self._lock.wait()
                if self._stopped:
                    return
                request = self._next()
            if request is not None:
                with self.clock.step():
                    self.clock.rows(1)
                    self.step(request)

    def _next(self) -> SpeechRequest | None:
        """Admit what fits, then the running request to serve now (None when all were cancelled)."""
        self._running = [r for r in self._running if not r.cancelled]
        self._waiting.remove({r.request_id for r in self._waiting if r.cancelled})
        now = time.monotonic()
        for r in self._waiting.take(self.config.max_batch - len(self._running)):
            r.admitted = now
            self._running.append(r)
        if not self._running:
            return None
        rate = self.model.sample_rate
        return min(self._running, key=lambda r: (-r.priority, r.admitted + r.samples / rate))

    def step(self, request: SpeechRequest) -> None:
        """Synthesize ``request``'s next piece; after its last, it is finished and leaves the batch."""
        started = time.perf_counter()
        try:
            audio = self.model.synthesize(request.pieces[request.done], request.voice)
        except Exception as e:  # one bad piece fails its request, never the worker
            log.exception("synthesis of %s failed", request.request_id)
            request.cancelled = True
            request.emit(Failed(f"synthesis failed: {e}"))
            return
        self.steps += 1
        self.audio_seconds += audio.size / self.model.sample_rate
        request.done += 1
        request.samples += audio.size
        if request.cancelled:
            return
        request.emit(Audio(audio))
        if request.done == len(request.pieces):
            request.cancelled = True  # leaves the batch
            request.emit(Finished(request.samples / self.model.sample_rate))
        log.debug(
            "piece of %s: %d samples in %.1f ms", request.request_id, audio.size, (time.perf_counter() - started) * 1000
        )
