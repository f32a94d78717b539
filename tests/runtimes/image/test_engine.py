"""Dynamic batching on the engine thread: who shares a call, progress, seeds, failures and aborts."""

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
from ember.runtimes.image.loader import LoadedPipeline, load_pipeline
from ember.runtimes.image.pipeline import BatchInput, BatchSpec, PipelineRunner, PreviewCallback, StepCallback
from tests.helpers.tiny_diffusion import write_tiny_pixel

SPEC = BatchSpec(width=16, height=16, steps=2, guidance_scale=3.0)


class FailingRunner(PipelineRunner):
    """The real runner, except that a call with the prompt "boom" in it raises, like a pipeline bug would."""

    def generate(
        self, batch: BatchInput, on_step: StepCallback | None = None, on_preview: PreviewCallback | None = None
    ) -> list[Image.Image]:
        if "boom" in batch.prompts:
            raise RuntimeError("the pipeline broke")
        return super().generate(batch, on_step, on_preview)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedPipeline:
    return load_pipeline(write_tiny_pixel(tmp_path_factory.mktemp("img") / "tiny-pixel"))


@pytest.fixture
def engine(loaded: LoadedPipeline) -> Iterator[ImageEngine]:
    runner = FailingRunner(loaded.runner.pipe, native_size=(16, 16), resize_output=True)
    eng = ImageEngine(runner, EngineConfig(max_batch=4, max_waiting=8, batch_window_s=0.2))
    thread = threading.Thread(target=eng.run, daemon=True)
    thread.start()
    yield eng
    eng.stop()
    thread.join(10)


def request(
    rid: str, prompt: str = "a red circle", seeds: tuple[int, ...] = (0,), spec: BatchSpec = SPEC
) -> ImageRequest:
    return ImageRequest(request_id=rid, spec=spec, prompt=prompt, seeds=list(seeds))


async def drain(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


async def test_concurrent_requests_with_one_spec_share_a_call_and_each_sees_progress(engine: ImageEngine) -> None:
    streams = [engine.generate(request(f"r{i}", seeds=(i,))) for i in range(3)]
    results = await asyncio.gather(*(drain(s) for s in streams))
    assert engine.stats.batch_sizes == [3]
    for events in results:
        assert [(e.step, e.steps) for e in events if isinstance(e, Progress)] == [(1, 2), (2, 2)]
        (done,) = [e for e in events if isinstance(e, ImageDone)]
        assert done.image.size == (16, 16)


async def test_other_specs_wait_for_their_own_call_and_a_job_may_span_calls(engine: ImageEngine) -> None:
    other = BatchSpec(width=32, height=32, steps=2, guidance_scale=3.0)
    streams = [
        engine.generate(request("a", seeds=(1, 2, 3))),
        engine.generate(request("b", spec=other)),
        engine.generate(request("c", seeds=(4, 5))),
    ]
    results = await asyncio.gather(*(drain(s) for s in streams))
    # a's three images and c's first fill the first call (max_batch=4); b and c's second come after.
    assert sorted(engine.stats.batch_sizes) == [1, 1, 4]
    assert engine.stats.batch_sizes[0] == 4
    assert sorted(e.index for e in results[2] if isinstance(e, ImageDone)) == [0, 1]
    assert [e.image.size for e in results[1] if isinstance(e, ImageDone)] == [(32, 32)]


async def test_the_seed_gives_the_same_image_whatever_the_batch(engine: ImageEngine) -> None:
    (alone,) = [e for e in await drain(engine.generate(request("solo", seeds=(42,)))) if isinstance(e, ImageDone)]
    crowd = [engine.generate(request(f"c{i}", seeds=(s,))) for i, s in enumerate((9, 42, 11))]
    shared = [
        e for events in await asyncio.gather(*(drain(s) for s in crowd)) for e in events if isinstance(e, ImageDone)
    ]
    assert engine.stats.batch_sizes == [1, 3]
    same = next(e for e in shared if e.seed == 42)
    diff = np.abs(np.asarray(alone.image, np.int16) - np.asarray(same.image, np.int16))
    assert diff.max() <= 2


async def test_a_failing_call_fails_only_its_requests_and_the_engine_keeps_going(engine: ImageEngine) -> None:
    bad = engine.generate(request("bad", prompt="boom"))
    neighbour = engine.generate(request("neighbour"))  # same spec: it shares the failing call
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


def test_a_full_queue_refuses_new_requests(loaded: LoadedPipeline) -> None:
    # No engine thread: nothing leaves the queue.
    eng = ImageEngine(loaded.runner, EngineConfig(max_batch=2, max_waiting=2))

    async def fill() -> None:
        eng.generate(request("a", seeds=(1, 2, 3, 4)))
        with pytest.raises(EngineOverloaded):
            eng.generate(request("b"))

    asyncio.run(fill())
