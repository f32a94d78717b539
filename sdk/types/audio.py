"""Results of ``client.audio.transcriptions.create`` and ``client.audio.translations.create``, in OpenAI's shapes."""

from __future__ import annotations

from typing import Literal

from .._models import BaseModel

__all__ = [
    "AudioResponseFormat",
    "Transcription",
    "TranscriptionSegment",
    "TranscriptionStreamEvent",
    "TranscriptionUsage",
    "TranscriptionVerbose",
    "TranscriptionWord",
    "Translation",
    "TranslationVerbose",
]

AudioResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class TranscriptionUsage(BaseModel):
    """What the request is billed for: seconds of audio."""

    type: Literal["duration"] = "duration"
    seconds: float


class Transcription(BaseModel):
    """``response_format="json"``: the text."""

    text: str
    usage: TranscriptionUsage | None = None


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    """``response_format="verbose_json"``: the text with its language, duration, segments and (if asked) words."""

    task: str | None = None
    language: str
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None
    words: list[TranscriptionWord] | None = None
    usage: TranscriptionUsage | None = None


class TranscriptionStreamEvent(BaseModel):
    """One event of ``stream=True``: ``transcript.text.delta`` (``delta``: one segment's text, and the segment)
    or ``transcript.text.done`` (``text``: all of it, and ``usage``)."""

    type: Literal["transcript.text.delta", "transcript.text.done"]
    delta: str | None = None
    text: str | None = None
    usage: TranscriptionUsage | None = None


SpeechResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class SpeechUsage(BaseModel):
    """What a speech request used: Ember counts characters (``input_tokens`` carries them, for OpenAI's shape)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    characters: int | None = None
    # Seconds of audio produced.
    seconds: float | None = None


class SpeechStreamEvent(BaseModel):
    """One event of ``stream_format="sse"``: ``speech.audio.delta`` (``audio``: the next bytes of the file, base64)
    or ``speech.audio.done`` (``usage``)."""

    type: Literal["speech.audio.delta", "speech.audio.done"]
    audio: str | None = None
    usage: SpeechUsage | None = None


# Translations (to English) have the same shapes.
Translation = Transcription
TranslationVerbose = TranscriptionVerbose
