"""/v1/audio/speech against a real speech worker process (piper's joe voice) over NATS: every format, SSE,
streaming, refusals before the first byte, hostile input, and characters metered against the key's tier."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from ember.config import DEFAULT_SPEECH_MODEL, load_settings
from ember.gateway.state import gateway_state
from ember.limits.tiers import Tier
from tests.helpers.cluster import GatewayThread, running_worker, write_config
from tests.helpers.speech import SENTENCES

MODEL = DEFAULT_SPEECH_MODEL
URL = "/v1/audio/speech"
TEXT = SENTENCES[14] + " " + SENTENCES[15]
MEDIA = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav"}


@pytest.fixture(scope="module")
def speech_worker(gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default speech model's worker; the session gateway's own config does not name it, so the worker is the
    one that checks voices here."""
    root = tmp_path_factory.mktemp("speech")
    config = write_config(root / "ember.toml", {MODEL: {"max_batch": 4}})
    log = root / "worker.log"
    with running_worker(config, MODEL, nats_url, gateway.url, log=log, timeout=60, modality="speech"):
        yield gateway.url
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def speak(base: str, **body: Any) -> httpx.Response:
    return httpx.post(base + URL, json={"model": MODEL, "input": TEXT, "voice": "alloy", **body}, timeout=60)


def seconds_of(data: bytes) -> tuple[float, int]:
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate, frames[0].sample_rate


def error_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_every_format_is_chunked_audio_of_the_right_type(speech_worker: str) -> None:
    lengths = {}
    for fmt, media in MEDIA.items():
        r = speak(speech_worker, response_format=fmt)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media and r.headers["transfer-encoding"] == "chunked"
        assert r.headers["x-ember-worker"]
        lengths[fmt], rate = seconds_of(r.content)
        assert rate == (48000 if fmt == "opus" else 22050)
    pcm = speak(speech_worker, response_format="pcm", voice="joe")
    assert pcm.headers["content-type"] == "audio/pcm"
    lengths["pcm"] = len(pcm.content) / 2 / 24000
    # Two sentences, about 6 s spoken; the formats agree within the noise piper draws for each request's prosody.
    assert all(4 < s < 9 for s in lengths.values()), lengths
    assert max(lengths.values()) - min(lengths.values()) < 1.0, lengths


def test_sse_streams_deltas_then_usage(speech_worker: str) -> None:
    body = {"model": MODEL, "input": TEXT, "voice": "nova", "stream_format": "sse"}
    with httpx.stream("POST", speech_worker + URL, json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1) and len(events) >= 3
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["input_tokens"] == done["usage"]["characters"] == len(TEXT)
    assert done["usage"]["total_tokens"] == len(TEXT) and done["usage"]["output_tokens"] == 0
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    seconds, _ = seconds_of(audio)  # mp3 by default
    assert seconds == pytest.approx(done["usage"]["seconds"], abs=0.1)


def test_the_first_bytes_come_before_synthesis_ends(speech_worker: str) -> None:
    text = " ".join(SENTENCES[:12])  # ~45 s of speech
    started = time.monotonic()
    arrivals = []
    with httpx.stream(
        "POST", speech_worker + URL, json={"model": MODEL, "input": text, "voice": "joe"}, timeout=60
    ) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            arrivals.append((time.monotonic() - started, len(chunk)))
    first, last = arrivals[0][0], arrivals[-1][0]
    assert len(arrivals) >= 6 and first < last / 3, arrivals


@pytest.mark.parametrize(
    ("body", "status", "param", "needle"),
    [
        ({"voice": "bob"}, 400, "voice", "voice='bob' is not a voice of model"),
        ({"voice": {"id": "voice_123"}}, 400, "voice", "voice='voice_123'"),
        ({"input": ""}, 400, "input", "must not be empty"),
        ({"input": " \n\t"}, 400, "input", "must not be empty"),
        ({"input": "a" * 4097}, 400, "input", "input is 4097 characters; the limit is 4096"),
        ({"response_format": "ogg"}, 400, "response_format", "'ogg'"),
        ({"speed": 4.5}, 400, "speed", "4.5"),
        ({"speed": 0.1}, 400, "speed", "0.1"),
        ({"stream_format": "chunks"}, 400, "stream_format", "'chunks'"),
        ({"model": "no-such-model"}, 404, "model", "does not exist"),
        ({"model": "tiny-llama"}, 400, "model", "is a text model"),
        # Nothing espeak-ng can say: the worker refuses it before accepting.
        ({"input": "\u200b\u200b"}, 400, "input", "nothing to speak"),
    ],
)
def test_refusals_are_openai_errors_before_any_audio(
    speech_worker: str, body: dict[str, Any], status: int, param: str, needle: str
) -> None:
    error = error_of(speak(speech_worker, **body), status)
    assert error["param"] == param and needle in error["message"], error


