"""Dynamic batching: images that share a BatchSpec and arrive close together run in one pipeline call.

The engine owns one thread that runs the pipeline; the asyncio side only queues requests and reads events.
Each round::

    pick      the oldest waiting image decides the round's BatchSpec (size, steps, guidance, ...)
    gather    every waiting image with that spec joins, up to max_batch; a round that is not full waits up
              to batch_window_s for more (arrivals during the previous call are already waiting)
    run       one pipeline call; after each denoising step every request in it gets Progress(step, steps),
              and an image whose request asked for previews gets Preview at its chosen steps (only those rows
              are decoded: requests with different ``partial_images`` share a call, each paying for its own)
    emit      each image goes back to its request as soon as its call is done (a request's n images may
              span several calls); a failing call fails only the requests in it and the engine keeps going

NOTE: one thread owns every torch call of a worker process (see the NOTE in ember.runtimes.text.engine): two
OpenMP teams on two threads share the cores badly. Image decoding/encoding (Pillow) happens outside it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from PIL import Image

from ember.bus.messages import ErrorInfo
from ember.runtimes.image.pipeline import BatchInput, BatchSpec, PipelineRunner, effective_steps

log = logging.getLogger("ember.image.engine")


class EngineOverloaded(Exception):
    """The waiting queue is full; the caller should answer 503 and let the client retry."""


@dataclass(frozen=True)
class EngineConfig:
    # Images per pipeline call.
    max_batch: int = 8
    # Images waiting beyond the running call before new requests are refused.
    max_waiting: int = 256
    # How long a round that is not full waits for more matching images.
    batch_window_s: float = 0.03


@dataclass
class ImageRequest:
    """One job's images: n prompts' worth, image i seeded with seeds[i]."""

    request_id: str
    spec: BatchSpec
    prompt: str
    seeds: list[int]
    negative_prompt: str = ""
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    # Previews per image (see ember.runtimes.image.pipeline.preview_steps); not part of the BatchSpec.
    partial_images: int = 0

    @property
    def n(self) -> int:
        return len(self.seeds)


@dataclass
class Progress:
    step: int
    steps: int


@dataclass
class Preview:
    """Image ``index``'s preview number ``partial_image_index``, taken after step ``step`` of ``steps``."""

    index: int
    partial_image_index: int
    image: Image.Image
    step: int
    steps: int


@dataclass
class ImageDone:
    index: int
    image: Image.Image
    seed: int


@dataclass
class Failed:
    error: ErrorInfo


@dataclass
class Aborted:
    """The request was cancelled; no more events follow."""


Event = Progress | Preview | ImageDone | Failed | Aborted


@dataclass
class _Item:
    """One image to make."""

    req: _Running
    index: int


@dataclass
class _Running:
    req: ImageRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event]
    remaining: int
    aborted: bool = False
    failed: bool = False

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass
class EngineStats:
    """Counters for tests and benchmarks."""

    calls: int = 0
    images: int = 0
    # Images per call, in order.
    batch_sizes: list[int] = field(default_factory=list)


