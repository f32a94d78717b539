"""/v1/audio/* against a real audio worker process (a tiny random Whisper) over NATS: shapes, errors, uploads, fuzz."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import random
import re
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ember.bus.blobs import BlobNotFound, BlobStore
from ember.bus.client import JobClient, JobRefused, StreamTiming
from ember.bus.connection import connect
from ember.bus.messages import AudioJob, AudioResult, AudioSegment, StreamReply
from ember.config import load_settings
from ember.gateway.errors import RequestTooLarge
from ember.gateway.middleware import BodyLimitMiddleware
from ember.gateway.routes import audio as audio_routes
from ember.limits.tiers import Tier
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.metrics import scrape, total
from tests.helpers.tiny_whisper import write_tiny_whisper

MODEL = "tiny-whisper"
URL = "/v1/audio/transcriptions"


def wav(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """Noise with a tone: something a random model turns into some text."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def audio_worker(
    gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, object]]:
    """A real `ember worker audio` process serving a tiny random Whisper; yields (gateway url, process)."""
    root = tmp_path_factory.mktemp("audio")
    checkpoint = write_tiny_whisper(root / "tiny.pt")
    # Greedy search: a random model's every window climbs the whole fallback ladder, and beams of 5 with 5 samples
    # per rung would cost these API tests minutes for nothing they check (search is tested in tests/runtimes/audio).
    config = write_config(
        root / "ember.toml",
        {MODEL: {"modality": "audio", "path": str(checkpoint), "max_batch": 8}},
        audio={"beam_size": 1, "best_of": 1},
    )
    log = root / "worker.log"
    proc = start_worker(config, MODEL, nats_url, log=log, modality="audio")
    try:
        wait_for_model(gateway.url, MODEL, timeout=60)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"audio worker did not come up:\n{log.read_text()[-4000:]}") from None
    yield gateway.url, proc
    stop_process(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def post(base: str, data: bytes | None, path: str = URL, filename: str = "a.wav", **fields: object) -> httpx.Response:
    files = {"file": (filename, data, "audio/wav")} if data is not None else None
    form = {"model": MODEL, **fields} if "model" not in fields else fields
    return httpx.post(base + path, files=files, data=form, timeout=60)  # type: ignore[arg-type]


def error_of(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_json_and_text(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    r = post(base, wav(2.0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["text"], str) and body["usage"] == {"type": "duration", "seconds": 2}
    assert r.headers["x-ember-worker"]
    r = post(base, wav(2.0), response_format="text")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    # Not compared with the json text: a random model falls back to sampling at higher temperatures.
    assert r.text.endswith("\n") and not r.text.startswith("{")


def test_the_audio_workers_metrics_move(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    before = scrape(base)
    assert post(base, wav(3.0)).status_code == 200
    after = scrape(base)

    def moved(name: str) -> float:
        return total(after, name, model=MODEL, modality="audio") - total(before, name, model=MODEL, modality="audio")

    assert moved("ember_audio_seconds_total") == pytest.approx(3.0, abs=0.05)
    assert moved("ember_audio_windows_total") >= 1 and moved("ember_engine_batch_rows_count") >= 1
    assert moved("ember_engine_step_seconds_count") >= 1
    assert total(after, "ember_http_time_to_first_token_seconds_count", route=URL, model=MODEL) >= 1


def test_verbose_json_srt_and_vtt_agree(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    audio = wav(3.0, seed=1)
    verbose = post(base, audio, response_format="verbose_json").json()
    assert verbose["task"] == "transcribe" and verbose["language"] == "english"
    assert verbose["duration"] == pytest.approx(3.0, abs=0.02)
    segments = verbose["segments"]
    assert "words" not in verbose
    for s in segments:
        assert set(s) == {
            "id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob", "compression_ratio",
            "no_speech_prob",
        }  # fmt: skip
        assert 0 <= s["start"] <= s["end"] <= 3.0 + 0.5
    assert "".join(s["text"] for s in segments).strip() == verbose["text"]
    srt = post(base, audio, response_format="srt").text
    cues = re.findall(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n", srt)
    # (Each request samples anew when a random model falls back to higher temperatures: compare shapes only.)
    assert cues and [int(c[0]) for c in cues] == list(range(1, len(cues) + 1))
    assert all(start <= end <= "00:00:03,500" for _, start, end in cues)
    vtt = post(base, audio, response_format="vtt")
    assert vtt.text.startswith("WEBVTT\n\n") and vtt.headers["content-type"].startswith("text/vtt")
    assert re.findall(r"\n(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n\S", vtt.text)


def test_word_granularity(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    r = post(base, wav(2.0), response_format="verbose_json", **{"timestamp_granularities[]": "word"})
    body = r.json()
    assert "segments" not in body and isinstance(body["words"], list)
    for w in body["words"]:
        assert set(w) == {"word", "start", "end"} and 0 <= w["start"] <= w["end"]


def test_stream_sends_a_delta_per_segment_then_done(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    events = []
    with httpx.stream(
        "POST", base + URL, files={"file": ("a.wav", wav(2.0))}, data={"model": MODEL, "stream": "true"}, timeout=60
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert [e["type"] for e in parsed[:-1]] == ["transcript.text.delta"] * (len(parsed) - 1)
    done = parsed[-1]
    assert done["type"] == "transcript.text.done" and done["usage"]["seconds"] == 2
    assert "".join(e["delta"] for e in parsed[:-1]).strip() == done["text"]


async def test_a_big_upload_travels_through_the_object_store_and_is_removed(
    audio_worker: tuple[str, object], nats_url: str
) -> None:
    base, _ = audio_worker
    audio = wav(40.0, seed=2)  # 1.3 MB: past the inline limit
    assert len(audio) > 1024 * 1024
    async with httpx.AsyncClient(timeout=120) as client:  # a shared CI machine can take seconds over 40 s of audio
        r = await client.post(
            base + URL, files={"file": ("big.wav", audio)}, data={"model": MODEL, "response_format": "verbose_json"}
        )
    assert r.status_code == 200, r.text
    assert r.json()["duration"] == pytest.approx(40.0, abs=0.05)
    nc = await connect(nats_url, name="blob-check")
    try:
        blobs = await BlobStore.open(nc.jetstream())
        with pytest.raises(BlobNotFound):
            await blobs.get(f"audio-{r.headers['x-request-id']}")
    finally:
        await nc.close()


async def test_a_client_that_leaves_mid_transcription_leaves_nothing_behind(
    audio_worker: tuple[str, object], nats_url: str
) -> None:
    """The upload's blob is dropped and its spooled form file closed (an unclosed one fails the run as an
    unraisable warning when collected), and the gateway serves the next request."""
    base, _ = audio_worker
    request_id = f"leaver{random.randrange(1 << 30)}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(120, read=0.05)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                base + URL,
                files={"file": ("big.wav", wav(40.0, seed=3))},
                data={"model": MODEL},
                headers={"x-request-id": request_id},
            )
    nc = await connect(nats_url, name="blob-check")
    try:
        blobs = await BlobStore.open(nc.jetstream())
        deadline = time.monotonic() + 60
        while True:
            try:
                await blobs.get(f"audio-{request_id}")
            except BlobNotFound:
                break
            assert time.monotonic() < deadline, "the upload of a request whose client left was never dropped"
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
    gc.collect()
    async with httpx.AsyncClient(timeout=120) as client:
        r = await client.post(base + URL, files={"file": ("a.wav", wav(1.0))}, data={"model": MODEL})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("data", "fields", "status", "param"),
    [
        (b"this is not audio" * 50, {}, 400, "file"),
        (b"", {}, 400, "file"),
        (wav(1.0)[:30], {}, 400, "file"),  # a truncated header
        (None, {}, 400, "file"),
        (b"x", {"model": ""}, 400, "model"),
        (b"x", {"response_format": "mp3"}, 400, "response_format"),
        (b"x", {"temperature": "2"}, 400, "temperature"),
        (b"x", {"temperature": "warm"}, 400, "temperature"),
        (b"x", {"timestamp_granularities[]": "word"}, 400, "timestamp_granularities"),
        (b"x", {"stream": "maybe"}, 400, "stream"),
        (b"x", {"model": "no-such-model"}, 404, "model"),
    ],
    ids=[
        "not-audio",
        "empty",
        "truncated",
        "no-file",
        "no-model",
        "format",
        "hot",
        "nan",
        "words-json",
        "stream",
        "404",
    ],
)
def test_bad_requests_get_openai_errors(
    audio_worker: tuple[str, object], data: bytes | None, fields: dict[str, str], status: int, param: str
) -> None:
    base, _ = audio_worker
    form = {"model": MODEL, **fields}
    # No file: still a multipart body, with a plain field where the file should be.
    files = {"file": ("a.wav", data)} if data is not None else {"prompt": (None, "hello")}
    r = httpx.post(base + URL, files=files, data=form, timeout=60)  # type: ignore[arg-type]
    assert error_of(r, status)["param"] == param


def test_language_checks(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    assert error_of(post(base, wav(1.0), language="klingon"), 400)["code"] == "invalid_language"
    # The tiny model is English-only (its vocabulary has no language tokens): no translation, no other language.
    assert error_of(post(base, wav(1.0), path="/v1/audio/translations"), 400)["code"] == "unsupported_model"
    assert error_of(post(base, wav(1.0), language="de"), 400)["code"] == "invalid_language"
    assert post(base, wav(1.0), language="en").status_code == 200


def test_a_text_route_naming_the_audio_model_is_400(audio_worker: tuple[str, object]) -> None:
    """This gateway's config does not name the model: its modality comes from the worker's announcement."""
    base, _ = audio_worker
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=10)
    error = error_of(r, 400)
    assert error["code"] == "invalid_model" and "is an audio model" in error["message"]
    assert "retry-after" not in r.headers


def test_a_json_body_is_refused(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    r = httpx.post(base + URL, json={"model": MODEL, "file": "abc"}, timeout=10)
    assert error_of(r, 400)["code"] == "invalid_body"


def test_uploads_over_25_mb_get_413(audio_worker: tuple[str, object]) -> None:
    base, _ = audio_worker
    error = error_of(post(base, b"\0" * (26 * 1024 * 1024)), 413)
    assert error["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the gateway has to count
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(27):
            yield bytes(1024 * 1024)

    r = httpx.post(
        base + URL, content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"}, timeout=30
    )
    assert error_of(r, 413)["code"] == "request_too_large"
    # A file between the other routes' body limit (64 KB here) and 25 MB is fine on the audio routes.
    assert post(base, wav(4.0)).status_code == 200


async def test_the_gateway_stops_reading_at_the_limit() -> None:
    """The body-limit middleware pulls no more than the audio limit from the server before answering 413."""
    pulled = 0

    async def receive() -> dict[str, object]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": bytes(1024 * 1024), "more_body": pulled < 100}

    async def app(scope: object, receive: Any, send: object) -> None:
        while (await receive()).get("more_body"):
            pass

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    limited = BodyLimitMiddleware(app, max_bytes=64 * 1024, per_path=audio_routes.BODY_LIMITS)
    scope = {"type": "http", "path": URL, "headers": [], "state": {}}
    with pytest.raises(RequestTooLarge):
        await limited(scope, receive, send)  # the app's error handler turns this into the 413
    assert pulled == 26  # 25 MB + 256 KB allowed: the 26th megabyte passes the limit, and reading stops
    pulled = 0
    with pytest.raises(RequestTooLarge):
        await limited({**scope, "path": "/v1/chat/completions"}, receive, send)
    assert pulled == 1  # other routes keep their own (here 64 KB) limit


def corruptions(data: bytes, n: int, seed: int) -> list[bytes]:
    """Damaged copies of ``data``: cut short, bytes flipped, zeroed runs, rotated, random headers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        b = bytearray(data)
        match i % 5:
            case 0:
                b = b[: rng.randrange(0, len(b))]
            case 1:
                for _ in range(rng.randrange(1, 64)):
                    b[rng.randrange(len(b))] = rng.randrange(256)
            case 2:
                start = rng.randrange(len(b))
                b[start : start + 2048] = bytes(len(b[start : start + 2048]))
            case 3:
                cut = rng.randrange(len(b))
                b = b[cut:] + b[:cut]
            case _:
                b[:44] = rng.randbytes(44)
        out.append(bytes(b))
    return out


async def test_fuzz_corrupted_uploads_never_crash_the_worker(audio_worker: tuple[str, object], nats_url: str) -> None:
    """300 damaged files straight to the worker over the bus, 10 over HTTP; then a real request still works."""
    base, proc = audio_worker
    nc = await connect(nats_url, name="fuzz")
    client = JobClient(nc, timing=StreamTiming(idle_probe_s=0.5))
    await client.start()
    outcomes = {"refused": 0, "transcribed": 0, "cancelled": 0}

    async def one(i: int, data: bytes) -> None:
        job = AudioJob(request_id=f"fuzz-{i}", model=MODEL, audio_b64=base64.b64encode(data).decode())
        stream = await client.submit(job, StreamReply)
        try:
            await stream.wait_accepted(30)
        except JobRefused as e:
            assert e.failed.error.status == 400 and e.failed.error.code == "invalid_audio", e.failed.error
            outcomes["refused"] += 1
            return
        if i % 50:  # the damage is all in decoding: most decodable ones need not be transcribed to the end
            await stream.cancel()
            outcomes["cancelled"] += 1
            return
        replies = [r async for r in stream]
        assert all(isinstance(r, AudioSegment) for r in replies[:-1]) and isinstance(replies[-1], AudioResult)
        outcomes["transcribed"] += 1

    try:
        files = corruptions(wav(0.5, seed=3), 300, seed=4)
        for start in range(0, len(files), 50):
            await asyncio.gather(*(one(start + i, f) for i, f in enumerate(files[start : start + 50])))
    finally:
        await client.stop()
        await nc.close()
    print(f"\nfuzz over the bus: {outcomes}")
    assert sum(outcomes.values()) == 300 and outcomes["refused"] > 0 and outcomes["transcribed"] > 0
    async with httpx.AsyncClient(timeout=60) as http:
        for bad in corruptions(wav(0.5, seed=5), 10, seed=6):
            r = await http.post(base + URL, files={"file": ("x.wav", bad)}, data={"model": MODEL})
            assert r.status_code in (200, 400), r.text
        assert proc.poll() is None  # type: ignore[attr-defined]
        r = await http.post(base + URL, files={"file": ("ok.wav", wav(1.0))}, data={"model": MODEL})
        assert r.status_code == 200 and isinstance(r.json()["text"], str)


def test_tiny_checkpoint_is_whispers_own_format(tmp_path: Path) -> None:
    import whisper

    model = whisper.load_model(str(write_tiny_whisper(tmp_path / "t.pt")), device="cpu")
    assert model.dims.n_audio_ctx == 1500 and not model.is_multilingual


# 5 audio seconds an hour, no burst: a 4 s file fits (1 s reserved, 4 s settled), a second one is admitted on the
# last free second and settles into debt, and a third is refused.
AUDIO_TIER = Tier(requests_per_minute=1000, concurrent_requests=10, audio_seconds_per_hour=5, burst_fraction=0.0)
ADMIN = "admin-" + "a" * 24


def test_audio_seconds_count_against_the_keys_tier(
    audio_worker: tuple[str, object], cluster_config: Path, nats_url: str
) -> None:
    base = load_settings(cluster_config)
    settings = base.model_copy(
        update={
            "auth": base.auth.model_copy(update={"enabled": True, "admin_key": ADMIN}),
            "tiers": {**base.tiers, "audio": AUDIO_TIER},
        }
    )
    gw = GatewayThread(settings, nats_url).start()
    try:
        r = httpx.post(
            f"{gw.url}/v1/admin/keys", json={"tier": "audio"}, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10
        )
        assert r.status_code == 201, r.text
        auth = {"authorization": f"Bearer {r.json()['secret']}"}
        for _ in range(100):  # until this gateway has heard the worker announce itself
            models = httpx.get(f"{gw.url}/v1/models", headers=auth, timeout=5).json()["data"]
            if any(m["id"] == MODEL for m in models):
                break
            time.sleep(0.1)

        def transcribe() -> httpx.Response:
            files = {"file": ("a.wav", wav(4.0))}
            return httpx.post(gw.url + URL, files=files, data={"model": MODEL}, headers=auth, timeout=60)

        assert httpx.post(gw.url + URL, files={"file": ("a.wav", wav(1.0))}, data={"model": MODEL}).status_code == 401
        assert transcribe().status_code == 200
        assert transcribe().status_code == 200
        refused = transcribe()
        assert error_of(refused, 429)["code"] == "rate_limit_exceeded"
        assert "audio" in str(refused.json()["error"]["message"])
        # The usage stream has the two files' real length (the refused one used none).
        key_id = r.json()["id"]
        admin = {"authorization": f"Bearer {ADMIN}"}
        for _ in range(50):  # records are written as each request closes; the last may still be on its way
            usage = httpx.get(f"{gw.url}/v1/usage", params={"key_id": key_id}, headers=admin, timeout=10).json()
            rows = [row for row in usage["data"] if row["model"] == MODEL]
            if rows and rows[0]["requests"] == 3:
                break
            time.sleep(0.1)
        assert rows[0]["audio_seconds"] == pytest.approx(8.0, abs=0.1), rows
    finally:
        gw.stop()
