"""Batching image requests: step-level where Ember drives the denoising loop, call-level for any other pipeline.

The engine owns one thread that runs the model; the asyncio side only queues requests and reads events.

Step-level (Ember's pixel pipeline, ``PipelineRunner.stepper``): like continuous batching of text, images join
and leave the running batch between denoising steps. Each iteration::

    admit     waiting images take the free rows (up to max_batch): highest priority first, then the API key
              served least (fair_queue.py), then the oldest; any size, step count, guidance or source image
              mixes (each row has its own schedule)
    step      one UNet call advances every running row by one step
    emit      every request with a row in the step gets Progress(step, steps); a row at one of its request's
              preview steps gets Preview; a row whose last step ran goes back as ImageDone at once
    drop      rows of aborted requests leave before the next step; a failing step fails only its rows' requests

Call-level (any other diffusers pipeline, driven through its own ``__call__``): each round::

    pick      the waiting image first in line (the same order) decides the round's BatchSpec
    gather    waiting images with that spec join in that order, up to max_batch; a round that is not full
              waits up to batch_window_s for more (arrivals during the previous call are already waiting)
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
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from PIL import Image

from ember.bus.messages import ErrorInfo
from ember.runtimes.fair_queue import FairQueue
from ember.runtimes.image.pipeline import BatchInput, BatchSpec, PipelineRunner, preview_steps
from ember.runtimes.image.stepper import PixelStepper, Row, effective_steps
from ember.runtimes.serving import EngineOverloaded
from ember.runtimes.step_clock import StepClock

log = logging.getLogger("ember.image.engine")


@dataclass(frozen=True)
class EngineConfig:
    # Images per pipeline call.
    max_batch: int = 8
    # Images waiting beyond the running call before new requests are refused.
    max_waiting: int = 256
    # Call-level batching: how long a round that is not full waits for more matching images.
    batch_window_s: float = 0.03
    # Step-level batching where the pipeline allows it; False batches whole calls for every pipeline.
    step_batching: bool = True


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
    # Higher is served first (the key's tier).
    priority: int = 0
    # Whose request it is (an API key id); keys of one priority share the rows fairly.
    key: str = ""

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


@dataclass
class Withdrawn:
    """The request was taken back before any of its images started (``ImageEngine.withdraw``); its stream ends
    without yielding this or anything else."""


Event = Progress | Preview | ImageDone | Failed | Aborted | Withdrawn


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
class _Live:
    """An image in the step-level batch."""

    item: _Item
    row: Row
    # Its request's preview steps (1-based, of row.steps).
    preview_at: list[int]


@dataclass
class EngineStats:
    """Counters for tests and benchmarks."""

    calls: int = 0
    images: int = 0
    # Call-level: images per pipeline call, in order. Step-level: rows per UNet step, in order.
    batch_sizes: list[int] = field(default_factory=list)


class ImageEngine:
    """Queues image requests and runs them in batches on its own thread (``run``)."""

    def __init__(self, runner: PipelineRunner, config: EngineConfig) -> None:
        self.runner = runner
        self.config = config
        self.stats = EngineStats()
        self._waiting: FairQueue[_Item] = FairQueue()
        self._requests: dict[str, _Running] = {}
        self._cond = threading.Condition()
        self._running_now = 0
        self._stopped = False
        # How long the current denoising step (or call) has run: probes report a stuck engine from it.
        self.clock = StepClock()
        # For metrics: denoising steps of one image each (step-level batching).
        self.row_steps = 0

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
            for i in range(req.n):
                item = _Item(running, i)
                self._waiting.push(item, request_id=req.request_id, key=req.key, priority=req.priority)
            self._cond.notify()
        return self._events(running)

    async def _events(self, running: _Running) -> AsyncGenerator[Event, None]:
        received = 0
        try:
            while received < running.req.n:
                event = await running.queue.get()
                if isinstance(event, Withdrawn):
                    return
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

    def withdraw(self, request_id: str) -> bool:
        """Take a request back if none of its images has started: its stream ends with no event, and its worker
        hands the job to another. False where one started, or the request ended or is unknown."""
        with self._cond:
            running = self._requests.get(request_id)
            if running is None or sum(it.req is running for it in self._waiting) < running.req.n:
                return False
            del self._requests[request_id]
            self._waiting.remove({request_id})
        running.emit(Withdrawn())
        return True

    def _drop(self, request_id: str) -> _Running | None:
        with self._cond:
            running = self._requests.pop(request_id, None)
            if running is None:
                return None
            running.aborted = True
            self._waiting.remove({request_id})
        return running

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    # --- engine thread ---------------------------------------------------------------------------------------

    def run(self) -> None:
        """The engine loop; returns after ``stop``."""
        stepper = self.runner.stepper if self.config.step_batching else None
        if stepper is not None:
            self._run_steps(stepper)
            return
        while (batch := self._take_batch()) is not None:
            try:
                if batch:  # empty when every image of the round was aborted while it gathered
                    with self.clock.step():
                        self.clock.rows(len(batch))
                        self._run_batch(batch)
            finally:
                with self._cond:
                    self._running_now = 0

    # --- step-level ------------------------------------------------------------------------------------------

    def _admit(self, free: int, block: bool) -> list[_Item] | None:
        """Up to ``free`` waiting images in serving order (waiting for one if ``block``), or None once stopped."""
        with self._cond:
            while block and not self._waiting and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            return self._waiting.take(free)

    def _run_steps(self, stepper: PixelStepper) -> None:
        live: list[_Live] = []
        while (new := self._admit(self.config.max_batch - len(live), block=not live)) is not None:
            live += self._start_rows(stepper, new)
            live = [lv for lv in live if not (lv.item.req.aborted or lv.item.req.failed)]
            with self._cond:
                self._running_now = len(live)
            if not live:
                continue
            try:
                with self.clock.step():
                    self.clock.rows(len(live))
                    stepper.step([lv.row for lv in live])
                self.row_steps += len(live)
            except Exception as e:
                log.exception("denoising step of %d images failed", len(live))
                self._fail([lv.item.req for lv in live], e)
                live = []
                continue
            self.stats.calls += 1
            self.stats.batch_sizes.append(len(live))
            live = self._after_step(stepper, live)
            # Before _admit blocks for new work: an engine whose last images just finished is idle now.
            with self._cond:
                self._running_now = len(live)
        with self._cond:
            self._running_now = 0

    def _start_rows(self, stepper: PixelStepper, items: list[_Item]) -> list[_Live]:
        """Rows for newly admitted images; a failure fails only their requests."""
        if not items:
            return []
        inputs = []
        for it in items:
            r = it.req.req
            inputs.append(
                self.runner.row_input(r.spec, r.prompt, r.seeds[it.index], r.negative_prompt, r.init_image, r.mask)
            )
        try:
            rows = stepper.start(inputs)
        except Exception as e:
            log.exception("starting %d images failed", len(items))
            self._fail([it.req for it in items], e)
            return []
        return [
            _Live(it, row, preview_steps(row.steps, it.req.req.partial_images))
            for it, row in zip(items, rows, strict=True)
        ]

    def _after_step(self, stepper: PixelStepper, live: list[_Live]) -> list[_Live]:
        """Previews, then Progress, then finished images for a step just run; returns the rows still running."""
        live = [lv for lv in live if not (lv.item.req.aborted or lv.item.req.failed)]
        for lv in live:
            row, req = lv.row, lv.item.req.req
            if row.done in lv.preview_at and (preview := stepper.preview(row)) is not None:
                shown = self.runner.shown_preview(preview, req.spec, req.init_image, req.mask)
                lv.item.req.emit(Preview(lv.item.index, lv.preview_at.index(row.done), shown, row.done, row.steps))
        # One Progress per request: the step of its first image in this batch.
        for running, row in {id(lv.item.req): (lv.item.req, lv.row) for lv in reversed(live)}.values():
            running.emit(Progress(row.done, row.steps))
        for lv in live:
            if lv.row.finished:
                running, req, index = lv.item.req, lv.item.req.req, lv.item.index
                self.stats.images += 1
                with self._cond:
                    running.remaining -= 1
                running.emit(ImageDone(index, self.runner.fit(stepper.image(lv.row), req.spec), req.seeds[index]))
        return [lv for lv in live if not lv.row.finished]

    def _fail(self, requests: list[_Running], e: Exception) -> None:
        """End each of these requests (once) with a 500 naming the error; the engine keeps serving the rest."""
        error = ErrorInfo(
            status=500, type="server_error", code="generation_failed", message=f"image generation failed: {e}"
        )
        for m in {id(m): m for m in requests}.values():
            if not m.failed:
                m.failed = True
                self._drop(m.req.request_id)
                m.emit(Failed(error))

    # --- call-level ------------------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Item] | None:
        """The next call's images (see the module docstring), or None once stopped."""
        with self._cond:
            while not self._waiting and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            (first,) = self._waiting.take(1)
            spec = first.req.req.spec

            def fits(it: _Item) -> bool:
                return it.req.req.spec == spec

            deadline = time.monotonic() + self.config.batch_window_s
            while (left := deadline - time.monotonic()) > 0 and not self._stopped and not first.req.aborted:
                if 1 + sum(map(fits, self._waiting)) >= self.config.max_batch:
                    break
                self._cond.wait(left)
            batch = [first, *self._waiting.take(self.config.max_batch - 1, where=fits)]
            batch = [it for it in batch if not it.req.aborted]
            self._running_now = len(batch)
            return batch

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
            inputs.images = [it.req.req.init_image for it in batch]
            if spec.masked:
                inputs.masks = [it.req.req.mask for it in batch]
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
            self._fail(members, e)
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