class ImageEngine:
    """Queues image requests and runs them in batches on its own thread (``run``)."""

    def __init__(self, runner: PipelineRunner, config: EngineConfig) -> None:
        self.runner = runner
        self.config = config
        self.stats = EngineStats()
        self._waiting: deque[_Item] = deque()
        self._requests: dict[str, _Running] = {}
        self._cond = threading.Condition()
        self._running_now = 0
        self._stopped = False

    def load(self) -> tuple[int, int]:
        """(images in the running call, images waiting)."""
        with self._cond:
            return self._running_now, len(self._waiting)

    def generate(self, req: ImageRequest) -> AsyncGenerator[Event, None]:
        """Queue a request (from the event loop); yields Progress, then ImageDone per image (or one Failed)."""
        loop = asyncio.get_running_loop()
        running = _Running(req, loop, asyncio.Queue(), remaining=req.n)
        with self._cond:
            if len(self._waiting) + req.n > self.config.max_waiting + self.config.max_batch:
                raise EngineOverloaded(f"{len(self._waiting)} images are already waiting; retry shortly")
            self._requests[req.request_id] = running
            self._waiting.extend(_Item(running, i) for i in range(req.n))
            self._cond.notify()
        return self._events(running)

    async def _events(self, running: _Running) -> AsyncGenerator[Event, None]:
        received = 0
        try:
            while received < running.req.n:
                event = await running.queue.get()
                yield event
                if isinstance(event, Failed | Aborted):
                    return
                if isinstance(event, ImageDone):
                    received += 1
        finally:
            self.abort(running.req.request_id)  # a consumer that leaves early frees its waiting images

    def abort(self, request_id: str) -> None:
        """Drop a request's waiting images and end its stream; a call it is in stops early if nobody else is in it."""
        running = self._drop(request_id)
        if running is not None:
            running.emit(Aborted())

    def _drop(self, request_id: str) -> _Running | None:
        with self._cond:
            running = self._requests.pop(request_id, None)
            if running is None:
                return None
            running.aborted = True
            self._waiting = deque(it for it in self._waiting if it.req is not running)
        return running

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    # --- engine thread ---------------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Item] | None:
        """The next call's images (see the module docstring), or None once stopped."""
        with self._cond:
            while not self._waiting and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            spec = self._waiting[0].req.req.spec
            deadline = time.monotonic() + self.config.batch_window_s
            while True:
                matching = [it for it in self._waiting if it.req.req.spec == spec]
                left = deadline - time.monotonic()
                if len(matching) >= self.config.max_batch or left <= 0 or self._stopped:
                    break
                self._cond.wait(left)
            batch = matching[: self.config.max_batch]
            taken = {id(it) for it in batch}
            self._waiting = deque(it for it in self._waiting if id(it) not in taken)
            self._running_now = len(batch)
            return batch

    def run(self) -> None:
        """The engine loop; returns after ``stop``."""
        while (batch := self._take_batch()) is not None:
            try:
                self._run_batch(batch)
            finally:
                with self._cond:
                    self._running_now = 0

    def _run_batch(self, batch: list[_Item]) -> None:
        spec = batch[0].req.req.spec
        members = list({id(it.req): it.req for it in batch}.values())
        inputs = BatchInput(
            spec=spec,
            prompts=[it.req.req.prompt for it in batch],
            seeds=[it.req.req.seeds[it.index] for it in batch],
            negative_prompts=[it.req.req.negative_prompt for it in batch],
        )
        if spec.strength is not None:
            inputs.images = [it.req.req.init_image for it in batch]  # type: ignore[misc]
            if spec.masked:
                inputs.masks = [it.req.req.mask for it in batch]  # type: ignore[misc]
        if any(it.req.req.partial_images for it in batch):
            inputs.partial_images = [it.req.req.partial_images for it in batch]
        steps_total = effective_steps(spec.steps, spec.strength)

        def on_preview(row: int, partial_image_index: int, step: int, image: Image.Image) -> None:
            it = batch[row]
            if not it.req.aborted:
                it.req.emit(Preview(it.index, partial_image_index, image, step, steps_total))

        def on_step(step: int, steps: int) -> bool:
            for m in members:
                if not m.aborted:
                    m.emit(Progress(step, steps))
            # Stop the call early when every request in it has gone.
            return all(m.aborted for m in members)

        try:
            images = self.runner.generate(inputs, on_step, on_preview)
            if len(images) != len(batch):
                raise RuntimeError(f"the pipeline returned {len(images)} images for {len(batch)} prompts")
        except Exception as e:
            log.exception("pipeline call of %d images failed", len(batch))
            error = ErrorInfo(
                status=500, type="server_error", code="generation_failed", message=f"image generation failed: {e}"
            )
            for m in members:
                if not m.failed:
                    m.failed = True
                    self._drop(m.req.request_id)
                    m.emit(Failed(error))
            return
        self.stats.calls += 1
        self.stats.images += len(batch)
        self.stats.batch_sizes.append(len(batch))
        for it, image in zip(batch, images, strict=True):
            if it.req.aborted or it.req.failed:
                continue
            with self._cond:
                it.req.remaining -= 1
            it.req.emit(ImageDone(it.index, image, it.req.req.seeds[it.index]))
