"""What grammar masks cost the engine's sampling step: decode tokens/s with and without constraints.

At 1 and 16 concurrent sequences, the same engine runs the same number of tokens per sequence three ways:
unconstrained, every sequence under a JSON-schema grammar, and half of them constrained (the mixed batch the
server really sees). ``ignore_eos`` is not used by constrained rows (a grammar ends them), so the schema is an
array of at least ``--tokens`` small integers: every sequence then produces exactly ``--tokens`` tokens.
It also reports the time llguidance needs per mask (the part added to each step).

    python benchmarks/grammar_overhead.py [--model smollm2-135m-instruct] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 200}


async def run_batch(engine: Any, handler: Any, prompt_ids: list[int], n: int, tokens: int, constrained: int) -> float:
    """Decode tokens/s of ``n`` concurrent sequences, the first ``constrained`` of them under the grammar."""
    from ember.bus.messages import OutputConstraint, SamplingParams, TextJob
    from ember.runtimes.text.engine import GenerateRequest

    constraint = OutputConstraint(type="json_schema", json_schema=SCHEMA)
    reqs = []
    for i in range(n):
        matcher = None
        if i < constrained:
            job = TextJob(request_id="c", model="m", prompt="x", response_format=constraint)
            matcher = handler.prepare(job).matcher
        sampling = SamplingParams(temperature=1.0, seed=i, max_tokens=tokens, ignore_eos=True)
        reqs.append(GenerateRequest(f"r{time.perf_counter_ns()}-{i}", prompt_ids, sampling, tokens, matcher=matcher))

    async def one(req: GenerateRequest) -> tuple[float, int]:
        first, count = 0.0, 0
        async for out in engine.generate(req):
            if count == 0 and out.token_ids:
                first = time.perf_counter()  # decode starts after the prompt: time from the first token on
            count += len(out.token_ids)
        return first, count

    results = await asyncio.gather(*(one(r) for r in reqs))
    end = time.perf_counter()
    start = max(f for f, _ in results)  # every sequence decoding together from here
    produced = sum(c for _, c in results)
    return (produced - n) / (end - start) if end > start else float("nan")


def mask_micros(handler: Any, n: int) -> float:
    """Microseconds to compute one mask for a JSON grammar mid-reply (llguidance alone)."""
    from ember.bus.messages import OutputConstraint, TextJob

    job = TextJob(
        request_id="c", model="m", prompt="x", response_format=OutputConstraint(type="json_schema", json_schema=SCHEMA)
    )
    matcher = handler.prepare(job).matcher
    for t in handler.loaded.tokenizer.encode("[1, 2, 3", add_special_tokens=False):
        matcher.consume_token(t)
    start = time.perf_counter()
    for _ in range(n):
        matcher.compute_bitmask()
    return (time.perf_counter() - start) / n * 1e6


async def main_async(model: str, config: str | None, tokens: int) -> None:
    from ember.config import load_settings
    from ember.runtimes.text.worker import TextJobHandler, start_model_thread

    settings = load_settings(config)
    settings.models[model] = settings.model(model).model_copy(update={"max_batch": 16, "max_context": 512})
    loaded, engine = await start_model_thread(model, settings)
    handler = TextJobHandler(model, loaded, engine)
    prompt_ids = loaded.tokenizer.encode("Write a list of numbers:", add_special_tokens=False)
    try:
        await run_batch(engine, handler, prompt_ids, 2, 8, 1)  # warm-up: tokenizer for llguidance, kernels
        print(f"model {model}, {tokens} tokens per sequence; one llguidance mask: {mask_micros(handler, 200):.0f} µs")
        print(f"{'sequences':>9} {'unconstrained tok/s':>20} {'all constrained':>16} {'overhead':>9} {'half':>8}")
        for n in (1, 16):
            free = await run_batch(engine, handler, prompt_ids, n, tokens, 0)
            full = await run_batch(engine, handler, prompt_ids, n, tokens, n)
            half = await run_batch(engine, handler, prompt_ids, n, tokens, n // 2) if n > 1 else float("nan")
            print(f"{n:>9} {free:>20.1f} {full:>16.1f} {100 * (free - full) / free:>8.1f}% {half:>8.1f}")
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--config", default=None)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main_async(args.model, args.config, args.tokens))


if __name__ == "__main__":
    main()
