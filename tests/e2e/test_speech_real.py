"""Text to speech as a user meets it: `ember serve` with the default speech model (piper's joe voice) and the
default Whisper beside it; the official openai client and our SDK speak every format, stream it, and what is
spoken is heard back word for word."""

from __future__ import annotations

import asyncio
import io
import signal
from collections.abc import Iterator
from pathlib import Path

import av
import openai
import pytest

import ember
from ember.bus.nats_server import free_port
from ember.config import DEFAULT_AUDIO_MODEL, DEFAULT_SPEECH_MODEL
from tests.helpers.cluster import write_config
from tests.helpers.serve_process import ServeProcess
from tests.helpers.speech import SENTENCES, word_error_rate

MODEL = DEFAULT_SPEECH_MODEL
TEXT = SENTENCES[16]
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ember serve` on the defaults' speech and audio entries, unchanged (every other model off); yields /v1."""
    root = tmp_path_factory.mktemp("serve-speech")
    port = free_port()
    config = write_config(
        root / "ember.toml",
        {MODEL: {}, DEFAULT_AUDIO_MODEL: {}},
        gateway={"port": port},
        nats={"port": 0, "data_dir": str(root / "nats")},
    )
    serve = ServeProcess(config)
    try:
        serve.wait_for_line("all models ready", timeout=180)
        assert f"model '{MODEL}' ready" in serve.output()
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        serve.proc.send_signal(signal.SIGINT)
        try:
            serve.proc.wait(timeout=30)
        finally:
            serve.close()
        assert "Traceback" not in serve.output(), serve.output()[-4000:]


def seconds_of(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24000
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


def test_openai_client_speaks_every_format_and_streams(served: str) -> None:
    with openai.OpenAI(base_url=served, api_key="unused", max_retries=0) as client:
        for fmt in FORMATS:
            audio = client.audio.speech.create(model=MODEL, voice="alloy", input=TEXT, response_format=fmt)
            assert 1.5 < seconds_of(audio.content, fmt) < 6, fmt
        with client.audio.speech.with_streaming_response.create(
            model=MODEL, voice="coral", input=" ".join(SENTENCES[:4]), response_format="opus"
        ) as response:
            assert response.headers["content-type"] == "audio/opus"
            chunks = list(response.iter_bytes())
        assert len(chunks) >= 2 and seconds_of(b"".join(chunks), "opus") > 6
        sse = client.audio.speech.create(model=MODEL, voice="echo", input=TEXT, stream_format="sse")
        assert b'"type":"speech.audio.done"' in sse.content
        with pytest.raises(openai.BadRequestError) as e:
            client.audio.speech.create(model=MODEL, voice="bob", input=TEXT)
        assert e.value.status_code == 400 and "voice='bob'" in str(e.value)


def test_our_sdk_speaks_writes_and_streams(served: str, tmp_path: Path) -> None:
    with ember.Ember(base_url=served, max_retries=0) as client:
        audio = client.audio.speech.create(model=MODEL, voice="joe", input=TEXT, response_format="flac", speed=1.25)
        assert audio.content_type == "audio/flac"
        audio.write_to_file(tmp_path / "a.flac")
        assert seconds_of((tmp_path / "a.flac").read_bytes(), "flac") > 1.5
        with client.audio.speech.with_streaming_response.create(model=MODEL, voice="nova", input=TEXT) as response:
            response.stream_to_file(tmp_path / "b.mp3")
        assert seconds_of((tmp_path / "b.mp3").read_bytes(), "mp3") > 1.5
        with client.audio.speech.create(model=MODEL, voice="nova", input=TEXT, stream_format="sse") as stream:
            events = list(stream)
        assert events[-1].type == "speech.audio.done" and events[-1].usage is not None
        assert events[-1].usage.characters == len(TEXT) and all(e.audio for e in events[:-1])

    async def speak_async() -> bytes:
        async with ember.AsyncEmber(base_url=served, max_retries=0) as client:
            async with client.audio.speech.with_streaming_response.create(
                model=MODEL, voice="alloy", input=TEXT, response_format="wav"
            ) as response:
                return b"".join([chunk async for chunk in response.iter_bytes()])

    assert seconds_of(asyncio.run(speak_async()), "wav") > 1.5


def test_what_is_spoken_is_heard_back_word_for_word(served: str) -> None:
    with openai.OpenAI(base_url=served, api_key="unused", max_retries=0) as client:
        for sentence in (SENTENCES[0], SENTENCES[16]):
            audio = client.audio.speech.create(model=MODEL, voice="alloy", input=sentence, response_format="wav")
            heard = client.audio.transcriptions.create(file=("speech.wav", audio.content), model=DEFAULT_AUDIO_MODEL)
            print(f"\nspoke {sentence!r}, Whisper heard {heard.text!r}")
            assert word_error_rate(sentence, heard.text) == 0.0, heard.text
