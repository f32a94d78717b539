"""Partial images (streaming previews): which steps, which rows, and that asking for them changes no final image."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
from PIL import Image

from ember.runtimes.image.engine import EngineConfig, Event, ImageDone, ImageEngine, ImageRequest, Preview, Progress
from ember.runtimes.image.loader import LoadedPipeline
from ember.runtimes.image.pipeline import BatchInput, BatchSpec, preview_steps


def same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("steps", "k", "chosen"),
    [(4, 2, [1, 3]), (4, 3, [1, 2, 3]), (10, 1, [5]), (20, 3, [5, 10, 15]), (2, 3, [1]), (1, 2, []), (4, 0, [])],
)
def test_previews_are_evenly_spaced_and_never_the_last_step(steps: int, k: int, chosen: list[int]) -> None:
    assert preview_steps(steps, k) == chosen


def run_with_previews(
    loaded: LoadedPipeline, batch: BatchInput
) -> tuple[list[Image.Image], list[tuple[int, int, int, tuple[int, int]]], list[int]]:
    """(images, previews as (row, number, step, size), steps in the order they were reported)."""
    previews: list[tuple[int, int, int, tuple[int, int]]] = []
    order: list[int] = []

    def on_preview(row: int, j: int, step: int, image: Image.Image) -> None:
        previews.append((row, j, step, image.size))
        order.append(-step)

    images = loaded.runner.generate(batch, lambda i, n: bool(order.append(i)), on_preview)
    return images, previews, order


def test_pixel_pipeline_previews_only_the_rows_that_asked_at_their_steps(pixel: LoadedPipeline) -> None:
    spec = BatchSpec(width=32, height=32, steps=4, guidance_scale=3.0)
    prompts, seeds = ["a red circle", "a blue square", "a green triangle"], [1, 2, 3]
    plain = pixel.runner.generate(BatchInput(spec, prompts, seeds))
    images, previews, order = run_with_previews(pixel, BatchInput(spec, prompts, seeds, partial_images=[2, 0, 1]))
    assert same(images, plain)  # previews are read off the run, they do not change it
    assert sorted(previews) == [(0, 0, 1, (32, 32)), (0, 1, 3, (32, 32)), (2, 0, 2, (32, 32))]
    # A step's previews come before its progress.
    assert order == [-1, 1, -2, 2, -3, 3, 4]


def test_pixel_edit_previews_keep_the_source_outside_the_mask(pixel: LoadedPipeline) -> None:
    source = Image.new("RGB", (16, 16), (255, 0, 0))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))  # repaint the left half only
    spec = BatchSpec(width=16, height=16, steps=4, guidance_scale=3.0, strength=1.0, masked=True)
    batch = BatchInput(spec, ["a blue square"], [3], images=[source], masks=[mask], partial_images=[1])
    got: list[Image.Image] = []
    pixel.runner.generate(batch, on_preview=lambda row, j, step, image: got.append(image))
    (preview,) = got
    arr = np.asarray(preview, np.int16)
    assert np.abs(arr[:, 8:] - np.array([255, 0, 0])).max() == 0
    assert np.abs(arr[:, :8] - np.array([255, 0, 0])).max() > 8


def test_stable_diffusion_previews_are_vae_decoded_x0_and_change_nothing(sd: LoadedPipeline) -> None:
    spec = BatchSpec(width=32, height=32, steps=4, guidance_scale=3.0)
    plain = sd.runner.generate(BatchInput(spec, ["a cat", "a dog"], [1, 2]))
    images, previews, _ = run_with_previews(sd, BatchInput(spec, ["a cat", "a dog"], [1, 2], partial_images=[0, 2]))
    assert same(images, plain)
    assert sorted(previews) == [(1, 0, 1, (32, 32)), (1, 1, 3, (32, 32))]
    # The scheduler is itself again after the call.
    assert "step" not in vars(sd.runner.pipe.scheduler)


async def drain(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


@pytest.fixture
def engine(pixel: LoadedPipeline) -> Iterator[ImageEngine]:
    eng = ImageEngine(pixel.runner, EngineConfig(max_batch=4, max_waiting=8, batch_window_s=0.2))
    thread = threading.Thread(target=eng.run, daemon=True)
    thread.start()
    yield eng
    eng.stop()
    thread.join(10)


async def test_requests_with_different_partial_counts_share_a_call(engine: ImageEngine) -> None:
    spec = BatchSpec(width=16, height=16, steps=4, guidance_scale=3.0)
    wants = ImageRequest("wants", spec, "a red circle", seeds=[5, 6], partial_images=2)
    plain = ImageRequest("plain", spec, "a red circle", seeds=[7])
    a, b = await asyncio.gather(drain(engine.generate(wants)), drain(engine.generate(plain)))
    # Three images of 4 steps each, sharing steps (step-level batching: rows may join a step later).
    assert sum(engine.stats.batch_sizes) == 12
    assert not [e for e in b if isinstance(e, Preview)]
    got = sorted((e.index, e.partial_image_index, e.step, e.steps) for e in a if isinstance(e, Preview))
    assert got == [(0, 0, 1, 4), (0, 1, 3, 4), (1, 0, 1, 4), (1, 1, 3, 4)]
    # Progress is unchanged by previews: once per step, and a step's previews come before it.
    assert [(e.step, e.steps) for e in a if isinstance(e, Progress)] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    kinds = [type(e).__name__ for e in a]
    assert kinds[:4] == ["Preview", "Preview", "Progress", "Progress"]
    # The same seed alone, without previews: the same image.
    alone = await drain(engine.generate(ImageRequest("alone", spec, "a red circle", seeds=[6])))
    (x,) = [e.image for e in alone if isinstance(e, ImageDone)]
    (y,) = [e.image for e in a if isinstance(e, ImageDone) and e.index == 1]
    assert np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max() <= 2
