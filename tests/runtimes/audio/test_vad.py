"""Voice activity detection: long silences cut before windowing, never speech, and times mapped back."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from ember.runtimes.audio.decode import decode_audio
from ember.runtimes.audio.engine import AudioEngine, AudioRequest, EngineConfig, Finished
from ember.runtimes.audio.loader import LoadedWhisper
from ember.runtimes.audio.pipeline import Segment, Transcription, mel_of
from ember.runtimes.audio.vad import SAMPLE_RATE, Timeline, VadOptions, drop_silence, kept_ranges
from tests.helpers.speech import SENTENCES, speak, word_error_rate, words

RATE = SAMPLE_RATE


def bursts(pattern: list[tuple[str, float]], seed: int = 0) -> np.ndarray:
    """Loud noise ("s", as speech) and faint noise ("q", a quiet room at -60 dBFS), each for so many seconds."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, 0.1 if kind == "s" else 0.001, int(seconds * RATE)) for kind, seconds in pattern]
    return np.concatenate(parts).astype(np.float32)


def test_only_long_silences_are_cut_and_speech_keeps_its_padding() -> None:
    audio = bursts([("q", 3.0), ("s", 2.0), ("q", 0.8), ("s", 1.0), ("q", 5.0), ("s", 2.0), ("q", 1.0)])
    kept = [(a / RATE, b / RATE) for a, b in kept_ranges(audio, VadOptions(min_silence_s=2.0, pad_s=0.4))]
    # The leading 3 s and the 5 s pause go, less 0.4 s next to speech; the 0.8 s pause and the 1 s tail stay.
    assert kept == [(pytest.approx(2.6, abs=0.03), pytest.approx(7.2, abs=0.03)), (pytest.approx(11.4, abs=0.03), 14.8)]


def test_audio_without_quiet_parts_loses_nothing_and_digital_silence_everything() -> None:
    t = np.arange(10 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    noise = bursts([("s", 10.0)])
    for loud in (tone, noise):
        samples, timeline = drop_silence(loud)
        assert timeline is None and samples is loud
    samples, timeline = drop_silence(np.zeros(10 * RATE, np.float32))
    assert samples.size == 0 and timeline is not None


def test_the_timeline_maps_kept_times_to_the_original() -> None:
    # Kept: original 2.0-5.0 s, then original 10.0-12.0 s (they meet at 3.0 s of the kept audio).
    # Each keeps 0.4 s of silence next to the cut: original 4.6-5.0 s and 10.0-10.4 s.
    timeline = Timeline(((0, 2 * RATE, 3 * RATE), (3 * RATE, 10 * RATE, 2 * RATE)), pad=int(0.4 * RATE))
    assert timeline.original(0.5) == 2.5
    assert timeline.original(3.0) == 10.0  # a start at the seam opens the later piece
    assert timeline.original(3.0, end=True) == 5.0  # an end there closes the earlier one
    assert timeline.original(4.5, end=True) == 11.5
    # In the silence kept next to the cut, an end belongs to the piece before and a start to the piece after.
    assert timeline.original(3.3, end=True) == 5.0
    assert timeline.original(2.7) == 10.0
    assert timeline.original(2.7, end=True) == 4.7 and timeline.original(3.3) == 10.3


async def test_silence_between_two_sentences_is_skipped_with_words_and_times_intact(tiny_en: LoadedWhisper) -> None:
    first, second = SENTENCES[14], SENTENCES[16]
    a, b = (decode_audio(speak(s).read_bytes()) for s in (first, second))
    gap = 12.0
    audio = np.concatenate([a, np.zeros(int(gap * RATE), np.float32), b])
    audio += np.random.default_rng(0).normal(0, 0.001, audio.size).astype(np.float32)  # a quiet room
    samples, timeline = drop_silence(audio)
    assert timeline is not None and samples.size < audio.size - (gap - 1.0) * RATE
    t = Transcription(
        mel=mel_of(samples, 80),
        tokenizer=tiny_en.tokenizer(),
        task="transcribe",
        language="en",
        temperature=0.0,
        prompt=None,
        word_timestamps=True,
        timeline=timeline,
        original_duration=audio.size / RATE,
    )
    engine = AudioEngine(tiny_en, EngineConfig(max_batch=1))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    request = AudioRequest("vad", t, asyncio.get_running_loop())
    engine.submit(request)
    try:
        events = [e async for e in engine.events(request)]
    finally:
        engine.stop()
        thread.join(5)
    done, segments = events[-1], [e for e in events if isinstance(e, Segment)]
    assert isinstance(done, Finished) and done.duration == pytest.approx(audio.size / RATE)
    print(f"\n{done.text}\n" + "\n".join(f"{s.start:6.2f} {s.end:6.2f} {s.text}" for s in segments))
    assert word_error_rate(f"{first} {second}", done.text) <= 0.1
    # Each sentence's words at its own place in the original: the first before the gap, the second after it.
    heard = [w for s in segments for w in s.words or []]
    start_of_second = (a.size + gap * RATE) / RATE
    for w in heard:
        assert 0 <= w.start <= w.end <= audio.size / RATE + 0.1
        spoken = words(w.word)
        if spoken and spoken[0] in words(first) and spoken[0] not in words(second):
            assert w.end <= a.size / RATE + 0.3, w
        if spoken and spoken[0] in words(second) and spoken[0] not in words(first):
            assert w.start >= start_of_second - 0.3, w
    # And each segment too: none spans the silence (whisper stamps the pause to one side or the other).
    for s in segments:
        assert s.end <= a.size / RATE + 0.5 or s.start >= start_of_second - 0.5, s
    assert segments[-1].end <= audio.size / RATE and segments[-1].end >= start_of_second + 1.0
