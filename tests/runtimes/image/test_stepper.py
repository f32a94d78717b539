"""Step-level batching: rows with their own schedules share UNet calls and still come out as if run alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ember.runtimes.image.loader import LoadedPipeline, load_pipeline
from ember.runtimes.image.pipeline import EmberPixelPipeline
from ember.runtimes.image.stepper import PixelStepper, Row, RowInput
from tests.helpers.tiny_diffusion import TINY_PIXEL_SIZE

SHIPPED = Path(__file__).resolve().parents[3] / "runtimes/image/weights/ember-shapes"


def stepper_of(loaded: LoadedPipeline) -> PixelStepper:
    pipe = loaded.runner.pipe
    assert isinstance(pipe, EmberPixelPipeline) and pipe.prompt_encoder is not None
    return PixelStepper(pipe.unet, pipe.scheduler, pipe.prompt_encoder)


def finish(stepper: PixelStepper, rows: list[Row]) -> list[np.ndarray]:
    while not all(r.finished for r in rows):
        stepper.step([r for r in rows if not r.finished])
    return [np.asarray(stepper.image(r), dtype=np.int16) for r in rows]


def alone(stepper: PixelStepper, inp: RowInput) -> np.ndarray:
    return finish(stepper, stepper.start([inp]))[0]


@torch.no_grad()
def reference(loaded: LoadedPipeline, inp: RowInput) -> np.ndarray:
    """The textbook loop for one image: classifier-free guidance and diffusers' own scheduler.step."""
    pipe = loaded.runner.pipe
    assert isinstance(pipe, EmberPixelPipeline) and pipe.prompt_encoder is not None
    size = pipe.resolution
    cond = pipe.prompt_encoder.encode([inp.prompt])[0]
    uncond = pipe.prompt_encoder.encode([inp.negative_prompt])[0]
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(inp.steps)
    x = torch.randn((1, 3, size, size), generator=torch.Generator().manual_seed(inp.seed))
    for t in scheduler.timesteps:
        if inp.guidance_scale > 1:
            u, c = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            out = u + inp.guidance_scale * (c - u)
        else:
            out = pipe.unet(x, t, encoder_hidden_states=cond).sample
        x = scheduler.step(out, t, x).prev_sample
    pixels = ((x[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255).round()
    return pixels.astype(np.int16)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_a_row_matches_the_textbook_denoising_loop(pixel: LoadedPipeline, guidance: float) -> None:
    inp = RowInput("a red circle", seed=4, steps=3, guidance_scale=guidance, negative_prompt="blue")
    assert np.abs(alone(stepper_of(pixel), inp) - reference(pixel, inp)).max() <= 1


def test_rows_that_differ_in_everything_share_calls_and_each_comes_out_as_alone(pixel: LoadedPipeline) -> None:
    stepper = stepper_of(pixel)
    source = Image.new("RGB", (TINY_PIXEL_SIZE, TINY_PIXEL_SIZE), "white")
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, TINY_PIXEL_SIZE // 2, TINY_PIXEL_SIZE))
    inputs = [
        RowInput("a red circle", seed=1, steps=5, guidance_scale=3.0),
        RowInput("a blue square", seed=2, steps=2, guidance_scale=1.0),
        RowInput("a green triangle", seed=3, steps=4, guidance_scale=2.0, negative_prompt="red"),
        RowInput("a yellow circle", seed=4, steps=6, guidance_scale=3.0, image=source, strength=0.5),
        RowInput("a red square", seed=5, steps=3, guidance_scale=3.0, image=source, mask=mask, strength=1.0),
    ]
    rows = stepper.start(inputs)
    # img2img runs int(steps * strength) of its steps; the others their own count.
    assert [r.steps for r in rows] == [5, 2, 4, 3, 3]
    together = finish(stepper, rows)
    for inp, got in zip(inputs, together, strict=True):
        assert np.abs(got - alone(stepper, inp)).max() <= 2, inp
    # The masked row kept its source outside the mask.
    assert (together[4][:, TINY_PIXEL_SIZE // 2 :] >= 254).all()


def test_a_row_joining_mid_flight_comes_out_as_alone(pixel: LoadedPipeline) -> None:
    stepper = stepper_of(pixel)
    first, late = RowInput("a red circle", 1, 6, 3.0), RowInput("a blue square", 2, 4, 3.0)
    rows = stepper.start([first])
    for _ in range(3):
        stepper.step(rows)
    rows += stepper.start([late])
    got = finish(stepper, rows)
    assert np.abs(got[0] - alone(stepper, first)).max() <= 2
    assert np.abs(got[1] - alone(stepper, late)).max() <= 2
    assert rows[0].estimate is not None and stepper.preview(rows[0]) is not None


def test_the_shipped_model_in_bfloat16_gives_a_lone_unguided_image_its_batched_self() -> None:
    stepper = stepper_of(load_pipeline(SHIPPED, dtype=torch.bfloat16))
    inputs = [
        RowInput(p, seed=s, steps=12, guidance_scale=1.0) for p, s in [("a green triangle", 9), ("a red circle", 3)]
    ]
    batched = finish(stepper, stepper.start(inputs * 3))
    for i, inp in enumerate(inputs):
        assert np.abs(alone(stepper, inp) - batched[i]).max() <= 2
