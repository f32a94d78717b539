"""Draft-model drafting on tiny real-format checkpoints: a second model guesses, the target decides, and the
replies are those of the target alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ember.bus.messages import SamplingParams
from ember.config import ConfigError, ModelSpec, Settings
from ember.runtimes.text.engine import TextEngine
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.request import GenerateRequest, Request
from ember.runtimes.text.spec_decode import PromptLookupDrafter
from ember.runtimes.text.spec_decode.draft_model import DraftModelDrafter
from ember.runtimes.text.worker import build_drafter, build_engine
from tests.helpers.text_runner import new_runner
from tests.helpers.tiny_checkpoint import write_tiny_llama
from tests.runtimes.text.test_engine import request, tokens
from tests.runtimes.text.test_spec_engine import REPETITIVE, engine_for, replies
from tests.runtimes.text.test_spec_engine import _collect as collect


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model with the same tokenizer and different weights: a poor drafter."""
    return write_tiny_llama(tmp_path_factory.mktemp("other") / "tiny-other", seed=1)


def drafter_from(loaded: LoadedModel, *, num_blocks: int = 256, prefill_budget: int = 64) -> DraftModelDrafter:
    runner = new_runner(loaded, num_blocks=num_blocks, block_size=4, max_step_tokens=prefill_budget + 4, max_batch=4)
    return DraftModelDrafter(runner, vocab_size=loaded.tokenizer.vocab_size, prefill_budget=prefill_budget)


async def test_a_model_drafting_for_itself_is_almost_always_right(loaded: LoadedModel, tiny_model: Path) -> None:
    """The target's own weights as the drafter: its greedy drafts are the target's greedy tokens, so nearly every
    draft is accepted and a reply takes about a fifth of the decode steps; the replies are unchanged."""
    reqs = [request(loaded, f"r{i}", p, max_tokens=30) for i, p in enumerate(REPETITIVE)]
    plain_engine = engine_for(loaded, "off")
    plain = await replies(plain_engine, reqs)
    drafter = drafter_from(load_model(tiny_model))
    engine = engine_for(loaded, "always", drafter)
    drafted = await replies(engine, reqs)
    assert [tokens(o) for o in drafted] == [tokens(o) for o in plain]
    assert engine.spec_accepted_tokens >= 0.95 * engine.spec_drafted_tokens > 0
    assert engine.steps < plain_engine.steps / 2  # prompt steps included
    # Every shadow went with its request.
    assert not drafter._shadows and drafter.kv.pool.usage == 0.0


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 3, "frequency_penalty": 0.3}], ids=str)
async def test_a_poor_drafter_changes_nothing_in_the_replies(
    loaded: LoadedModel, other_model: Path, sampling: dict
) -> None:
    reqs = [request(loaded, f"r{i}", p, max_tokens=24, **sampling) for i, p in enumerate(REPETITIVE)]
    plain = await replies(engine_for(loaded, "off"), reqs)
    engine = engine_for(loaded, "always", drafter_from(load_model(other_model)))
    drafted = await replies(engine, reqs)
    assert [tokens(o) for o in drafted] == [tokens(o) for o in plain]
    assert engine.spec_drafted_tokens > 0 and engine.spec_accepted_tokens < 0.5 * engine.spec_drafted_tokens


async def test_long_prompts_catch_up_in_chunks_and_a_small_draft_pool_drops_idle_shadows(
    loaded: LoadedModel, tiny_model: Path
) -> None:
    """A draft pool of 24 blocks of 4 tokens for four requests of ~60 tokens: shadows of requests that are not
    drafting are dropped to make room, prompts enter the draft model 16 tokens a step, and the replies hold."""
    long_prompts = [" ".join([p] * 3) for p in REPETITIVE]
    reqs = [request(loaded, f"r{i}", p, max_tokens=20) for i, p in enumerate(long_prompts)]
    plain = await replies(engine_for(loaded, "off"), reqs)
    drafter = drafter_from(load_model(tiny_model), num_blocks=1 + 24, prefill_budget=16)
    engine = engine_for(loaded, "always", drafter)
    drafted = await replies(engine, reqs)
    assert [tokens(o) for o in drafted] == [tokens(o) for o in plain]
    assert engine.spec_accepted_tokens > 0
    assert drafter.dropped > 0 and drafter.partial_catch_ups > 0
    assert drafter.kv.pool.usage == 0.0


