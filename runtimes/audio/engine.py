"""Batching for Whisper: every step takes the next 30 s window of each running request and runs them together.

One step::

    windows of up to max_batch requests   -> [B, n_mels, 3000]   (one window per request: windows of one
    one encoder pass over all of them     -> [B, 1500, d_audio]   request depend on each other's timestamps)
    detect the language where none is set -> whisper's detect_language, on the first window of a request
    decode all windows together           -> decoding.BatchDecoder: beams (or samples) of every window in one
                                             batch, each window with its own prompt and temperature
    feed each result to its Transcription -> new segments out, seek on; finished requests leave the batch
    decode again the windows that failed  -> at their next temperature, on the same encoder output

So concurrent requests share encoder passes and decoder steps, and a long file interleaves with short ones
instead of holding the model until it ends. Waiting requests take free places in the batch by priority (the
key's tier), then the API key served least, then age (fair_queue.py). NOTE: all model work runs on the one
engine thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TypeAlias

import torch

from ember.runtimes.audio.decoding import BatchDecoder
from ember.runtimes.audio.loader import LoadedWhisper
from ember.runtimes.audio.pipeline import Segment, Transcription
from ember.runtimes.device_group.slot import with_reclaim
from ember.runtimes.fair_queue import FairQueue
from ember.runtimes.serving import EngineOverloaded, Withdrawn, request_events, withdraw_waiting
from ember.runtimes.step_clock import StepClock

log = logging.getLogger("ember.audio.engine")


@dataclass
class Finished:
    text: str
    language: str
    duration: float


@dataclass
class Failed:
    message: str


@dataclass
class Aborted:
    """The request was cancelled (its client went away); what was transcribed so far."""

    text: str


Event: TypeAlias = Segment | Finished | Failed | Aborted | Withdrawn


@dataclass
class AudioRequest:
    request_id: str
    transcription: Transcription
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    # Higher is admitted first (the key's tier); keys of one priority share the batch fairly.
    priority: int = 0
    key: str = ""

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(frozen=True)
class EngineConfig:
    # Requests whose windows decode together in one step.
    max_batch: int = 8
    # Requests queued beyond the batch before new ones get 503.
    max_waiting: int = 256


class AudioEngine:
    def __init__(self, loaded: LoadedWhisper, config: EngineConfig) -> None:
        self.loaded = loaded
        self.config = config
        self.fp16 = loaded.device.type == "cuda"
        self.decoder = BatchDecoder(loaded.model, loaded.tokenizer())
        self._lock = threading.Condition()
        self._waiting: FairQueue[AudioRequest] = FairQueue()
        self._running: list[AudioRequest] = []
        self._stopped = False
        self.steps = 0
        self.windows = 0
        # For metrics: seconds of audio transcribed (each request's, counted when it finishes).
        self.audio_seconds = 0.0
        # How long the current batched window has run: probes report a stuck engine from it.
        self.clock = StepClock()

    def load(self) -> tuple[int, int]:
        with self._lock:
            return len(self._running), len(self._waiting)

    def submit(self, *requests: AudioRequest) -> None:
        """Queue requests; several given at once are sure to start in the same step (if the batch has room)."""
        with self._lock:
            if len(self._waiting) >= self.config.max_waiting and len(self._running) >= self.config.max_batch:
                raise EngineOverloaded(f"the worker has {len(self._waiting)} requests waiting; retry shortly")
            for r in requests:
                self._waiting.push(r, request_id=r.request_id, key=r.key, priority=r.priority)
            self._lock.notify()

    @staticmethod
    def events(request: AudioRequest) -> AsyncIterator[Event]:
        """A submitted request's events until the last one (Finished, Failed, Aborted); leaving early cancels it."""
        return request_events(request, (Finished, Failed, Aborted))

    def abort(self, request_id: str) -> None:
        with self._lock:
            for r in [*self._running, *self._waiting]:
                if r.request_id == request_id and not r.cancelled:
                    r.cancelled = True
                    r.emit(Aborted(r.transcription.text))

    def withdraw(self, request_id: str) -> bool:
        """Take a request back if it is still waiting (none of its audio decoded); see ``serving.withdraw_waiting``."""
        return withdraw_waiting(self._lock, self._waiting, request_id)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def run(self) -> None:
        """The engine thread: step while there is work, sleep on the condition when there is none."""
        while True:
            with self._lock:
                while not self._stopped and not self._waiting and not self._running:
                    self._lock.wait()
                if self._stopped:
                    return
                self._admit()
            with self.clock.step():
                self.step()

    def _admit(self) -> None:
        self._running = [r for r in self._running if not r.cancelled]
        self._waiting.remove({r.request_id for r in self._waiting if r.cancelled})
        self._running += self._waiting.take(self.config.max_batch - len(self._running))

    def step(self) -> None:
        """One batched window for every running request."""
        batch = [r for r in self._running if not r.cancelled and not r.transcription.done]
        for r in self._running:
            if not r.cancelled and r.transcription.done:
                self._finish(r)
        if not batch:
            with self._lock:
                self._running = [r for r in self._running if not r.cancelled]
            return
        started = time.perf_counter()
        self.clock.rows(len(batch))
        try:
            self._decode(batch)
        except Exception as e:  # one bad step fails its requests, never the worker
            log.exception("audio step failed")
            for r in batch:
                r.emit(Failed(f"transcription failed: {e}"))
                r.cancelled = True
        # Counted before any request hears it finished, so a caller that saw Finished sees this step counted.
        self.steps += 1
        self.windows += len(batch)
        for r in batch:
            if not r.cancelled and r.transcription.done:
                self._finish(r)
        with self._lock:
            self._running = [r for r in self._running if not r.cancelled]
        log.debug("step: %d windows in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)

    @torch.inference_mode()
    def _decode(self, batch: list[AudioRequest]) -> None:
        model = self.loaded.model
        dtype = torch.float16 if self.fp16 else torch.float32
        mels = torch.stack([r.transcription.window()[0] for r in batch]).to(self.loaded.device, dtype)
        # [B, n_audio_ctx, n_audio_state]: one encoder pass for the batch. It changes nothing until it returns, so
        # where it runs out of device memory in a device group it runs again once the text models gave KV memory back.
        features = with_reclaim(lambda: model.embed_audio(mels))
        unknown = [i for i, r in enumerate(batch) if r.transcription.language is None]
        if unknown:
            _, probs = model.detect_language(features[unknown], batch[unknown[0]].transcription.tokenizer)
            for i, p in zip(unknown, probs, strict=True):
                batch[i].transcription.set_language(max(p, key=p.__getitem__))
        self._decode_windows(batch, features)

    def _decode_windows(self, batch: list[AudioRequest], features: torch.Tensor) -> None:
        """Decode every window of the step, again hotter where a window failed, and feed the results."""
        model = self.loaded.model
        pending = list(range(len(batch)))
        while pending:  # the windows that failed at one temperature go again at the next, in a smaller batch
            tasks = [batch[i].transcription.next_task(i, self.decoder.max_prompt()) for i in pending]
            results = self.decoder.decode(features, tasks)
            again = []
            for i, result in zip(pending, results, strict=True):
                segments = batch[i].transcription.feed(result, model)
                if segments is None:
                    again.append(i)
                for segment in segments or []:
                    batch[i].emit(segment)
            pending = again

    def _finish(self, r: AudioRequest) -> None:
        t = r.transcription
        self.audio_seconds += t.duration
        r.emit(Finished(text=t.text, language=t.language or "en", duration=t.duration))
        r.cancelled = True  # leaves the batch
