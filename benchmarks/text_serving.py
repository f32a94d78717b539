"""Text serving on this machine: TTFT and tokens/s at 1 and 8 concurrent streams, and the gateway + bus overhead.

Runs the real stack as separate processes (embedded nats-server, one text worker, `ember gateway`), drives it
over loopback HTTP, and times Hugging Face transformers' `generate` on the same weights in the same run.

    python benchmarks/text_serving.py                      # the default model, SmolLM2-135M-Instruct
    python benchmarks/text_serving.py --max-tokens 64 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus.nats_server import EmbeddedNats, free_port
from ember.config import DEFAULT_MODEL, load_settings
from ember.config.weights import resolve_weights
from tests.helpers.cluster import wait_for_model

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works.",
    "List some facts about the moon.",
    "Describe a walk through a forest in autumn.",
    "What makes a good cup of tea?",
    "Tell me about the history of paper.",
    "How do bees make honey?",
    "Describe the water cycle.",
]


@dataclass
class StreamResult:
    ttft_s: float
    total_s: float
    tokens: int


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def one_stream(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> StreamResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    total = time.perf_counter() - start
    return StreamResult(ttft_s=ttft if ttft is not None else total, total_s=total, tokens=tokens)


async def concurrent_streams(url: str, model: str, concurrency: int, max_tokens: int, rounds: int) -> dict[str, float]:
    results: list[StreamResult] = []
    wall = 0.0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for r in range(rounds):
            start = time.perf_counter()
            batch = await asyncio.gather(
                *(one_stream(client, model, PROMPTS[(r + i) % len(PROMPTS)], max_tokens) for i in range(concurrency))
            )
            wall += time.perf_counter() - start
            results += batch
    return {
        "ttft_p50_ms": 1000 * statistics.median(r.ttft_s for r in results),
        "per_stream_tok_s": statistics.median(r.tokens / (r.total_s - r.ttft_s) for r in results),
        "aggregate_tok_s": sum(r.tokens for r in results) / wall,
    }


def overhead(url: str, model: str, n: int, max_tokens: int) -> dict[str, float]:
    """Client wall time minus the worker's own time (x-ember-processing-ms), per non-streamed request."""
    gaps = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(n):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            start = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            wall_ms = 1000 * (time.perf_counter() - start)
            r.raise_for_status()
            gaps.append(wall_ms - float(r.headers["x-ember-processing-ms"]))
    return {"p50_ms": statistics.median(gaps), "p99_ms": pct(gaps, 0.99)}


def hf_baseline(folder: Path, max_tokens: int, batch: int) -> float:
    """Tokens/s of transformers' greedy generate on the same weights (batch prompts left-padded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS[:batch]
    ]
    enc = tok(texts, return_tensors="pt", padding=True)
    kwargs = {"max_new_tokens": max_tokens, "min_new_tokens": max_tokens, "do_sample": False}
    model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)  # warm up
    start = time.perf_counter()
    out = model.generate(**enc, **kwargs, pad_token_id=tok.pad_token_id)
    elapsed = time.perf_counter() - start
    return (out.shape[1] - enc["input_ids"].shape[1]) * batch / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--overhead-requests", type=int, default=30)
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()

    settings = load_settings()
    spec = settings.model(args.model)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        port = free_port()
        # Dev mode: this measures serving, not auth (benchmarks/ has its own auth + limits overhead figure).
        env = {**os.environ, "EMBER_GATEWAY__PORT": str(port), "EMBER_LOG_LEVEL": "warning", "EMBER_AUTH__ENABLED": "0"}
        cli = [sys.executable, "-m", "ember.cli"]
        worker = subprocess.Popen([*cli, "worker", "text", "--model", args.model, "--nats", nats.url], env=env)
        gateway = subprocess.Popen([*cli, "gateway", "--nats", nats.url], env=env, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.perf_counter()
            wait_for_model(url, args.model, timeout=600)
            ready_s = time.perf_counter() - started
            asyncio.run(concurrent_streams(url, args.model, 1, 8, 1))  # warm up
            rows = {
                c: asyncio.run(concurrent_streams(url, args.model, c, args.max_tokens, args.rounds)) for c in (1, 8)
            }
            short = overhead(url, args.model, args.overhead_requests, 1)
            longer = overhead(url, args.model, max(5, args.overhead_requests // 3), 32)
        finally:
            for proc in (gateway, worker):
                proc.terminate()
                proc.wait(30)

    hf = {}
    if not args.skip_hf:
        from ember.runtimes.text.loader import convert_gguf_cached

        weights = resolve_weights(spec)
        folder = convert_gguf_cached(weights, cache_dir=settings.cache_dir) if weights.suffix == ".gguf" else weights
        hf = {c: hf_baseline(folder, args.max_tokens, c) for c in (1, 8)}

    print(f"\nmodel {args.model}, {args.max_tokens} tokens per stream, greedy, {os.cpu_count()} CPU cores")
    print(f"worker ready after {ready_s:.1f}s\n")
    print("| streams | Ember TTFT p50 (ms) | Ember tok/s per stream | Ember tok/s total | HF generate tok/s total |")
    print("|---|---|---|---|---|")
    for c, row in rows.items():
        peer = f"{hf[c]:.1f}" if c in hf else "-"
        ttft, per, total = row["ttft_p50_ms"], row["per_stream_tok_s"], row["aggregate_tok_s"]
        print(f"| {c} | {ttft:.0f} | {per:.1f} | {total:.1f} | {peer} |")
    print("\ngateway + bus overhead per request (client wall time - worker processing time):")
    print("| request | p50 (ms) | p99 (ms) |")
    print("|---|---|---|")
    print(f"| 1 token, non-streamed | {short['p50_ms']:.1f} | {short['p99_ms']:.1f} |")
    print(f"| 32 tokens, non-streamed | {longer['p50_ms']:.1f} | {longer['p99_ms']:.1f} |")


if __name__ == "__main__":
    main()
