"""The speech engine on its own thread: audio a piece at a time, interleaving, fairness, cancels, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from ember.runtimes.serving import EngineOverloaded
from ember.runtimes.speech.engine import (
    Aborted,
    Audio,
    EngineConfig,
    Event,
    Failed,
    Finished,
    SpeechEngine,
    SpeechRequest,
)
from ember.runtimes.speech.model import PiperModel, Voice

LONG = " ".join(
    [
        "The library opens at nine in the morning.",
        "Please bring your umbrella because it might rain later today.",
        "My sister plays the piano every Sunday afternoon.",
        "The train to the city leaves from platform four.",
    ]
)


@pytest.fixture
def engine(piper: PiperModel) -> Iterator[SpeechEngine]:
    engine = SpeechEngine(piper, EngineConfig(max_batch=4, max_waiting=2))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    yield engine
    engine.stop()
    thread.join(timeout=10)


def request(piper: PiperModel, rid: str, text: str, priority: int = 0) -> SpeechRequest:
    return SpeechRequest(rid, piper.pieces(text), piper.voice_for(0, 1.0), asyncio.get_running_loop(), priority)


async def timed(engine: SpeechEngine, r: SpeechRequest) -> AsyncIterator[tuple[float, Event]]:
    async for event in engine.events(r):
        yield time.monotonic(), event


async def collect(engine: SpeechEngine, r: SpeechRequest) -> list[tuple[float, Event]]:
    return [e async for e in timed(engine, r)]


async def test_a_long_input_streams_a_piece_at_a_time(engine: SpeechEngine, piper: PiperModel) -> None:
    r = request(piper, "long", LONG)
    started = time.monotonic()
    engine.submit(r)
    events = await collect(engine, r)
    audio = [e for _, e in events if isinstance(e, Audio)]
    assert len(audio) == len(r.pieces) == 4
    finished = events[-1][1]
    assert isinstance(finished, Finished)
    assert finished.seconds == pytest.approx(sum(a.samples.size for a in audio) / piper.sample_rate)
    # The first sentence is out long before the last is made.
    first, last = events[0][0] - started, events[-1][0] - started
    assert first < last / 2, (first, last)


async def test_a_short_request_is_heard_before_a_long_one_ends(engine: SpeechEngine, piper: PiperModel) -> None:
    long, short = request(piper, "long", LONG * 2), request(piper, "short", "Knowledge is power.")
    engine.submit(long)
    await asyncio.sleep(0.05)
    engine.submit(short)
    long_events, short_events = await asyncio.gather(collect(engine, long), collect(engine, short))
    assert short_events[-1][0] < long_events[-1][0]
    assert isinstance(short_events[-1][1], Finished) and isinstance(long_events[-1][1], Finished)
    # And a higher priority goes first even among the running.
    low, high = request(piper, "low", LONG), request(piper, "high", LONG, priority=10)
    engine.submit(low)
    engine.submit(high)
    low_events, high_events = await asyncio.gather(collect(engine, low), collect(engine, high))
    assert high_events[-1][0] < low_events[-1][0]


async def test_cancel_overload_and_a_failing_piece(engine: SpeechEngine, piper: PiperModel) -> None:
    r = request(piper, "gone", LONG * 4)
    engine.submit(r)
    events = timed(engine, r)
    _, first = await anext(events)
    assert isinstance(first, Audio)
    engine.abort("gone")
    rest = [e async for _, e in events]
    assert isinstance(rest[-1], Aborted) and len(rest) < len(r.pieces)
    # A queue past max_waiting with a full batch: 503, nothing queued.
    busy = [request(piper, f"busy{i}", LONG) for i in range(6)]
    for b in busy[:6]:
        engine.submit(b)
    with pytest.raises(EngineOverloaded):
        engine.submit(request(piper, "one-too-many", "Hi."))
    for b in busy:
        engine.abort(b.request_id)
    # A piece the network cannot take fails its request, and the engine serves the next one.
    broken = SpeechRequest("broken", [[]], Voice(speaker=None, length_scale=float("nan")), r.loop)
    engine.submit(broken)
    (event,) = [e async for _, e in timed(engine, broken)]
    assert isinstance(event, Failed) and "synthesis failed" in event.message
    ok = request(piper, "after", "All that glitters is not gold.")
    engine.submit(ok)
    assert isinstance((await collect(engine, ok))[-1][1], Finished)


async def test_a_waiting_request_is_withdrawn_with_no_events_and_a_started_one_is_not(piper: PiperModel) -> None:
    """How a speech worker hands a job it has not started to a worker that came up later."""
    eng = SpeechEngine(piper, EngineConfig(max_batch=1))
    first, second = request(piper, "first", "One sentence."), request(piper, "second", "Another one.")
    eng.submit(first)
    eng.submit(second)
    with eng._lock:
        assert eng._next() is first  # what the engine thread does first: first takes the only place
    assert eng.load() == (1, 1)
    assert not eng.withdraw("first")
    assert eng.withdraw("second")
    assert [e async for e in eng.events(second)] == []
    assert not eng.withdraw("second")
    assert eng.load() == (1, 0)
