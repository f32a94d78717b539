"""The pixel pipeline and the loader on tiny random checkpoints in the real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ember.runtimes.image.loader import ImageModelLoadError, LoadedPipeline, load_pipeline
from ember.runtimes.image.pipeline import BatchInput, BatchSpec, EmberPixelPipeline
from ember.runtimes.image.train.shapes import read
from tests.helpers.tiny_diffusion import TINY_PIXEL_SIZE, write_tiny_pixel, write_tiny_sd


def spec(size: int = TINY_PIXEL_SIZE, steps: int = 2, **kw: object) -> BatchSpec:
    return BatchSpec(width=size, height=size, steps=steps, guidance_scale=3.0, **kw)  # type: ignore[arg-type]


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_pixel_folder_loads_with_its_defaults_and_sizes(pixel: LoadedPipeline) -> None:
    assert isinstance(pixel.runner.pipe, EmberPixelPipeline)
    assert pixel.default_steps == 2 and pixel.default_guidance_scale == 1.5
    assert pixel.default_size == (16, 16)
    assert (64, 64) in pixel.sizes and (48, 48) not in pixel.sizes
    # The folder refers to the text encoder's package instead of carrying a copy of it.
    assert not any(p.suffix == ".safetensors" and "unet" not in p.parts for p in pixel.path.rglob("*"))


def test_steps_are_reported_and_the_seed_alone_decides_the_image(pixel: LoadedPipeline) -> None:
    steps: list[tuple[int, int]] = []
    alone = pixel.runner.generate(BatchInput(spec(), ["a red circle"], [7]), lambda i, n: bool(steps.append((i, n))))
    assert steps == [(1, 2), (2, 2)]
    batch = pixel.runner.generate(BatchInput(spec(), ["a blue square", "a red circle", "x"], [1, 7, 2]))
    assert [im.size for im in batch] == [(16, 16)] * 3
    # Same prompt and seed, another batch: the same image (to float noise across batch shapes).
    assert np.abs(pixels(alone[0]) - pixels(batch[1])).max() <= 2
    assert np.abs(pixels(batch[0]) - pixels(batch[1])).max() > 2


def test_step_callback_can_stop_a_call_early(pixel: LoadedPipeline) -> None:
    seen: list[int] = []
    pixel.runner.generate(BatchInput(spec(steps=5), ["a"], [0]), lambda i, n: seen.append(i) is None)
    assert seen == [1]


def test_results_are_resized_to_the_requested_size(pixel: LoadedPipeline) -> None:
    (img,) = pixel.runner.generate(BatchInput(spec(size=64), ["a green triangle"], [0]))
    assert img.size == (64, 64) and img.mode == "RGB"


def test_image_to_image_keeps_the_unmasked_part(pixel: LoadedPipeline) -> None:
    source = Image.new("RGB", (16, 16), (255, 0, 0))
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 16))  # repaint the left half only
    batch = BatchInput(spec(steps=4, strength=1.0, masked=True), ["a blue square"], [3], images=[source], masks=[mask])
    (out,) = pixel.runner.generate(batch)
    arr = pixels(out)
    assert np.abs(arr[:, 10:] - np.array([255, 0, 0])).max() <= 8  # kept
    assert np.abs(arr[:, :6] - np.array([255, 0, 0])).max() > 8  # repainted


def test_a_standard_stable_diffusion_folder_loads_and_runs(sd: LoadedPipeline) -> None:
    assert type(sd.runner.pipe).__name__ == "StableDiffusionPipeline"
    assert sd.default_size == (32, 32) and sd.default_steps == 25 and sd.default_guidance_scale == 7.5
    steps: list[int] = []
    batch = BatchInput(spec(32, negative=True), ["a cat", "a dog"], [1, 2], negative_prompts=["blurry", "dark"])
    out = sd.runner.generate(batch, lambda i, n: bool(steps.append(i)))
    assert [im.size for im in out] == [(32, 32), (32, 32)] and steps == [1, 2]
    again = sd.runner.generate(BatchInput(spec(32, negative=True), ["a dog"], [2], negative_prompts=["dark"]))
    assert np.abs(pixels(again[0]) - pixels(out[1])).max() <= 2
    (edited,) = sd.runner.generate(BatchInput(spec(32, steps=4, strength=0.5), ["a cat"], [1], images=[out[0]]))
    assert edited.size == (32, 32)


def test_lcm_and_turbo_layouts_get_few_step_defaults(tmp_path: Path) -> None:
    lcm = load_pipeline(write_tiny_sd(tmp_path / "tiny-lcm", scheduler="LCMScheduler"))
    assert (lcm.default_steps, lcm.default_guidance_scale) == (4, 1.0)
    turbo = write_tiny_sd(tmp_path / "tiny-sd-turbo")
    (turbo / "ember_pipeline.json").write_text(json.dumps({"sizes": ["32x32", "64x32"]}))
    loaded = load_pipeline(turbo)
    assert (loaded.default_steps, loaded.default_guidance_scale) == (1, 0.0)
    assert loaded.sizes == [(32, 32), (64, 32)]


def test_a_pixel_folder_can_carry_its_own_text_encoder(tmp_path: Path) -> None:
    """`text_encoder_dir`: the encoder inside the folder (here a tiny random BERT), no package needed."""
    loaded = load_pipeline(write_tiny_pixel(tmp_path / "own", own_encoder=True))
    assert loaded.runner.pipe.prompt_encoder.dim == 32
    first, again = (loaded.runner.generate(BatchInput(spec(), ["a red circle"], [3]))[0] for _ in range(2))
    assert first.size == (16, 16)
    assert np.abs(pixels(first) - pixels(again)).max() <= 2
    states, mask = loaded.runner.pipe.prompt_encoder.encode(["a red circle", "a blue square"])
    assert states.shape == (2, 16, 32) and mask[:, 0].all()
    assert not torch.allclose(states[0], states[1])  # each prompt its own states
    folder = write_tiny_pixel(tmp_path / "lost", own_encoder=True)
    for f in (folder / "text_encoder").iterdir():
        f.unlink()
    (folder / "text_encoder").rmdir()
    with pytest.raises(ImageModelLoadError, match="text_encoder_dir"):
        load_pipeline(folder)


def test_bad_folders_are_refused_with_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ImageModelLoadError, match=r"model_index\.json"):
        load_pipeline(tmp_path)
    folder = write_tiny_pixel(tmp_path / "broken")
    for f in (folder / "unet").iterdir():
        f.unlink()
    (folder / "unet").rmdir()
    with pytest.raises(ImageModelLoadError, match="unet"):
        load_pipeline(folder)


@pytest.fixture(scope="module")
def shipped_bf16() -> LoadedPipeline:
    return load_pipeline(
        Path(__file__).resolve().parents[3] / "runtimes/image/weights/ember-shapes", dtype=torch.bfloat16
    )


def test_the_shipped_model_in_bfloat16_draws_what_it_is_asked_and_ignores_its_batch(
    shipped_bf16: LoadedPipeline,
) -> None:
    assert shipped_bf16.runner.pipe.unet.dtype == torch.bfloat16
    # The UNet is stored NHWC (the loader's layout for convolutions).
    conv = shipped_bf16.runner.pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    fast = BatchSpec(width=32, height=32, steps=20, guidance_scale=1.5)
    (alone,) = shipped_bf16.runner.generate(BatchInput(fast, ["a red circle"], [3]))
    batch = shipped_bf16.runner.generate(
        BatchInput(fast, ["a blue square", "a red circle", "a green triangle"], [5, 3, 9])
    )
    assert np.abs(pixels(alone) - pixels(batch[1])).max() <= 2
    for im, (colour, shape) in zip(batch, [("blue", "square"), ("red", "circle"), ("green", "triangle")], strict=True):
        reading = read(im)
        assert (reading.colour, reading.shape) == (colour, shape), reading
