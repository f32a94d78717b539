"""Bad input gets a 4xx at once and costs the platform nothing: deep JSON, a model of the wrong modality, chunked
uploads past the limit, uploads that are not audio files (an SDP session, playlists) and audio past the cap.

A real gateway, the session's text worker and a real audio worker process (a tiny random Whisper) over NATS.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ember.config import load_settings
from ember.gateway.errors import InvalidRequest
from ember.gateway.routes.common import json_depth_exceeds, parse_json
from tests.conftest import TINY
from tests.helpers.audio_files import NOT_AUDIO, SDP, silent_wav, tone_wav
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.tiny_whisper import write_tiny_whisper

AUDIO = "tiny-whisper"
IMAGE = "paint-unserved"  # configured, never served: what the gateway knows of it is the config
CAP_S = 20  # [audio] max_duration_s
MAX_BODY = 256 * 1024  # [gateway] max_body_bytes: room for a 100 kB JSON bomb
DEPTH = 64  # [gateway] max_json_depth (the default)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, nats_url: str, tiny_model: Path, tiny_worker: str) -> Iterator[str]:
    """A gateway with a small body limit, and an audio worker whose duration cap is 20 s; yields its URL."""
    root = tmp_path_factory.mktemp("bad-input")
    checkpoint = write_tiny_whisper(root / "tiny.pt")
    config = write_config(
        root / "ember.toml",
        {
            TINY: {"path": str(tiny_model), "max_batch": 4},
            AUDIO: {"modality": "audio", "path": str(checkpoint), "max_batch": 4},
            IMAGE: {"modality": "image", "path": str(root / "no-weights")},
        },
        gateway={"max_body_bytes": MAX_BODY},
        audio={"max_duration_s": CAP_S, "decode_threads": 1},
        auth={"enabled": False},
    )
    gw = GatewayThread(load_settings(config), nats_url).start()
    log = root / "audio-worker.log"
    worker = start_worker(config, AUDIO, nats_url, log=log, modality="audio")
    try:
        wait_for_model(gw.url, AUDIO, timeout=60)
        wait_for_model(gw.url, TINY, timeout=60)
        yield gw.url
    finally:
        stop_process(worker)
        gw.stop()
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def error(r: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == code, body
    return body


def chat_body(model: str = TINY) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def transcribe(base: str, data: bytes, model: str = AUDIO, filename: str = "a.wav") -> httpx.Response:
    files = {"file": (filename, data, "audio/wav")}
    return httpx.post(f"{base}/v1/audio/transcriptions", files=files, data={"model": model}, timeout=60)


# -- JSON ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/images/generations"])
def test_json_nested_past_the_limit_is_400_not_500(api: str, path: str) -> None:
    bombs = {
        "unclosed": b"[" * 100_000,  # the parser's own recursion limit: was a 500 (RecursionError)
        "valid-but-deep": b'{"a": ' * (DEPTH + 1) + b"1" + b"}" * (DEPTH + 1),
        "deep-inside-a-request": (b'{"model": "x", "messages": ' + b"[" * 200 + b"]" * 200 + b"}"),
    }
    for name, raw in bombs.items():
        r = httpx.post(f"{api}{path}", content=raw, headers={"content-type": "application/json"}, timeout=30)
        body = error(r, 400, "invalid_json")
        assert f"more than {DEPTH} levels deep" in body["message"], (name, body)


def test_normal_bodies_are_untouched_by_the_depth_limit(api: str) -> None:
    r = httpx.post(f"{api}/v1/chat/completions", json=chat_body(), timeout=60)
    assert r.status_code == 200, r.text
    # A tool with a nested schema, well within the limit, is still a request like any other.
    nested: dict[str, object] = {"type": "string"}
    for _ in range(8):
        nested = {"type": "object", "properties": {"x": nested}}
    tool = {"type": "function", "function": {"name": "f", "parameters": nested}}
    # required: auto adds guidance to the prompt that this tiny model's 512-token context has no room for.
    body = {**chat_body(), "tools": [tool], "tool_choice": "required"}
    r = httpx.post(f"{api}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text


def test_the_depth_is_counted_exactly() -> None:
    def nest(n: int) -> object:
        value: object = 0
        for i in range(n):
            value = [value] if i % 2 else {"k": value}
        return value

    assert not json_depth_exceeds(nest(DEPTH), DEPTH)
    assert json_depth_exceeds(nest(DEPTH + 1), DEPTH)
    assert not json_depth_exceeds({"wide": list(range(10_000)), "s": "x"}, 2)
    assert not json_depth_exceeds("scalar", 0)
    # The same through the parser, whose bracket count lets most bodies skip the walk.
    assert parse_json(b"[" * DEPTH + b"]" * DEPTH, DEPTH) is not None
    with pytest.raises(InvalidRequest, match="more than 64 levels deep"):
        parse_json(b"[" * (DEPTH + 1) + b"]" * (DEPTH + 1), DEPTH)
    assert parse_json(b'{"prompt": "' + b"[" * 1000 + b'"}', DEPTH) == {"prompt": "[" * 1000}  # brackets in a string


# -- modality --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(("model", "modality"), [(AUDIO, "audio"), (IMAGE, "image")])
def test_a_text_route_naming_an_image_or_audio_model_is_400(api: str, path: str, model: str, modality: str) -> None:
    body = chat_body(model) if "chat" in path else {"model": model, "prompt": "hi", "max_tokens": 2}
    started = time.monotonic()
    r = httpx.post(f"{api}{path}", json=body, timeout=30)
    elapsed = time.monotonic() - started
    found = error(r, 400, "invalid_model")
    assert found["param"] == "model" and "retry-after" not in r.headers
    assert f"is an {modality} model" in found["message"] and "takes a text model" in found["message"]
    assert elapsed < 1.0  # not a wait for a worker that will never come


def test_the_image_and_audio_routes_check_the_modality_too(api: str) -> None:
    found = error(transcribe(api, tone_wav(1.0), model=TINY), 400, "invalid_model")
    assert "a text model" in found["message"] and "an audio model" in found["message"]
    r = httpx.post(f"{api}/v1/images/generations", json={"model": AUDIO, "prompt": "a cat"}, timeout=30)
    assert "an image model" in error(r, 400, "invalid_model")["message"]
    # An unknown model stays what it was.
    assert httpx.post(f"{api}/v1/chat/completions", json=chat_body("nope"), timeout=30).status_code == 404


# -- body limits -----------------------------------------------------------------------------------------------


def chunked_multipart(total: int) -> Iterator[bytes]:
    """A multipart body of ``total`` bytes sent without Content-Length (Transfer-Encoding: chunked)."""
    head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
    yield head
    sent = len(head)
    while sent < total:
        piece = min(64 * 1024, total - sent)
        yield b"\0" * piece
        sent += piece


@pytest.mark.parametrize(
    ("path", "size"),
    [
        ("/v1/images/edits", 4 * MAX_BODY),
        ("/v1/images/variations", 4 * MAX_BODY),
        ("/v1/audio/transcriptions", 26 * 1024 * 1024),
        ("/v1/audio/translations", 26 * 1024 * 1024),
    ],
)
def test_chunked_uploads_over_the_limit_are_413(api: str, path: str, size: int) -> None:
    headers = {"content-type": "multipart/form-data; boundary=b"}
    r = httpx.post(f"{api}{path}", content=chunked_multipart(size), headers=headers, timeout=60)
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    error(r, 413, "request_too_large")


# -- audio that is not an audio file ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOT_AUDIO)
def test_a_session_description_or_playlist_as_audio_is_400_at_once(api: str, name: str) -> None:
    started = time.monotonic()
    found = error(transcribe(api, NOT_AUDIO[name], filename="a.wav"), 400, "invalid_audio")
    assert time.monotonic() - started < 1.0, "FFmpeg must not have opened what the file names"
    if name != "id3-then-sdp":  # that one is read as the MP3 its tag claims, and fails as one
        assert "not in a supported audio format (wav, mp3, mp4/m4a, ogg/opus, flac, webm)" in found["message"]
    r = transcribe(api, tone_wav(1.0))
    assert r.status_code == 200, r.text


async def test_twelve_concurrent_sdp_uploads_leave_a_wav_served_in_normal_time(api: str) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=60) as client:

        async def post(data: bytes) -> tuple[int, float]:
            started = time.monotonic()
            files = {"file": ("a.wav", data, "audio/wav")}
            r = await client.post("/v1/audio/transcriptions", files=files, data={"model": AUDIO})
            return r.status_code, time.monotonic() - started

        normal = tone_wav(1.0)
        status, alone_s = await post(normal)
        assert status == 200
        results = await asyncio.gather(*(post(SDP) for _ in range(12)), post(normal))
    *sdp, (wav_status, wav_s) = results
    assert [s for s, _ in sdp] == [400] * 12
    assert max(t for _, t in sdp) < 2.0
    assert wav_status == 200
    print(f"a 1 s WAV alone {alone_s:.2f}s, beside 12 SDP uploads {wav_s:.2f}s")
    assert wav_s < max(3 * alone_s, alone_s + 1.5)


# -- audio past the cap ----------------------------------------------------------------------------------------


def test_audio_over_the_duration_cap_is_400_naming_the_cap_at_once(api: str) -> None:
    data = silent_wav(3 * CAP_S)
    started = time.monotonic()
    found = error(transcribe(api, data), 400, "invalid_audio")
    assert time.monotonic() - started < 1.0
    assert f"longer than the limit of {CAP_S} s" in found["message"] and found["param"] == "file"
    # Within the cap, the same kind of file is served.
    r = transcribe(api, silent_wav(CAP_S / 4))
    assert r.status_code == 200, r.text
