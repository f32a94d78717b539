"""``client.images.generate`` (sync and async) against a real gateway and the real image worker on a tiny model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

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
