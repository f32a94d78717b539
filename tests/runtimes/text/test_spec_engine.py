"""Speculative decoding through the runner and the engine, on a tiny real-format checkpoint: drafts change how
many steps a reply takes, never the reply."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from ember.bus.messages import JobStatus
from ember.config import ModelSpec
from ember.runtimes.text.engine import EngineConfig, GenerateRequest, StepOutput, TextEngine
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.request import Request
from ember.runtimes.text.scheduler import ScheduledChunk, SchedulerOutput
from ember.runtimes.text.spec_decode import Drafter, SpecConfig
from ember.runtimes.text.worker import build_engine
from tests.helpers.text_runner import Driver, new_runner
from tests.runtimes.text.test_engine import hf_greedy, request, tokens

# Prompts whose continuation the tiny model partly copies from them or from itself (prompt lookup finds matches).
REPETITIVE = [
    "a b c d e f a b c d e f a b c d e f a b",
    "def add(a, b):\n    return a + b\ndef add(a, b):\n    return",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "hello",
]


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    return load_model(tiny_model)


class Oracle(Drafter):
    """Drafts a known reply (from a run without drafts), every third drafted position wrong: many drafts are
    accepted whole, many are cut short."""

    def __init__(self, replies: dict[str, list[int]]) -> None:
        self.replies = replies

    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        drafts = []
        for req, limit in zip(reqs, limits, strict=True):
            done = req.num_output_tokens
            draft = list(self.replies.get(req.request_id, [])[done : done + limit])
            for j in range(len(draft)):
                if (done + j) % 3 == 2:
                    draft[j] = (draft[j] + 1) % 400
            drafts.append(draft)
        return drafts


def engine_for(loaded: LoadedModel, speculative: str, drafter: Drafter | None = None, k: int = 4) -> TextEngine:
    runner = new_runner(loaded, num_blocks=256, block_size=4, max_step_tokens=64, max_batch=4)
    config = EngineConfig(max_batch=4, max_step_tokens=16, speculative=speculative, num_speculative_tokens=k)  # type: ignore[arg-type]
    engine = TextEngine(runner, loaded.tokenizer, config, [drafter] if drafter else [])
    engine.start()
    return engine


async def replies(engine: TextEngine, reqs: list[GenerateRequest]) -> list[list[StepOutput]]:
    try:
        return list(await asyncio.gather(*(_collect(engine, r) for r in reqs)))
    finally:
        engine.stop()


async def _collect(engine: TextEngine, req: GenerateRequest) -> list[StepOutput]:
    return [out async for out in engine.generate(req)]


def texts(outs: list[StepOutput]) -> str:
    return "".join(o.text for o in outs)


@pytest.mark.parametrize("as_decode", [True, False], ids=["decode-rows", "prefill-span"])
def test_a_verified_chunk_gives_the_logits_of_decoding_its_tokens_one_at_a_time(
    loaded: LoadedModel, as_decode: bool
) -> None:
    ids = loaded.tokenizer.encode(REPETITIVE[2])
    guess = [44, 297, 44, 495, 12]
    one_at_a_time = Driver(new_runner(loaded))
    seq = one_at_a_time.sequence(ids)
    expected = [one_at_a_time.step((seq, len(ids)))[0]]
    for token in guess:
        one_at_a_time.append(seq, token)
        expected.append(one_at_a_time.step((seq, 1))[0])

    driver = Driver(new_runner(loaded))
    if as_decode and not driver.runner.verify_as_decode:
        pytest.skip("drafts attend as decode rows only where ember._C's paged decode is built")
    driver.runner.verify_as_decode = as_decode
    other = driver.sequence(ids[:5])  # a plain decode in the same step, ahead of the drafts
    driver.step((other, 5))
    driver.append(other, 9)
    seq = driver.sequence(ids[:-1])
    driver.step((seq, len(ids) - 1))
    driver.append(seq, ids[-1])
    assert driver.kv.allocate(seq, 1 + len(guess))
    chunk = ScheduledChunk(seq, seq.num_computed, 1)
    chunk.add_drafts(guess)
    assert driver.kv.allocate(other, 1)
    logits = driver.runner.execute(SchedulerOutput(chunks=[ScheduledChunk(other, 5, 1), chunk]))
    torch.testing.assert_close(logits[1:], torch.stack(expected), atol=1e-5, rtol=1e-5)


async def test_greedy_with_prompt_lookup_equals_greedy_without(loaded: LoadedModel, tiny_model: Path) -> None:
    reqs = [request(loaded, f"r{i}", p, max_tokens=30) for i, p in enumerate(REPETITIVE)]
    plain = await replies(engine_for(loaded, "off"), reqs)
    engine = engine_for(loaded, "always")
    drafted = await replies(engine, reqs)
    assert [tokens(o) for o in drafted] == [tokens(o) for o in plain]
    assert [texts(o) for o in drafted] == [texts(o) for o in plain]
    assert engine.spec_accepted_tokens > 0 and engine.spec_drafted_tokens > engine.spec_accepted_tokens
    assert engine.kv.pool.usage == 0.0
    # And both are transformers' greedy decoding.
    assert tokens(drafted[1]) == hf_greedy(tiny_model, reqs[1].prompt_ids, 30)


@pytest.mark.parametrize(
    "sampling",
    [
        {},
        {"temperature": 1.0, "seed": 5, "logprobs": True, "top_logprobs": 2},
        {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 9, "frequency_penalty": 0.5, "presence_penalty": 0.4},
        {"frequency_penalty": 1.0, "logprobs": True},
    ],
    ids=["greedy", "seeded-t1-logprobs", "seeded-cut-penalized", "greedy-penalized"],
)
async def test_many_accepted_drafts_change_nothing_in_the_reply(loaded: LoadedModel, sampling: dict) -> None:
    """With drafts that are mostly right (an oracle), a reply takes far fewer steps and is the same reply: the
    same tokens (greedy, and seeded sampling with the same seed), logprobs and text."""
    reqs = [request(loaded, f"r{i}", p, max_tokens=24, **sampling) for i, p in enumerate(REPETITIVE)]
    plain_engine = engine_for(loaded, "off")
    plain = await replies(plain_engine, reqs)
    engine = engine_for(loaded, "always", Oracle({r.request_id: tokens(o) for r, o in zip(reqs, plain, strict=True)}))
    drafted = await replies(engine, reqs)
    for a, b in zip(drafted, plain, strict=True):
        assert tokens(a) == tokens(b)
        assert texts(a) == texts(b)
        assert a[-1].status == b[-1].status == JobStatus.FINISHED_LENGTH
        assert a[-1].usage == b[-1].usage
        if sampling.get("logprobs"):
            got = [lp for o in a for lp in o.logprobs or []]
            want = [lp for o in b for lp in o.logprobs or []]
            assert [x.token for x in got] == [x.token for x in want]
            assert [x.logprob for x in got] == pytest.approx([x.logprob for x in want], abs=1e-4)
            assert [len(x.top_logprobs) for x in got] == [len(x.top_logprobs) for x in want]
    assert engine.spec_accepted_tokens > len(reqs) * 24 / 3
    assert engine.steps < plain_engine.steps * 0.7


async def test_a_stop_string_inside_accepted_drafts_ends_the_reply_there(loaded: LoadedModel) -> None:
    base = request(loaded, "s", REPETITIVE[0], max_tokens=24)
    [plain] = await replies(engine_for(loaded, "off"), [base])
    reply = loaded.tokenizer.decode(tokens(plain))
    stop = reply[10:14]  # a few characters some way into the reply
    assert stop and reply.index(stop) >= 8
    req = request(loaded, "s", REPETITIVE[0], max_tokens=24, stop=[stop])
    [cut] = await replies(engine_for(loaded, "off"), [req])
    engine = engine_for(loaded, "always", Oracle({"s": tokens(plain)}))
    [drafted] = await replies(engine, [req])
    assert texts(drafted) == texts(cut) == reply[: reply.index(stop)]
    assert tokens(drafted) == tokens(cut)
    assert drafted[-1].status == JobStatus.FINISHED_STOPPED
    assert engine.kv.pool.usage == 0.0


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 9])
async def test_drafts_never_take_a_reply_past_max_tokens(loaded: LoadedModel, max_tokens: int) -> None:
    req = request(loaded, "m", REPETITIVE[1], max_tokens=max_tokens)
    [plain] = await replies(engine_for(loaded, "off"), [request(loaded, "m", REPETITIVE[1], max_tokens=30)])
    engine = engine_for(loaded, "always", Oracle({"m": tokens(plain)}))
    [drafted] = await replies(engine, [req])
    assert tokens(drafted) == tokens(plain)[:max_tokens]
    assert drafted[-1].status == JobStatus.FINISHED_LENGTH
    assert drafted[-1].usage is not None and drafted[-1].usage.completion_tokens == max_tokens


async def test_replies_stream_several_tokens_per_step_when_drafts_pass(loaded: LoadedModel) -> None:
    [plain] = await replies(engine_for(loaded, "off"), [request(loaded, "x", REPETITIVE[2], max_tokens=20)])
    engine = engine_for(loaded, "always", Oracle({"x": tokens(plain)}))
    [drafted] = await replies(engine, [request(loaded, "x", REPETITIVE[2], max_tokens=20)])
    assert max(len(o.token_ids) for o in drafted) > 1
    assert max(len(o.token_ids) for o in drafted) <= 1 + 4


async def test_preemption_with_drafts_still_gives_the_same_replies(loaded: LoadedModel) -> None:
    """A pool too small for every request at once: drafts' blocks come and go, requests are preempted and
    recomputed from the prefix cache (which must hold no rejected draft), and the replies do not change."""
    reqs = [request(loaded, f"r{i}", p, max_tokens=24) for i, p in enumerate(REPETITIVE)]
    plain = await replies(engine_for(loaded, "off"), reqs)
    runner = new_runner(loaded, num_blocks=1 + 22, block_size=4, max_step_tokens=64, max_batch=4)
    oracle = Oracle({r.request_id: tokens(o) for r, o in zip(reqs, plain, strict=True)})
    engine = TextEngine(
        runner, loaded.tokenizer, EngineConfig(max_batch=4, max_step_tokens=16, speculative="always"), [oracle]
    )
    engine.start()
    drafted = await replies(engine, reqs)
    assert engine.scheduler.num_preemptions > 0 and engine.spec_accepted_tokens > 0
    assert [tokens(o) for o in drafted] == [tokens(o) for o in plain]
    assert engine.kv.pool.usage == 0.0


def test_the_model_spec_sets_the_engine_s_speculation(loaded: LoadedModel, tiny_model: Path) -> None:
    def built(**fields: object) -> TextEngine:
        spec = ModelSpec(path=tiny_model, kv_cache_bytes=2**20, **fields)  # type: ignore[arg-type]
        return build_engine(spec, loaded, torch.device("cpu"), torch.float32)

    assert built().speculator is not None and built().speculator.config == SpecConfig("auto", 4)  # type: ignore[union-attr]
    assert built(speculative="always", num_speculative_tokens=2).speculator.config == SpecConfig("always", 2)  # type: ignore[union-attr]
    off = built(speculative="off")
    assert off.speculator is None and off.spec_drafted_tokens == 0
