"""Embeddings serving on this machine: embeddings/s at 1 and 32 concurrent requests, Ember against
sentence-transformers, one run.

    ember      POST /v1/embeddings through the real gateway, NATS and an `ember worker embed` process (inputs of
               concurrent requests share forward passes, grouped by length)
    st-loop    sentence-transformers' SentenceTransformer.encode called once per request, one request after
               another, in a process of its own: what serving it behind a plain web handler does
    st-batch   the same encode called once with every request of a wave in one list: not a server (it needs all
               requests up front), the ceiling that batching can reach on this model

Every request holds --inputs sentences (default 1), all distinct within a wave and of 5 to 30 words. The systems
take turns wave by wave (each round's wave of --waves x concurrency requests runs on Ember, then on each
baseline), so a slow minute on a shared machine falls on all of them alike. Peak memory is each process's peak
resident set (VmHWM). The goal: Ember >= 2x st-loop at 32 concurrent.

    python benchmarks/embeddings_serving.py
    python benchmarks/embeddings_serving.py --concurrency 1 8 32 --rounds 5 --inputs 4
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus.nats_server import EmbeddedNats
from ember.config import DEFAULT_EMBED_MODEL, load_settings
from ember.config.settings import default_models
from ember.config.weights import resolve_weights
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, write_config

SUBJECTS = ["The old library", "A small robot", "My neighbour's dog", "The city council", "Our team", "The river"]
VERBS = ["opened", "painted", "discussed", "repaired", "photographed", "measured", "described", "visited"]
OBJECTS = ["the museum by the harbour", "a bridge over the valley", "the budget for next year", "an old map"]
TAILS = [
    "before the storm arrived",
    "while the children were asleep in the house next door",
    "with a surprising amount of patience and care for every small detail",
    "after the meeting",
    "on a quiet Sunday morning in the middle of winter when nobody else was awake",
]


def sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct sentences of 5 to 30 words."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tail = " ".join(rng.sample(TAILS, rng.randint(0, 2)))
        out.append(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {tail} (note {seed}-{i}).")
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serve_loop(args: argparse.Namespace) -> None:
    """A baseline in its own process: after "ready", each line "mode c r" runs round r's wave of c-concurrent
    requests (mode loop: one encode per request; batch: one encode for the whole wave) and answers its seconds;
    at EOF, its peak MB."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(args.model), device="cpu", local_files_only=True)
    model.encode(sentences(8, -1))
    print("ready", flush=True)
    for line in sys.stdin:
        mode, c, r = line.split()
        wave = wave_inputs(int(c), int(r), args)
        start = time.perf_counter()
        if mode == "batch":
            model.encode([s for request in wave for s in request], batch_size=len(wave) * args.inputs)
        else:
            for request in wave:
                model.encode(request, batch_size=args.inputs)
        print(time.perf_counter() - start, flush=True)
    print(peak_rss_mb(os.getpid()), flush=True)


def wave_inputs(c: int, r: int, args: argparse.Namespace) -> list[list[str]]:
    """Round r's requests at concurrency c: waves x c requests of --inputs sentences each."""
    n = args.waves * c
    flat = sentences(n * args.inputs, seed=r * 1000 + c)
    return [flat[i * args.inputs : (i + 1) * args.inputs] for i in range(n)]


class Loop:
    """The baseline process, driven wave by wave."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, __file__, "--serve-loop", "--model", str(args.model), "--inputs", str(args.inputs)]
        cmd += ["--waves", str(args.waves)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _answer(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the baseline process ended (exit {self.proc.wait()})")
        return line.strip()

    def ready(self) -> None:
        while self._answer() != "ready":
            pass

    def wave(self, mode: str, c: int, r: int) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{mode} {c} {r}\n")
        self.proc.stdin.flush()
        return float(self._answer())

    def close(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        peak = float(self._answer())
        self.proc.wait()
        return peak


class EmberClient:
    """Round r's requests through the gateway, c in flight at a time."""

    def __init__(self, url: str, model_id: str, args: argparse.Namespace, concurrency: int) -> None:
        self.url, self.model_id, self.args = url, model_id, args
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.http = httpx.Client(base_url=url, limits=limits, timeout=600)

    def one(self, texts: list[str]) -> None:
        r = self.http.post("/v1/embeddings", json={"model": self.model_id, "input": texts, "encoding_format": "base64"})
        r.raise_for_status()
        assert len(r.json()["data"]) == len(texts)

    def wave(self, c: int, r: int, pool: ThreadPoolExecutor) -> float:
        wave = wave_inputs(c, r, self.args)
        start = time.perf_counter()
        # c threads, each taking the next request when its last one is answered: c in flight.
        list(pool.map(self.one, wave))
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="a sentence-transformers folder (default: MiniLM)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--waves", type=int, default=4, help="requests per round = waves x concurrency")
    ap.add_argument("--inputs", type=int, default=1, help="sentences per request")
    ap.add_argument("--serve-loop", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = args.model or resolve_weights(default_models()[DEFAULT_EMBED_MODEL])
    if args.serve_loop:
        serve_loop(args)
        return

    levels, rounds = args.concurrency, args.rounds
    names = ("ember", "st-loop", "st-batch")
    seconds: dict[str, dict[int, list[float]]] = {name: {c: [] for c in levels} for name in names}
    loop = Loop(args)
    peak: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        model_id = "bench-embed"
        spec = {"modality": "embed", "path": str(args.model)}
        config = write_config(Path(tmp) / "ember.toml", {model_id: spec}, auth={"enabled": False})
        gateway = GatewayThread(load_settings(config), nats.url).start()
        worker = start_worker(config, model_id, nats.url, modality="embed", log=Path(tmp) / "worker.log")
        try:
            loop.ready()
            wait_for_model(gateway.url, model_id)
            for c in levels:
                ember = EmberClient(gateway.url, model_id, args, c)
                with ThreadPoolExecutor(c) as pool:
                    ember.wave(c, -1, pool)  # warm up: connections, the worker's first batches
                    for r in range(rounds):
                        seconds["ember"][c].append(ember.wave(c, r, pool))
                        seconds["st-loop"][c].append(loop.wave("loop", c, r))
                        seconds["st-batch"][c].append(loop.wave("batch", c, r))
                ember.http.close()
            peak["ember"] = peak_rss_mb(worker.pid)
            peak["st-loop"] = peak["st-batch"] = loop.close()
        finally:
            stop_process(worker)
            gateway.stop()
            loop.proc.kill()

    print(f"model {args.model}, {args.inputs} sentence(s) per request, {args.waves} x concurrency requests a round,")
    print(f"{rounds} rounds interleaved; embeddings/s from each system's median round")
    head = ("concurrent", "ember emb/s", "st-loop", "st-batch", "vs st-loop", "vs st-batch")
    print(" ".join(f"{h:>12}" for h in head))
    for c in levels:
        n = args.waves * c * args.inputs
        e, lo, b = (n / statistics.median(seconds[name][c]) for name in names)
        print(f"{c:>12} {e:>12.1f} {lo:>12.1f} {b:>12.1f} {e / lo:>11.2f}x {e / b:>11.2f}x")
    print(f"peak memory: ember worker {peak['ember']:.0f} MB, sentence-transformers {peak['st-loop']:.0f} MB")


if __name__ == "__main__":
    main()