async def test_auto_asks_a_draft_model_only_for_drafts_that_pay(loaded: LoadedModel, tiny_model: Path) -> None:
    drafter = drafter_from(load_model(tiny_model))
    engine = engine_for(loaded, "auto", drafter)
    assert engine.speculator is not None
    # Make the draft model look as slow as the target: a draft of any depth then costs more than it can win.
    drafter.forward_seconds = 10.0
    engine.speculator.times.record(1, 0.001)
    reqs = [request(loaded, "r", REPETITIVE[0], max_tokens=12)]
    [out] = await replies(engine, reqs)
    assert len(tokens(out)) == 12
    # Only the exploring offer (every EXPLORE_EVERY-th) or none drafted.
    assert engine.speculator.verify_steps <= 1


def test_the_worker_builds_a_drafter_from_the_model_spec(
    loaded: LoadedModel, tiny_model: Path, other_model: Path, tmp_path: Path
) -> None:
    settings = Settings(
        cache_dir=tmp_path,
        models={
            "target": ModelSpec(path=tiny_model, draft_model="draft", kv_cache_bytes=2**20),
            "draft": ModelSpec(path=other_model, kv_cache_bytes=2**20, dtype="float32"),
            "plain": ModelSpec(path=tiny_model),
            "odd": ModelSpec(path=tiny_model, draft_model="wrong-tokenizer"),
            "wrong-tokenizer": ModelSpec(path=write_tiny_llama(tmp_path / "small-vocab", vocab_size=300)),
        },
    )
    cpu = torch.device("cpu")
    drafter = build_drafter(settings, settings.model("target"), loaded, cpu)
    assert isinstance(drafter, DraftModelDrafter)
    engine = build_engine(settings.model("target"), loaded, cpu, torch.float32, drafter)
    assert isinstance(engine, TextEngine) and engine.speculator is not None
    assert [type(d) for d in engine.speculator.drafters] == [PromptLookupDrafter, DraftModelDrafter]
    assert engine.speculator.drafters[1] is drafter
    assert build_drafter(settings, settings.model("plain"), loaded, cpu) is None
    off = settings.model("target").model_copy(update={"speculative": "off"})
    assert build_drafter(settings, off, loaded, cpu) is None
    with pytest.raises(ConfigError, match="does not share the tokenizer"):
        build_drafter(settings, settings.model("odd"), loaded, cpu)


async def test_a_prompt_sent_again_enters_the_draft_model_from_its_cache(loaded: LoadedModel, tiny_model: Path) -> None:
    """The draft pool caches prompt blocks as the target's cache does: the same prompt again starts its shadow from
    every full block but the one holding its last token, and the replies are those of the target alone."""
    prompt = " ".join([REPETITIVE[0]] * 3)
    n = len(loaded.tokenizer.encode(prompt, add_special_tokens=False))
    plain = await replies(engine_for(loaded, "off"), [request(loaded, "plain", prompt, max_tokens=16)])
    drafter = drafter_from(load_model(tiny_model))
    engine = engine_for(loaded, "always", drafter)
    try:
        first = await collect(engine, request(loaded, "first", prompt, max_tokens=16))
        assert drafter.kv.hit_tokens == 0
        again = await collect(engine, request(loaded, "again", prompt, max_tokens=16))
    finally:
        engine.stop()
    assert drafter.kv.hit_tokens == (n - 1) // 4 * 4 > 0
    assert tokens(first) == tokens(again) == tokens(plain[0])
    assert engine.spec_accepted_tokens > 0
    # Blocks past the prompt (which held drafts) were never indexed: only the prompt's full blocks are.
    assert drafter.kv.pool.num_cached == n // 4


def test_a_draft_forward_s_time_is_taken_from_one_token_forwards_only(loaded: LoadedModel, tiny_model: Path) -> None:
    """A shadow's catch-up (a whole prompt at first) is paid once, however deep the drafts go: timed in, it made
    every draft token look like a prompt chunk, and ``auto`` stopped drafting."""
    drafter = drafter_from(load_model(tiny_model))
    prompt = loaded.tokenizer.encode(" ".join([REPETITIVE[0]] * 2), add_special_tokens=False)
    req = Request(GenerateRequest("r", prompt, SamplingParams(temperature=0), 16))
    [draft] = drafter.propose([req], [1])  # the prompt's forward, which yields the first draft token
    assert len(draft) == 1 and drafter.forward_seconds == 0.0
    req.token_ids.append(draft[0])  # the target accepted it: the next forward is that token's, then 2 more
    [draft] = drafter.propose([req], [3])
    assert len(draft) == 3 and drafter.forward_seconds > 0.0
