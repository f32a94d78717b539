"""POST /v1/images/* over real HTTP, a real gateway and the real image worker (in this process) on a tiny model."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from ember.bus.client import JobClient, JobRefused
from ember.bus.connection import connect
from ember.bus.messages import ImageJob, ImageProgress, ImageResult, JobStatus, StreamReply
from tests.helpers.cluster import GatewayThread
from tests.helpers.tiny_diffusion import image_settings, image_worker, write_tiny_pixel

MODEL = "tiny-pixel-api"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(tmp_path_factory: pytest.TempPathFactory, nats_url: str, gateway: GatewayThread) -> AsyncIterator[str]:
    folder = write_tiny_pixel(tmp_path_factory.mktemp("img") / MODEL)
    settings = image_settings(folder, MODEL, max_batch=4)
    async with image_worker(settings, MODEL, nats_url, gateway.url):
        yield gateway.url


async def post(url: str, path: str, **kw: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        return await http.post(path, **kw)  # type: ignore[arg-type]


def png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    return img


pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_b64_json_images_in_openais_shape_and_the_seed_reproduces_them(api: str) -> None:
    body = {"model": MODEL, "prompt": "a red circle", "n": 2, "size": "32x32", "response_format": "b64_json"}
    r = await post(api, "/v1/images/generations", json={**body, "seed": 5, "num_inference_steps": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    assert isinstance(data["created"], int) and len(data["data"]) == 2
    assert [d["seed"] for d in data["data"]] == [5, 6]
    images = [png(d["b64_json"]) for d in data["data"]]
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    again = (await post(api, "/v1/images/generations", json={**body, "n": 1, "seed": 6})).json()["data"][0]
    diff = np.abs(np.asarray(png(again["b64_json"]), np.int16) - np.asarray(images[1], np.int16))
    assert diff.max() <= 2  # image 1 of seed 5 is image 0 of seed 6
    other = (await post(api, "/v1/images/generations", json={**body, "n": 1, "seed": 99})).json()["data"][0]
    assert other["b64_json"] != data["data"][0]["b64_json"]


async def test_jpeg_output_and_the_models_default_size(api: str) -> None:
    body = {"model": MODEL, "prompt": "a blue square", "response_format": "b64_json", "output_format": "jpeg"}
    r = await post(api, "/v1/images/generations", json=body)
    assert r.status_code == 200, r.text
    img = Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"])))
    assert img.format == "JPEG" and img.size == (16, 16)


async def test_url_results_are_served_by_the_gateway_under_an_unguessable_name(api: str) -> None:
    r = await post(api, "/v1/images/generations", json={"model": MODEL, "prompt": "a green triangle"})
    assert r.status_code == 200, r.text
    url = r.json()["data"][0]["url"]
    name = url.rsplit("/", 1)[1]
    assert url.startswith(api + "/v1/images/files/") and len(name.split(".")[0]) >= 40
    async with httpx.AsyncClient(timeout=10) as http:
        got = await http.get(url)
        assert got.status_code == 200 and got.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(got.content)).size == (16, 16)
        missing = await http.get(url.replace(name[:10], "A" * 10))
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "image_not_found"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": "   "}, "prompt", "invalid_value"),
        ({"prompt": "a", "n": 11}, "n", "invalid_value"),
        ({"prompt": "a", "size": "big"}, "size", "invalid_value"),
        ({"prompt": "a", "size": "48x48"}, "size", "unsupported_size"),
        ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps", "invalid_value"),
        ({"prompt": "a", "num_inference_steps": 201}, "num_inference_steps", "invalid_value"),
        ({"prompt": "a", "response_format": "gif"}, "response_format", "invalid_value"),
        ({"prompt": "a", "stream": True, "partial_images": 4}, "partial_images", "invalid_value"),
        ({"prompt": "a", "stream": True, "partial_images": -1}, "partial_images", "invalid_value"),
        ({"prompt": "a", "stream": True, "response_format": "url"}, "response_format", "unsupported_parameter"),
    ],
)
async def test_bad_requests_get_400_naming_the_parameter(
    api: str, body: dict[str, object], param: str, code: str
) -> None:
    r = await post(api, "/v1/images/generations", json={"model": MODEL, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1"])
async def test_guidance_scale_must_be_a_finite_non_negative_number(api: str, value: str) -> None:
    raw = f'{{"model": "{MODEL}", "prompt": "a", "guidance_scale": {value}}}'
    r = await post(api, "/v1/images/generations", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "guidance_scale"


async def test_unknown_model_is_404(api: str) -> None:
    r = await post(api, "/v1/images/generations", json={"model": "no-such-image-model", "prompt": "a"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def test_edits_repaint_only_the_transparent_part_of_the_mask(api: str) -> None:
    source = Image.new("RGB", (16, 16), (255, 0, 0))
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 8, 16))  # transparent left half: edit there
    files = {"image": ("src.png", _png_bytes(source), "image/png"), "mask": ("mask.png", _png_bytes(mask), "image/png")}
    form = {"model": MODEL, "prompt": "a blue square", "response_format": "b64_json", "strength": "1.0", "seed": "1"}
    r = await post(api, "/v1/images/edits", data=form, files=files)
    assert r.status_code == 200, r.text
    arr = np.asarray(png(r.json()["data"][0]["b64_json"]), np.int16)
    assert np.abs(arr[:, 10:] - np.array([255, 0, 0])).max() <= 8
    assert np.abs(arr[:, :6] - np.array([255, 0, 0])).max() > 8


async def test_variations_and_bad_uploads(api: str) -> None:
    source = _png_bytes(Image.new("RGB", (40, 40), (0, 0, 255)))
    form = {"model": MODEL, "n": "2", "response_format": "b64_json"}
    r = await post(api, "/v1/images/variations", data=form, files={"image": ("s.png", source, "image/png")})
    assert r.status_code == 200, r.text
    assert [png(d["b64_json"]).size for d in r.json()["data"]] == [(16, 16), (16, 16)]
    bad = await post(api, "/v1/images/variations", data=form, files={"image": ("s.png", b"not an image", "image/png")})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "image"
    missing = await post(api, "/v1/images/edits", data={"model": MODEL, "prompt": "x"}, files={"other": ("a", b"1")})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "image"
    as_json = await post(api, "/v1/images/edits", json={"model": MODEL, "prompt": "x"})
    assert as_json.status_code == 400


async def test_the_bus_streams_progress_then_one_result_per_image(api: str, nats_url: str) -> None:
    nc = await connect(nats_url, name="test-images-bus")
    client = JobClient(nc)
    await client.start()
    try:
        job = ImageJob(request_id="bus-1", model=MODEL, prompt="a red circle", n=2, steps=3, seed=10)
        stream = await client.submit(job, StreamReply)
        await stream.wait_accepted(30)
        replies = [r async for r in stream]
        progress = [(r.step, r.steps) for r in replies if isinstance(r, ImageProgress)]
        assert progress == [(1, 3), (2, 3), (3, 3)]
        results = [r for r in replies if isinstance(r, ImageResult)]
        assert sorted(r.index for r in results) == [0, 1] and [
            r.seed for r in sorted(results, key=lambda r: r.index)
        ] == [10, 11]
        assert replies[-1] is results[-1] and results[-1].status == JobStatus.FINISHED_STOPPED
        assert all(r.b64 and r.object is None for r in results)
        # A job the worker cannot decode fails alone; the worker serves the next one.
        bad = ImageJob(request_id="bus-2", model=MODEL, prompt="x", init_image="%%%")
        with pytest.raises(JobRefused, match="base64"):
            await (await client.submit(bad, StreamReply)).wait_accepted(30)
        ok = await client.submit(ImageJob(request_id="bus-3", model=MODEL, prompt="y", steps=1), StreamReply)
        await ok.wait_accepted(30)
        assert [r.kind async for r in ok][-1] == "image_result"
    finally:
        await client.stop()
        await nc.close()


def sse_events(text: str) -> list[dict[str, object]]:
    """The JSON of every ``data:`` event (the image stream ends without ``[DONE]``, like OpenAI's)."""
    events = [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data: ")]
    assert "[DONE]" not in events
    return [json.loads(e) for e in events]


async def stream(url: str, path: str, **kw: object) -> tuple[httpx.Response, list[dict[str, object]]]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async with http.stream("POST", path, **kw) as r:  # type: ignore[arg-type]
            text = (await r.aread()).decode()
    return r, sse_events(text) if r.status_code == 200 else []


async def test_stream_sends_partial_images_then_each_completed_image(api: str) -> None:
    body = {"model": MODEL, "prompt": "a red circle", "n": 2, "size": "32x32", "seed": 8, "num_inference_steps": 4}
    r, events = await stream(api, "/v1/images/generations", json={**body, "stream": True, "partial_images": 2})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    for index in (0, 1):
        mine = [e for e in events if e["index"] == index]
        assert [(e["type"], e.get("partial_image_index")) for e in mine] == [
            ("image_generation.partial_image", 0),
            ("image_generation.partial_image", 1),
            ("image_generation.completed", None),
        ]
        for e in mine:
            assert png(str(e["b64_json"])).size == (32, 32)
            assert (e["size"], e["output_format"]) == ("32x32", "png") and isinstance(e["created_at"], int)
        assert mine[-1]["seed"] == 8 + index and mine[-1]["usage"] == {"images": 1}
    # The streamed images are the images of the same request without stream.
    plain = await post(api, "/v1/images/generations", json={**body, "response_format": "b64_json"})
    assert [d["b64_json"] for d in plain.json()["data"]] == [
        e["b64_json"]
        for e in sorted(events, key=lambda e: int(e["index"]))
        if e["type"] == "image_generation.completed"
    ]


async def test_stream_without_partial_images_sends_only_the_completed_events(api: str) -> None:
    r, events = await stream(api, "/v1/images/generations", json={"model": MODEL, "prompt": "a", "stream": True})
    assert r.status_code == 200
    assert [e["type"] for e in events] == ["image_generation.completed"]
    assert png(str(events[0]["b64_json"])).size == (16, 16)


async def test_edits_stream_as_image_edit_events(api: str) -> None:
    source = _png_bytes(Image.new("RGB", (16, 16), (255, 0, 0)))
    form = {"model": MODEL, "prompt": "a blue square", "stream": "true", "partial_images": "1", "strength": "1.0"}
    form |= {"num_inference_steps": "4"}
    r, events = await stream(api, "/v1/images/edits", data=form, files={"image": ("s.png", source, "image/png")})
    assert r.status_code == 200
    assert [e["type"] for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    bad = await post(api, "/v1/images/edits", data={**form, "partial_images": "9"}, files={"image": ("s.png", source)})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "partial_images"


async def test_errors_before_the_stream_are_json_errors(api: str) -> None:
    r, _ = await stream(
        api, "/v1/images/generations", json={"model": MODEL, "prompt": "a", "size": "48x48", "stream": True}
    )
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