def test_hostile_input_never_takes_the_worker_down(speech_worker: str) -> None:
    # Long runs of one character, each past a sentence's worth: piper must neither crash nor spell them forever.
    for text in ("\x00" * 50 + "hello", "😀" * 300, "[[ ]]" * 100, "x" * 1024, "..." * 400, "1" * 1024):
        r = speak(speech_worker, input=text, response_format="wav")
        assert r.status_code in (200, 400), (text[:20], r.text)
    # A voice object naming the model's own voice, and instructions (ignored by piper) are fine.
    r = speak(speech_worker, voice={"id": "joe"}, instructions="Speak like a pirate.", speed=1.5)
    assert r.status_code == 200 and seconds_of(r.content)[0] > 2


SPEECH_TIER = Tier(requests_per_minute=1000, concurrent_requests=10, speech_characters_per_minute=100, burst_fraction=0)
ADMIN = "admin-" + "s" * 24


def test_characters_count_against_the_keys_tier(speech_worker: str, cluster_config: Path, nats_url: str) -> None:
    base = load_settings(cluster_config)
    settings = base.model_copy(
        update={
            "auth": base.auth.model_copy(update={"enabled": True, "admin_key": ADMIN}),
            "tiers": {**base.tiers, "speech": SPEECH_TIER},
        }
    )
    gw = GatewayThread(settings, nats_url).start()
    try:
        admin = {"authorization": f"Bearer {ADMIN}"}
        key = httpx.post(f"{gw.url}/v1/admin/keys", json={"tier": "speech"}, headers=admin, timeout=10).json()
        auth = {"authorization": f"Bearer {key['secret']}"}
        for _ in range(100):  # until this gateway has heard the worker announce itself
            if any(m["id"] == MODEL for m in httpx.get(f"{gw.url}/v1/models", headers=auth).json()["data"]):
                break
            time.sleep(0.1)

        def say(text: str) -> httpx.Response:
            body = {"model": MODEL, "input": text, "voice": "alloy", "response_format": "wav"}
            return httpx.post(gw.url + URL, json=body, headers=auth, timeout=60)

        first = say("x" * 60 + ".")
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-limit-speech-characters"] == "100"
        assert first.headers["x-ratelimit-remaining-speech-characters"] == "39"
        refused = say("y" * 60 + ".")
        error = error_of(refused, 429)
        assert error["type"] == "speech_characters" and "speech characters per minute" in error["message"]
        # A voice the worker refuses costs no characters.
        assert error_of(say("\u200b"), 400)["param"] == "input"
        for _ in range(50):  # records are written as each request closes
            usage = httpx.get(f"{gw.url}/v1/usage", params={"key_id": key["id"]}, headers=admin, timeout=10).json()
            rows = [row for row in usage["data"] if row["model"] == MODEL]
            if rows and rows[0]["requests"] == 3:
                break
            time.sleep(0.1)
        assert rows[0]["characters"] == 61, rows
    finally:
        gw.stop()


def test_a_client_that_hangs_up_stops_its_synthesis(speech_worker: str, gateway: GatewayThread) -> None:
    # Four minutes of text spoken at a quarter speed: half a minute of synthesis at least.
    body = {"model": MODEL, "input": ((" ".join(SENTENCES) + " ") * 4)[:4000], "voice": "joe", "speed": 0.25}

    def busy() -> int:
        bus = gateway_state(gateway.app).bus
        assert bus is not None
        (info,) = bus.registry.models()[MODEL]
        return int(info.running + info.waiting)

    def wait_until(busy_now: bool) -> bool:
        deadline = time.monotonic() + 15
        while bool(busy()) != busy_now and time.monotonic() < deadline:
            time.sleep(0.1)
        return bool(busy()) == busy_now

    with httpx.stream("POST", speech_worker + URL, json=body, timeout=60) as r:
        assert r.status_code == 200
        # Held, not dropped: a generator left to the garbage collector closes the connection with it, and the
        # hang-up this test makes below would come before the worker's announcement had counted the job.
        chunks = r.iter_raw()
        next(chunks)
        assert wait_until(busy_now=True)  # the worker's next announcement counts it
    # The worker hears the cancel and drops the job at its next piece, long before the text would be spoken.
    assert wait_until(busy_now=False)
