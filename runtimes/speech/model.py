"""A piper voice: text -> phonemes (espeak-ng) -> pieces of a sentence or less -> VITS (onnxruntime) -> samples.

Synthesis goes a piece at a time so that a long input streams (the first sentence is heard while the rest is
still being made) and the engine can interleave requests. A piece is one sentence as espeak-ng splits them; a
sentence longer than ``MAX_PIECE_PHONEMES`` is cut at its last clause mark (, ; :) before the limit, else at its
last word boundary, so no one piece holds the engine for long and a run-on input still starts fast.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
from piper import PiperVoice, SynthesisConfig

# About 8 s of speech, ~0.25 s of one CPU core: the longest one step runs.
MAX_PIECE_PHONEMES = 200
# Where a long sentence may be cut: after a clause mark, else before a space.
CLAUSE_MARKS = frozenset(",;:")


class TextError(ValueError):
    """The input cannot be spoken (nothing to say, or espeak-ng refused it); the message says why."""


def split_piece(phonemes: list[str], limit: int = MAX_PIECE_PHONEMES) -> list[list[str]]:
    """One sentence's phonemes in pieces of at most ``limit``, cut at a clause mark, else a space, else anywhere."""
    pieces: list[list[str]] = []
    rest = phonemes
    while len(rest) > limit:
        head = rest[:limit]
        cut = next((i + 1 for i in range(limit - 1, 0, -1) if head[i] in CLAUSE_MARKS), None)
        if cut is None:
            cut = next((i for i in range(limit - 1, 0, -1) if head[i] == " "), limit)
        pieces.append(rest[:cut])
        rest = rest[cut:]
        while rest and rest[0] == " ":
            rest = rest[1:]
    if rest:
        pieces.append(rest)
    return pieces


def speakable(text: str) -> str:
    """``text`` without control characters (espeak-ng refuses a NUL; the others say nothing), line breaks kept as
    spaces."""
    return "".join(" " if c in "\n\r\t" else c for c in text if c in "\n\r\t" or unicodedata.category(c) != "Cc")


@dataclass(frozen=True)
class Voice:
    """How one request is spoken: the voice file's speaker (None: its default) and the pace."""

    speaker: int | None = None
    # The voice's length scale divided by the request's speed: 2.0 is twice as slow.
    length_scale: float = 1.0


class PiperModel:
    """One loaded voice file. ``pieces`` may run on any thread; ``synthesize`` only on the engine's."""

    def __init__(self, voice: PiperVoice) -> None:
        self.voice = voice
        config = voice.config
        self.sample_rate: int = config.sample_rate
        self.num_speakers: int = config.num_speakers
        self.speaker_ids: dict[str, int] = dict(config.speaker_id_map)

    def pieces(self, text: str) -> list[list[str]]:
        """The phonemes of each piece to synthesize, in order; raises TextError when there is nothing to say."""
        try:
            sentences = self.voice.phonemize(speakable(text))
        except (ValueError, RuntimeError, UnicodeError) as e:
            raise TextError(f"the input could not be turned into phonemes: {e}") from None
        pieces = [piece for sentence in sentences for piece in split_piece(sentence)]
        if not pieces:
            raise TextError("the input has nothing to speak (no letters, digits or symbols with a spoken name)")
        return pieces

    def voice_for(self, speaker: int | str | None, speed: float) -> Voice:
        """A request's Voice; raises KeyError for a speaker the file does not have."""
        if isinstance(speaker, str):
            speaker = self.speaker_ids[speaker]
        if speaker is not None and not 0 <= speaker < max(1, self.num_speakers):
            raise KeyError(speaker)
        # A one-speaker file takes no speaker input at all.
        sid = speaker if self.num_speakers > 1 else None
        return Voice(speaker=sid, length_scale=self.voice.config.length_scale / speed)

    def synthesize(self, phonemes: list[str], voice: Voice) -> np.ndarray:
        """One piece's audio: [samples] float32 in [-1, 1] at ``sample_rate``, peak-normalized as piper does."""
        ids = self.voice.phonemes_to_ids(phonemes)
        config = SynthesisConfig(speaker_id=voice.speaker, length_scale=voice.length_scale)
        audio = np.asarray(self.voice.phoneme_ids_to_audio(ids, config), dtype=np.float32).reshape(-1)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        if peak < 1e-8:
            return np.zeros_like(audio)
        return np.clip(audio / peak, -1.0, 1.0)
