"""Batching on the engine thread, step-level (the pixel pipeline) and call-level: who shares a step or a call,
progress, seeds, priorities, failures and aborts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from PIL import Image

from ember.runtimes.image.engine import (
    Aborted,
    EngineConfig,
    EngineOverloaded,
    Event,
    Failed,
    ImageDone,
    ImageEngine,
    ImageRequest,
    Progress,
)
from ember.runtimes.image.loader import LoadedPipeline
from ember.runtimes.image.pipeline import BatchInput, BatchSpec, PipelineRunner, PreviewCallback, StepCallback
from ember.runtimes.image.stepper import PixelStepper, Row, RowInput

SPEC = BatchSpec(width=16, height=16, steps=2, guidance_scale=3.0)


class FailingStepper(PixelStepper):
    """The real stepper, except that a step with a "boom" image in it raises, like a model bug would."""

    def __init__(self, base: PixelStepper) -> None:
        super().__init__(base.unet, base.scheduler, base.encoder)
        self.doomed: set[int] = set()

    def start(self, inputs: list[RowInput]) -> list[Row]:
        rows = super().start(inputs)
        self.doomed |= {id(r) for r, inp in zip(rows, inputs, strict=True) if inp.prompt == "boom"}
        return rows

    def step(self, rows: list[Row]) -> None:
        if any(id(r) in self.doomed for r in rows):
            raise RuntimeError("the pipeline broke")
        super().step(rows)


class FailingRunner(PipelineRunner):
    """The real runner, except that "boom" breaks the call (call-level) or the step it is in (step-level)."""

    def __init__(self, loaded: LoadedPipeline) -> None:
        super().__init__(loaded.runner.pipe, native_size=(16, 16), resize_output=True)
        base = super().stepper
        self._failing = FailingStepper(base) if base is not None else None

    @property
    def stepper(self) -> PixelStepper | None:
        return self._failing

    def generate(
        self, batch: BatchInput, on_step: StepCallback | None = None, on_preview: PreviewCallback | None = None
    ) -> list[Image.Image]:
        if "boom" in batch.prompts:
            raise RuntimeError("the pipeline broke")
        return super().generate(batch, on_step, on_preview)


def running(eng: ImageEngine) -> Iterator[ImageEngine]:
    thread = threading.Thread(target=eng.run, daemon=True)
    thread.start()
    yield eng
    eng.stop()
    thread.join(10)


@pytest.fixture(params=["steps", "calls"])
def engine(request: pytest.FixtureRequest, pixel: LoadedPipeline) -> Iterator[ImageEngine]:
    config = EngineConfig(max_batch=4, max_waiting=8, batch_window_s=0.2, step_batching=request.param == "steps")
    yield from running(ImageEngine(FailingRunner(pixel), config))


@pytest.fixture
def stepwise(pixel: LoadedPipeline) -> Iterator[ImageEngine]:
    yield from running(ImageEngine(pixel.runner, EngineConfig(max_batch=4, max_waiting=8)))


def request(
    rid: str,
    prompt: str = "a red circle",
    seeds: tuple[int, ...] = (0,),
    spec: BatchSpec = SPEC,
    priority: int = 0,
    key: str = "",
) -> ImageRequest:
    return ImageRequest(request_id=rid, spec=spec, prompt=prompt, seeds=list(seeds), priority=priority, key=key)


async def drain(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


def images(events: list[Event]) -> list[ImageDone]:
    return [e for e in events if isinstance(e, ImageDone)]


def same(a: Image.Image, b: Image.Image) -> bool:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) <= 2


async def test_concurrent_requests_share_the_work_and_each_sees_progress(engine: ImageEngine) -> None:
    streams = [engine.generate(request(f"r{i}", seeds=(i,))) for i in range(3)]
    results = await asyncio.gather(*(drain(s) for s in streams))
    if engine.config.step_batching:
        # Three images of two steps; an image may join a step after the others.
        assert sum(engine.stats.batch_sizes) == 6 and max(engine.stats.batch_sizes) >= 2
    else:
        assert engine.stats.batch_sizes == [3]
    for events in results:
        assert [(e.step, e.steps) for e in events if isinstance(e, Progress)] == [(1, 2), (2, 2)]
        (done,) = images(events)
        assert done.image.size == (16, 16)


async def test_requests_of_other_sizes_and_steps_all_come_back(engine: ImageEngine) -> None:
    other = BatchSpec(width=32, height=32, steps=3, guidance_scale=1.0)
    streams = [
        engine.generate(request("a", seeds=(1, 2, 3))),
        engine.generate(request("b", spec=other)),
        engine.generate(request("c", seeds=(4, 5))),
    ]
    results = await asyncio.gather(*(drain(s) for s in streams))
    if engine.config.step_batching:
        # One batch of rows with their own schedules: 5 two-step images and a three-step one, 4 rows at most.
        assert sum(engine.stats.batch_sizes) == 5 * 2 + 3 and max(engine.stats.batch_sizes) == 4
    else:
        # a's three images and c's first fill the first call (max_batch=4); b and c's second come after.
        assert sorted(engine.stats.batch_sizes) == [1, 1, 4] and engine.stats.batch_sizes[0] == 4
    assert sorted(e.index for e in images(results[2])) == [0, 1]
    assert [e.image.size for e in images(results[1])] == [(32, 32)]


async def test_the_seed_gives_the_same_image_whatever_the_batch(engine: ImageEngine) -> None:
    (alone,) = images(await drain(engine.generate(request("solo", seeds=(42,)))))
    crowd = [engine.generate(request(f"c{i}", seeds=(s,))) for i, s in enumerate((9, 42, 11))]
    shared = [e for events in await asyncio.gather(*(drain(s) for s in crowd)) for e in images(events)]
    assert same(alone.image, next(e for e in shared if e.seed == 42).image)


async def test_a_failure_fails_only_the_requests_that_shared_it_and_the_engine_keeps_going(
    engine: ImageEngine,
) -> None:
    bad = engine.generate(request("bad", prompt="boom"))
    neighbour = engine.generate(request("neighbour"))  # it shares the failing call or step
    bad_events, neighbour_events = await asyncio.gather(drain(bad), drain(neighbour))
    for events in (bad_events, neighbour_events):
        assert isinstance(events[-1], Failed) and "the pipeline broke" in events[-1].error.message
        assert events[-1].error.status == 500
    after = await drain(engine.generate(request("after")))
    assert isinstance(after[-1], ImageDone)


async def test_abort_ends_the_stream_and_drops_waiting_images(engine: ImageEngine) -> None:
    stream = engine.generate(request("gone", seeds=tuple(range(8))))
    first = await anext(stream)
    engine.abort("gone")
    rest = [first, *[e async for e in stream]]
    assert isinstance(rest[-1], Aborted)
    assert engine.load()[1] == 0


async def test_an_idle_engine_reports_nothing_running(engine: ImageEngine) -> None:
    """What workers announce and /metrics shows: once its images are done, the engine runs none."""
    await drain(engine.generate(request("done", seeds=(1, 2))))
    for _ in range(100):  # the engine thread updates its count just after the last image is sent
        if engine.load() == (0, 0):
            break
        await asyncio.sleep(0.01)
    assert engine.load() == (0, 0)


async def test_an_image_joins_a_running_batch_between_steps(stepwise: ImageEngine, pixel: LoadedPipeline) -> None:
    long = BatchSpec(width=16, height=16, steps=6, guidance_scale=3.0)
    first = stepwise.generate(request("first", spec=long, seeds=(1,)))
    assert isinstance(await anext(first), Progress)  # its first step ran alone
    late = await drain(stepwise.generate(request("late", seeds=(2,))))
    rest = await drain(first)
    assert stepwise.stats.batch_sizes[0] == 1 and 2 in stepwise.stats.batch_sizes
    # The late image ran two steps beside the first one, which finished after it.
    assert [(e.step, e.steps) for e in late if isinstance(e, Progress)] == [(1, 2), (2, 2)]
    assert len(images(late)) == 1 and len(images(rest)) == 1
    (solo,) = pixel.runner.generate(BatchInput(SPEC, ["a red circle"], [2]))
    assert same(images(late)[0].image, solo)


@pytest.fixture
def one_row(pixel: LoadedPipeline) -> Iterator[ImageEngine]:
    yield from running(ImageEngine(pixel.runner, EngineConfig(max_batch=1)))


async def test_higher_priority_images_take_free_rows_first(one_row: ImageEngine) -> None:
    spec = BatchSpec(width=16, height=16, steps=3, guidance_scale=3.0)
    busy = one_row.generate(request("busy", spec=spec))
    assert isinstance(await anext(busy), Progress)
    order: list[str] = []

    async def track(rid: str, priority: int) -> None:
        await drain(one_row.generate(request(rid, spec=spec, priority=priority)))
        order.append(rid)

    await asyncio.gather(drain(busy), track("low", 0), track("high", 5))
    assert order == ["high", "low"]


@pytest.fixture(params=["steps", "calls"])
def one_place(request: pytest.FixtureRequest, pixel: LoadedPipeline) -> Iterator[ImageEngine]:
    config = EngineConfig(max_batch=1, batch_window_s=0.0, step_batching=request.param == "steps")
    yield from running(ImageEngine(pixel.runner, config))


async def test_a_key_with_many_images_does_not_starve_another_of_its_tier(one_place: ImageEngine) -> None:
    spec = BatchSpec(width=16, height=16, steps=3, guidance_scale=3.0)
    busy = one_place.generate(request("busy", spec=spec, key="c"))
    assert isinstance(await anext(busy), Progress)  # it holds the only place; what follows waits
    done: list[str] = []

    async def track(rid: str, key: str, n: int) -> None:
        async for event in one_place.generate(request(rid, spec=spec, seeds=tuple(range(n)), key=key)):
            if isinstance(event, ImageDone):
                done.append(rid)

    await asyncio.gather(drain(busy), track("flood", "a", 3), track("quiet", "b", 1))
    # Oldest first would be flood, flood, flood, quiet: the keys take turns instead.
    assert done == ["flood", "quiet", "flood", "flood"]


async def test_a_request_whose_images_wait_is_withdrawn_and_one_that_started_is_not(one_row: ImageEngine) -> None:
    """How an image worker hands a job it has not started to a worker that came up later."""
    spec = BatchSpec(width=16, height=16, steps=3, guidance_scale=3.0)
    busy = one_row.generate(request("busy", spec=spec, seeds=(1, 2)))
    assert isinstance(await anext(busy), Progress)  # its first image holds the only row
    waiting = one_row.generate(request("waiting", spec=spec, seeds=(3, 4)))
    assert not one_row.withdraw("busy")  # one of its images started
    assert one_row.withdraw("waiting")
    assert await drain(waiting) == []
    assert not one_row.withdraw("waiting")
    assert len(images(await drain(busy))) == 2
    assert one_row.load()[1] == 0


def test_a_full_queue_refuses_new_requests(pixel: LoadedPipeline) -> None:
    # No engine thread: nothing leaves the queue.
    eng = ImageEngine(pixel.runner, EngineConfig(max_batch=2, max_waiting=2))

    async def fill() -> None:
        eng.generate(request("a", seeds=(1, 2, 3, 4)))
        with pytest.raises(EngineOverloaded):
            eng.generate(request("b"))

    asyncio.run(fill())


def test_one_stepper_run_matches_the_pipeline_call(pixel: LoadedPipeline) -> None:
    # The runner's batched call is the stepper underneath: the same image as a diffusers-style pipe() call.
    (via_runner,) = pixel.runner.generate(BatchInput(SPEC, ["a blue square"], [3]))
    out = pixel.runner.pipe(prompt=["a blue square"], num_inference_steps=2, guidance_scale=3.0, seeds=[3])
    assert same(via_runner, out.images[0])
