"""A transcription's windows: the temperature fallback, the prompt each window gets, and the engine's retries."""

from __future__ import annotations

import asyncio
import io
import threading
import warnings
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from whisper.tokenizer import Tokenizer, get_tokenizer

from ember.bus.messages import AudioJob
from ember.config.settings import AudioSettings
from ember.runtimes.audio.decoding import SearchOptions, WindowResult, WindowTask
from ember.runtimes.audio.engine import AudioEngine, AudioRequest, EngineConfig, Finished
from ember.runtimes.audio.loader import load_whisper
from ember.runtimes.audio.pipeline import Transcription, temperatures
from ember.runtimes.audio.worker import AudioJobHandler


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # whisper leaves its vocabulary file open
        return get_tokenizer(False)


def transcription(tok: Tokenizer, seconds: int = 60, **kwargs: object) -> Transcription:
    fields: dict[str, object] = {"temperature": 0.0, "prompt": None, **kwargs}
    mel = torch.zeros(80, seconds * 100 + 3000)
    return Transcription(mel=mel, tokenizer=tok, task="transcribe", language="en", word_timestamps=False, **fields)  # type: ignore[arg-type]


def result(
    tok: Tokenizer, text: str, temperature: float, avg_logprob: float = -0.3, no_speech: float = 0.01
) -> WindowResult:
    """A decoded window: one segment of ``text`` from 0 to 2 s."""
    tb = tok.timestamp_begin
    tokens = [tb, *tok.encode(" " + text), tb + 100]
    return WindowResult(tokens, avg_logprob * (len(tokens) + 1), avg_logprob, no_speech, temperature)


