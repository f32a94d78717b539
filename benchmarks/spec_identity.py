"""Speculative decoding leaves greedy output unchanged: the code-edit prompts of text_serving.py, decoded with
speculation on and off in one process, on SmolLM2 (the model text_serving.py measures) at its default dtype, with
the prefix cache off and shared. Prints, per prompt, whether the two outputs are the same, and how many drafted
tokens were accepted.

    python benchmarks/spec_identity.py [--tokens 256] [--prompts 3]

(Two separate servers, as text_serving.py compares them, can differ in the last bits of cached prompts: each has
its own prefix-cache history, and in bfloat16 a cached prompt and a recomputed one are not bit-identical.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.* and tests.helpers

from benchmarks.text_serving import CODE_EDIT_MODULE, CODE_EDIT_RENAMES
from ember.bus.messages import SamplingParams
from ember.config import SMOLLM2_MODEL, load_settings
from ember.config.weights import resolve_weights
from ember.runtimes.dtypes import resolve_dtype
from ember.runtimes.text.engine import EngineConfig, TextEngine
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.request import GenerateRequest
from tests.helpers.text_runner import new_runner


def prompts(loaded: LoadedModel, count: int) -> list[list[int]]:
    fence = "```"
    out = []
    for old, new in CODE_EDIT_RENAMES[:count]:
        text = f"# ledger.py\n{fence}python\n{CODE_EDIT_MODULE}{fence}\n\n"
        text += f"# ledger.py, with `{old}` renamed to `{new}`:\n{fence}python\n"
        out.append(loaded.tokenizer.encode(text))
    return out


async def generate(
    loaded: LoadedModel, dtype: torch.dtype, ids: list[list[int]], tokens: int, speculative: str, cache: str
) -> tuple[list[list[int]], int, int]:
    runner = new_runner(
        loaded, num_blocks=512, block_size=16, max_context=4096, max_step_tokens=600, max_batch=8, dtype=dtype
    )
    config = EngineConfig(max_batch=8, max_step_tokens=512, speculative=speculative, prefix_cache=cache)  # type: ignore[arg-type]
    engine = TextEngine(runner, loaded.tokenizer, config)
    engine.start()
    outputs = []
    try:
        for i, prompt in enumerate(ids):
            req = GenerateRequest(f"r{i}", prompt, SamplingParams(temperature=0.0), max_tokens=tokens)
            outputs.append([t async for out in engine.generate(req) for t in out.token_ids])
    finally:
        engine.stop()
    return outputs, engine.spec_drafted_tokens, engine.spec_accepted_tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, default=3)
    args = p.parse_args()
    spec = load_settings().model(SMOLLM2_MODEL)
    dtype = resolve_dtype(spec.dtype)
    loaded = load_model(resolve_weights(spec), dtype=dtype, quantization=spec.quantization)
    ids = prompts(loaded, args.prompts)
    for cache in ("off", "shared"):
        plain, _, _ = asyncio.run(generate(loaded, dtype, ids, args.tokens, "off", cache))
        drafted, drafts, accepted = asyncio.run(generate(loaded, dtype, ids, args.tokens, "auto", cache))
        same = [a == b for a, b in zip(plain, drafted, strict=True)]
        print(f"prefix_cache={cache} ({dtype}): identical {same}; drafted {drafts}, accepted {accepted}")


if __name__ == "__main__":
    main()
