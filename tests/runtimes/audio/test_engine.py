"""The engine on the real tiny.en: long audio across windows, concurrent requests sharing steps, words, cancel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from ember.runtimes.audio.decode import decode_audio
from ember.runtimes.audio.engine import Aborted, AudioEngine, AudioRequest, EngineConfig, Event, Finished
from ember.runtimes.audio.loader import LoadedWhisper
from ember.runtimes.audio.pipeline import Segment, Transcription, mel_of
from tests.helpers.speech import LONG, SENTENCES, SHORT, speak, word_error_rate, words


@pytest.fixture(scope="module")
def engine(tiny_en: LoadedWhisper) -> Iterator[AudioEngine]:
    eng = AudioEngine(tiny_en, EngineConfig(max_batch=4, max_waiting=4))
    thread = threading.Thread(target=eng.run, daemon=True)
    thread.start()
    yield eng
    eng.stop()
    thread.join(5)


def transcription(loaded: LoadedWhisper, text: str, *, words: bool = False, prompt: str | None = None) -> Transcription:
    tok = loaded.tokenizer()
    return Transcription(
        mel=mel_of(decode_audio(speak(text).read_bytes()), 80),
        tokenizer=tok,
        task="transcribe",
        language="en",
        temperature=0.0,
        prompt=tuple(tok.encode(" " + prompt)) if prompt else None,
        word_timestamps=words,
    )


async def run(engine: AudioEngine, request_id: str, t: Transcription) -> tuple[list[Segment], Event]:
    request = AudioRequest(request_id, t, asyncio.get_running_loop())
    engine.submit(request)
    return await collect(engine, request)


async def collect(engine: AudioEngine, request: AudioRequest) -> tuple[list[Segment], Event]:
    segments, last = [], None
    async for event in engine.events(request):
        if isinstance(event, Segment):
            segments.append(event)
        last = event
    assert last is not None
    return segments, last


async def test_long_audio_loses_no_words_at_window_edges(engine: AudioEngine, tiny_en: LoadedWhisper) -> None:
    t = transcription(tiny_en, LONG)
    assert t.duration > 40
    segments, done = await run(engine, "long", t)
    assert isinstance(done, Finished)
    wer = word_error_rate(LONG, done.text)
    print(f"\nlong ({t.duration:.1f} s): WER {wer:.3f}\n{done.text}")
    assert wer <= 0.1
    # Every sentence comes back, the one the 30 s edge cut through too (tiny.en mishears a word here and there).
    heard = set(words(done.text))
    for sentence in SENTENCES:
        expected = words(sentence)
        assert sum(w in heard for w in expected) >= 0.7 * len(expected), sentence
    starts = [s.start for s in segments]
    assert starts == sorted(starts) and segments[-1].end <= t.duration + 0.5
    assert any(s.seek > 0 for s in segments)  # more than one window
    assert [s.id for s in segments] == list(range(len(segments)))


async def test_concurrent_requests_share_steps_and_get_their_own_words(
    engine: AudioEngine, tiny_en: LoadedWhisper
) -> None:
    alone = (await run(engine, "alone", transcription(tiny_en, SHORT)))[1]
    steps, windows = engine.steps, engine.windows
    texts = [SHORT, SENTENCES[5] + " " + SENTENCES[6], SENTENCES[7] + " " + SENTENCES[8]]
    loop = asyncio.get_running_loop()
    requests = [AudioRequest(f"c{i}", transcription(tiny_en, x), loop) for i, x in enumerate(texts)]
    engine.submit(*requests)  # as if they arrived together
    results = await asyncio.gather(*(collect(engine, r) for r in requests))
    ran_steps, ran_windows = engine.steps - steps, engine.windows - windows
    print(f"\n{ran_windows} windows in {ran_steps} steps")
    assert (ran_steps, ran_windows) == (1, 3)  # three requests' windows went through the model together
    for text, (_, done) in zip(texts, results, strict=True):
        assert isinstance(done, Finished)
        assert word_error_rate(text, done.text) <= 0.1, done.text
    assert isinstance(alone, Finished)
    assert words(results[0][1].text) == words(alone.text)  # batching does not change a request's result


async def test_a_higher_tier_then_the_key_served_least_takes_the_next_free_place(tiny_en: LoadedWhisper) -> None:
    eng = AudioEngine(tiny_en, EngineConfig(max_batch=1))
    loop = asyncio.get_running_loop()
    arrivals = [("a1", 0, "a"), ("a2", 0, "a"), ("b1", 0, "b"), ("high", 5, "c")]
    requests = [AudioRequest(rid, transcription(tiny_en, SHORT), loop, priority=p, key=k) for rid, p, k in arrivals]
    eng.submit(*requests)  # all waiting before the engine starts: one place, four candidates
    thread = threading.Thread(target=eng.run, daemon=True)
    thread.start()
    finished: list[str] = []

    async def track(request: AudioRequest) -> None:
        _, last = await collect(eng, request)
        assert isinstance(last, Finished)
        finished.append(request.request_id)

    try:
        await asyncio.gather(*(track(r) for r in requests))
    finally:
        eng.stop()
        thread.join(5)
    # First come, first served would be a1, a2, b1, high.
    assert finished == ["high", "a1", "b1", "a2"]


async def test_word_timestamps(engine: AudioEngine, tiny_en: LoadedWhisper) -> None:
    t = transcription(tiny_en, SHORT, words=True)
    segments, done = await run(engine, "words", t)
    assert isinstance(done, Finished)
    found = [w for s in segments for w in s.words or []]
    assert words(" ".join(w.word for w in found)) == words(done.text)
    assert all(0 <= w.start <= w.end <= t.duration + 0.5 for w in found)
    assert [w.start for w in found] == sorted(w.start for w in found)
    # "fox" comes before "journey", and both inside the clip.
    by_word = {w.word.strip(" ,.").lower(): w for w in found}
    assert by_word["fox"].end <= by_word["journey"].start


async def test_a_cancelled_request_ends_with_aborted(engine: AudioEngine, tiny_en: LoadedWhisper) -> None:
    request = AudioRequest("cancel-me", transcription(tiny_en, LONG), asyncio.get_running_loop())
    engine.submit(request)
    engine.abort("cancel-me")
    events = [e async for e in engine.events(request)]
    assert isinstance(events[-1], Aborted)
    for _ in range(100):  # it leaves the engine at its next step
        if engine.load() == (0, 0):
            break
        await asyncio.sleep(0.05)
    assert engine.load() == (0, 0)


async def test_a_waiting_request_is_withdrawn_with_no_events_and_a_started_one_is_not(tiny_en: LoadedWhisper) -> None:
    """How an audio worker hands a job it has not started to a worker that came up later."""
    eng = AudioEngine(tiny_en, EngineConfig(max_batch=1))
    loop = asyncio.get_running_loop()
    first = AudioRequest("first", transcription(tiny_en, SHORT), loop)
    second = AudioRequest("second", transcription(tiny_en, SHORT), loop)
    eng.submit(first, second)
    eng._admit()  # what the engine thread does first in a step: first takes the only place, second waits
    assert eng.load() == (1, 1)
    assert not eng.withdraw("first")
    assert eng.withdraw("second")
    assert [e async for e in eng.events(second)] == []
    assert not eng.withdraw("second")
    assert eng.load() == (1, 0)