def test_the_ladder_starts_at_the_requests_temperature() -> None:
    assert temperatures(0.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert temperatures(0.3) == [0.3, 0.5, 0.7, 0.9]
    assert temperatures(1.0) == [1.0]


def test_an_unsure_window_goes_up_the_ladder_and_the_likeliest_attempt_stands(tok: Tokenizer) -> None:
    t = transcription(tok, search=SearchOptions(beam_size=5, best_of=3))
    seen = []
    logprobs = [-1.5, -1.2, -2.0, -1.1, -3.0, -1.4]  # every attempt unsure; the one at 0.6 is the likeliest
    for i, lp in enumerate(logprobs):
        task = t.next_task(0, 100)
        seen.append((task.temperature, task.search.group(task.temperature)))
        out = t.feed(result(tok, f"Attempt number {i}.", task.temperature, lp), model=None)  # type: ignore[arg-type]
        assert (out is None) == (i < len(logprobs) - 1)
    assert seen == [(0.0, 5), (0.2, 3), (0.4, 3), (0.6, 3), (0.8, 3), (1.0, 3)]
    assert out is not None and [s.text for s in out] == [" Attempt number 3."]
    assert out[0].temperature == 0.6 and out[0].avg_logprob == -1.1
    assert t.seek == 3000 and t.next_task(0, 100).temperature == 0.0  # the next window starts cold again


def test_repeated_text_is_decoded_again_and_silence_is_skipped(tok: Tokenizer) -> None:
    t = transcription(tok)
    assert t.feed(result(tok, "the cat " * 30, 0.0), model=None) is None  # type: ignore[arg-type]
    assert t.next_task(0, 100).temperature == 0.2
    assert t.feed(result(tok, "The cat sat on the mat.", 0.2), model=None)  # type: ignore[arg-type]
    # No one speaks (and the model is unsure): no fallback, no segment, on to the next window.
    silent = result(tok, "Thank you.", 0.0, avg_logprob=-1.5, no_speech=0.9)
    assert t.feed(silent, model=None) == [] and t.done  # type: ignore[arg-type]


def test_each_window_is_prompted_with_the_text_before_it(tok: Tokenizer) -> None:
    prompt = tuple(tok.encode(" Glossary: Okonkwo."))
    t = transcription(tok, seconds=90, prompt=prompt)
    sot = tuple(tok.sot_sequence)
    first = t.next_task(0, 100)
    assert first.prefix == (tok.sot_prev, *prompt, *sot) and first.prefix[first.sot_index] == tok.sot
    one = result(tok, "The first window.", 0.0)
    t.feed(one, model=None)  # type: ignore[arg-type]
    second = t.next_task(0, 100)
    assert second.prefix == (tok.sot_prev, *prompt, *one.tokens, *sot)
    assert t.next_task(0, 5).prefix == (tok.sot_prev, *one.tokens[-5:], *sot)  # the latest tokens, when capped
    # A window that needed a temperature over 0.5 prompts nothing: its text is likely wrong.
    assert t.feed(result(tok, "Unsure.", 0.0, avg_logprob=-2), model=None) is None  # type: ignore[arg-type]
    for temperature in (0.2, 0.4, 0.6):
        t.feed(result(tok, "Hotter text here.", temperature, avg_logprob=-2 if temperature < 0.6 else -0.5), model=None)  # type: ignore[arg-type]
    assert t.next_task(0, 100).prefix == sot

    plain = transcription(tok, prompt=prompt, condition_on_previous_text=False)
    plain.feed(one, model=None)  # type: ignore[arg-type]
    assert plain.next_task(0, 100).prefix == sot  # the user's prompt conditions the first window only


async def test_the_engine_decodes_failed_windows_again_hotter(tiny_whisper_path: Path, tmp_path: Path) -> None:
    """A random model is unsure of everything: each window is tried at every temperature (beams, then best-of
    samples) on one encoder pass, and the request still finishes."""
    loaded = load_whisper(tiny_whisper_path, tmp_path, torch.device("cpu"))
    engine = AudioEngine(loaded, EngineConfig(max_batch=2))
    tried: list[list[tuple[float, int]]] = []
    decode = engine.decoder.decode

    def spy(features: torch.Tensor, tasks: list[WindowTask]) -> list[WindowResult]:
        tried.append([(t.temperature, t.search.group(t.temperature)) for t in tasks])
        return decode(features, tasks)

    engine.decoder.decode = spy  # type: ignore[method-assign]
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    torch.manual_seed(0)
    loop = asyncio.get_running_loop()
    requests = [
        AudioRequest(f"r{i}", transcription(loaded.tokenizer(), seconds=5, search=SearchOptions(3, 2)), loop)
        for i in range(2)
    ]
    requests[0].transcription.mel.normal_()  # noise, where the model's output is anything but sure
    requests[1].transcription.mel.normal_()
    engine.submit(*requests)
    try:
        for r in requests:
            events = [e async for e in engine.events(r)]
            assert isinstance(events[-1], Finished)
    finally:
        engine.stop()
        thread.join(5)
    assert tried[0] == [(0.0, 3), (0.0, 3)]  # both windows, beams, in one batch
    assert [t for batch in tried for t, _ in batch if t > 0], tried  # and fallbacks, sampled two at a time
    assert all(g == 2 for batch in tried for t, g in batch if t > 0)


def test_the_worker_takes_the_prompt_search_and_vad_from_the_job_and_settings(
    tiny_whisper_path: Path, tmp_path: Path
) -> None:
    loaded = load_whisper(tiny_whisper_path, tmp_path, torch.device("cpu"))
    settings = AudioSettings(beam_size=3, best_of=2, condition_on_previous_text=False)
    handler = AudioJobHandler("tiny", loaded, AudioEngine(loaded, EngineConfig()), None, settings)
    rate = 16000
    rng = np.random.default_rng(0)
    audio = np.concatenate([rng.normal(0, 0.1, rate), np.zeros(5 * rate), rng.normal(0, 0.1, rate)])
    data = io.BytesIO()
    with wave.open(data, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    job = AudioJob(request_id="p", model="tiny", prompt="  Okonkwo, azithromycin. ")
    try:
        t = handler.prepare(job, data.getvalue(), "en")
    finally:
        handler.close()
    prompt = tuple(loaded.tokenizer().encode(" Okonkwo, azithromycin."))
    assert t.next_task(0, 100).prefix[: 1 + len(prompt)] == (loaded.tokenizer().sot_prev, *prompt)
    assert t.search == SearchOptions(beam_size=3, best_of=2) and not t.condition_on_previous_text
    # The 5 s of silence went (but 0.8 s of it), and times still count from the upload's start.
    assert t.timeline is not None and t.content_duration == pytest.approx(2.8, abs=0.05)
    assert t.duration == pytest.approx(7.0)
