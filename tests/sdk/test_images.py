"""``client.images`` (generate, edit, create_variation, streaming; sync and async) against a real gateway and the
real image worker on a tiny model."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

import ember
from tests.helpers.cluster import GatewayThread
from tests.helpers.tiny_diffusion import image_settings, image_worker, write_tiny_pixel

MODEL = "tiny-pixel-sdk"
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def base_url(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, gateway: GatewayThread
) -> AsyncIterator[str]:
    folder = write_tiny_pixel(tmp_path_factory.mktemp("img") / MODEL)
    async with image_worker(image_settings(folder, MODEL), MODEL, nats_url, gateway.url):
        yield gateway.url + "/v1"


async def test_async_generate_decodes_to_pillow(base_url: str) -> None:
    async with ember.AsyncEmber(base_url=base_url, max_retries=0) as client:
        response = await client.images.generate(
            model=MODEL,
            prompt="a red circle",
            n=2,
            size="32x32",
            response_format="b64_json",
            seed=3,
            num_inference_steps=2,
            guidance_scale=2.0,
            negative_prompt="blue",
        )
    assert isinstance(response, ember.types.ImagesResponse) and len(response.data) == 2
    assert [im.size for im in response.to_pil()] == [(32, 32), (32, 32)]
    assert [d.seed for d in response.data] == [3, 4]


async def test_sync_generate_with_url_results_downloads_them(base_url: str) -> None:
    def call() -> list[tuple[int, int]]:
        with ember.Ember(base_url=base_url, max_retries=0) as client:
            response = client.images.generate(model=MODEL, prompt="a blue square")
            assert response.data[0].url is not None and response.data[0].b64_json is None
            return [im.size for im in response.to_pil()]

    # The worker runs on this event loop: the blocking client runs beside it.
    assert await asyncio.to_thread(call) == [(16, 16)]


async def test_errors_are_the_sdks_typed_errors(base_url: str) -> None:
    async with ember.AsyncEmber(base_url=base_url, max_retries=0) as client:
        with pytest.raises(ember.BadRequestError) as info:
            await client.images.generate(model=MODEL, prompt="a", size="48x48")
    assert info.value.param == "size"
    with pytest.raises(TypeError, match="promt"):
        ember.Ember(base_url=base_url).images.generate(model=MODEL, promt="typo")  # type: ignore[call-arg]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def red_with_clear_left_half() -> tuple[Image.Image, Image.Image]:
    """A red source and OpenAI's mask for it: transparent (edit here) on the left half, opaque on the right."""
    source = Image.new("RGB", (16, 16), (255, 0, 0))
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 8, 16))
    return source, mask


def assert_right_half_kept(img: Image.Image) -> None:
    arr = np.asarray(img.convert("RGB"), np.int16)
    assert np.abs(arr[:, 10:] - np.array([255, 0, 0])).max() <= 8
    assert np.abs(arr[:, :6] - np.array([255, 0, 0])).max() > 8


async def test_async_edit_with_a_mask_and_variations(base_url: str, tmp_path: Path) -> None:
    source, mask = red_with_clear_left_half()
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    async with ember.AsyncEmber(base_url=base_url, max_retries=0) as client:
        edited = await client.images.edit(
            model=MODEL,
            image=source,  # a Pillow image, sent as PNG
            mask=tmp_path / "mask.png",  # a path
            prompt="a blue square",
            response_format="b64_json",
            strength=1.0,
            seed=1,
        )
        varied = await client.images.create_variation(
            model=MODEL, image=("s.png", png_bytes(source)), n=2, response_format="b64_json", seed=4
        )
    assert isinstance(edited, ember.types.ImagesResponse)
    assert_right_half_kept(edited.to_pil()[0])
    assert [im.size for im in varied.to_pil()] == [(16, 16), (16, 16)] and [d.seed for d in varied.data] == [4, 5]


async def test_sync_edit_and_variation_with_file_objects(base_url: str) -> None:
    source, mask = red_with_clear_left_half()

    def call() -> tuple[ember.types.ImagesResponse, ember.types.ImagesResponse]:
        with ember.Ember(base_url=base_url, max_retries=0) as client:
            edited = client.images.edit(
                model=MODEL,
                image=io.BytesIO(png_bytes(source)),
                mask=png_bytes(mask),
                prompt="a blue square",
                response_format="b64_json",
                strength=1.0,
            )
            varied = client.images.create_variation(model=MODEL, image=io.BytesIO(png_bytes(source)))
            return edited, varied

    edited, varied = await asyncio.to_thread(call)
    assert_right_half_kept(edited.to_pil()[0])
    assert varied.data[0].url is not None and varied.to_pil()[0].size == (16, 16)


async def test_a_non_image_upload_is_a_bad_request_with_the_servers_message(base_url: str) -> None:
    async with ember.AsyncEmber(base_url=base_url, max_retries=0) as client:
        with pytest.raises(ember.BadRequestError) as info:
            await client.images.edit(model=MODEL, image=b"not an image", prompt="x")
    assert info.value.param == "image" and "not a readable image" in info.value.message
    with pytest.raises(TypeError, match="strenght"):
        ember.Ember(base_url=base_url).images.create_variation(image=b"x", strenght=0.5)  # type: ignore[call-arg]


async def test_stream_yields_typed_partial_and_completed_events(base_url: str) -> None:
    async with ember.AsyncEmber(base_url=base_url, max_retries=0) as client:
        stream = await client.images.generate(
            model=MODEL,
            prompt="a red circle",
            size="32x32",
            seed=2,
            num_inference_steps=4,
            stream=True,
            partial_images=2,
        )
        async with stream:
            events = [event async for event in stream]
        plain = await client.images.generate(
            model=MODEL, prompt="a red circle", size="32x32", seed=2, num_inference_steps=4, response_format="b64_json"
        )
    assert all(isinstance(e, ember.types.ImageStreamEvent) for e in events)
    assert [(e.type, e.partial_image_index) for e in events] == [
        ("image_generation.partial_image", 0),
        ("image_generation.partial_image", 1),
        ("image_generation.completed", None),
    ]
    assert [e.to_pil().size for e in events] == [(32, 32)] * 3
    assert events[-1].b64_json == plain.data[0].b64_json and events[-1].seed == 2
