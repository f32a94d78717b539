"""The continuous-batching engine on a tiny real-format checkpoint, checked against HF transformers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from ember.bus.messages import JobStatus, SamplingParams
from ember.runtimes.text import engine as engine_module
from ember.runtimes.text.engine import (
    EngineConfig,
    EngineOverloaded,
    GenerateRequest,
    OutputStream,
    StepOutput,
    TextEngine,
)
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.runner import ModelRunner
from tests.helpers.text_runner import new_runner

GREEDY = SamplingParams(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    return load_model(tiny_model)


def make_engine(
    loaded: LoadedModel,
    *,
    max_batch: int = 4,
    max_waiting: int = 16,
    runner: ModelRunner | None = None,
    num_blocks: int = 256,
    block_size: int = 4,
    prefix_cache: str = "shared",
    speculative: str = "auto",
) -> TextEngine:
    runner = runner or new_runner(
        loaded, num_blocks=num_blocks, block_size=block_size, max_step_tokens=64, max_batch=max_batch
    )
    config = EngineConfig(
        max_batch=max_batch,
        max_waiting=max_waiting,
        max_step_tokens=16,
        prefix_cache=prefix_cache,  # type: ignore[arg-type]
        speculative=speculative,  # type: ignore[arg-type]
    )
    engine = TextEngine(runner, loaded.tokenizer, config)
    engine.start()
    return engine


async def run(engine: TextEngine, req: GenerateRequest) -> list[StepOutput]:
    return [out async for out in engine.generate(req)]


def request(
    loaded: LoadedModel,
    rid: str,
    prompt: str,
    max_tokens: int = 12,
    *,
    priority: int = 0,
    key: str = "",
    **sampling: object,
) -> GenerateRequest:
    params = GREEDY.model_copy(update=sampling) if sampling else GREEDY
    ids = loaded.tokenizer.encode(prompt, add_special_tokens=False)
    return GenerateRequest(
        request_id=rid, prompt_ids=ids, sampling=params, max_tokens=max_tokens, priority=priority, key=key
    )


async def finish_into(order: list[str], stream: OutputStream) -> None:
    """Read a request to its end and note when it finished, relative to the others."""
    async for out in stream:
        if out.status.finished:
            order.append(stream.request_id)


def tokens(outs: list[StepOutput]) -> list[int]:
    return [t for o in outs for t in o.token_ids]


PROMPTS = [
    "The quick brown fox jumps over the lazy dog and keeps running far away",
    "hello",
    "Once upon a time",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",  # longer than one prefill chunk of 16
    "12345",
]


def hf_greedy(model_dir: Path, prompt_ids: list[int], n: int) -> list[int]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(prompt_ids) :].tolist()


async def test_batched_greedy_equals_transformers_token_for_token(loaded: LoadedModel, tiny_model: Path) -> None:
    engine = make_engine(loaded, max_batch=3)  # 5 prompts, 3 running at most: some wait and join mid-flight
    results = await greedy_equals_transformers(engine, loaded, tiny_model)
    for outs in results:
        assert outs[-1].status == JobStatus.FINISHED_LENGTH
        assert outs[-1].usage is not None and outs[-1].usage.completion_tokens == 20


async def greedy_equals_transformers(
    engine: TextEngine, loaded: LoadedModel, tiny_model: Path
) -> list[list[StepOutput]]:
    """Run every prompt of PROMPTS at once (20 tokens each), stop the engine, check each against HF generate."""
    try:
        reqs = [request(loaded, f"r{i}", p, max_tokens=20) for i, p in enumerate(PROMPTS)]
        results = await asyncio.gather(*(run(engine, r) for r in reqs))
    finally:
        engine.stop()
    for req, outs in zip(reqs, results, strict=True):
        assert tokens(outs) == hf_greedy(tiny_model, req.prompt_ids, 20), req.request_id
    return results


async def test_requests_joining_mid_flight_do_not_change_each_other(loaded: LoadedModel) -> None:
    engine = make_engine(loaded)
    try:
        alone = [tokens(await run(engine, request(loaded, f"a{i}", p))) for i, p in enumerate(PROMPTS[:4])]

        async def delayed(i: int, p: str) -> list[int]:
            await asyncio.sleep(0.01 * i)
            return tokens(await run(engine, request(loaded, f"b{i}", p)))

        together = await asyncio.gather(*(delayed(i, p) for i, p in enumerate(PROMPTS[:4])))
    finally:
        engine.stop()
    assert together == alone


async def test_text_is_streamed_in_step_sized_pieces_that_add_up(loaded: LoadedModel) -> None:
    engine = make_engine(loaded, speculative="off")  # with drafts, a step may yield several tokens
    try:
        outs = await run(engine, request(loaded, "s", "hello there", max_tokens=10))
    finally:
        engine.stop()
    assert all(len(o.token_ids) <= 1 for o in outs)  # one decode step -> one token per message
    assert "".join(o.text for o in outs) == loaded.tokenizer.decode(tokens(outs))


async def test_eos_ends_a_request_unless_ignored(loaded: LoadedModel) -> None:
    engine = make_engine(loaded)
    eos = next(iter(loaded.tokenizer.eos_token_ids))
    try:
        ids = tokens(await run(engine, request(loaded, "e", "hello", max_tokens=40)))
        # Whatever the random model says, a sampled EOS would have stopped it; ignore_eos forces all 40.
        assert len(ids) == 40
        plain = request(loaded, "p", "hello", max_tokens=40, ignore_eos=False)
        outs = await run(engine, plain)
    finally:
        engine.stop()
    got = tokens(outs)
    if eos in got:
        assert got[-1] == eos and outs[-1].status == JobStatus.FINISHED_STOPPED
    else:
        assert outs[-1].status == JobStatus.FINISHED_LENGTH


async def test_abort_frees_the_slot(loaded: LoadedModel) -> None:
    engine = make_engine(loaded, max_batch=1)
    try:
        stream = engine.generate(request(loaded, "long", "hello", max_tokens=200))
        async for _ in stream:
            break
        await stream.aclose()  # leaving early aborts
        # The only slot is free again: the next request runs to the end.
        outs = await asyncio.wait_for(run(engine, request(loaded, "next", "hi", max_tokens=3)), 30)
        assert outs[-1].status == JobStatus.FINISHED_LENGTH
        assert engine.load() == (0, 0)
    finally:
        engine.stop()


async def test_explicit_abort_reports_aborted(loaded: LoadedModel) -> None:
    engine = make_engine(loaded, max_batch=1)
    try:
        stream = engine.generate(request(loaded, "x", "hello", max_tokens=200))
        seen = []
        async for out in stream:
            seen.append(out)
            if len(seen) == 2:
                engine.abort("x")
        assert seen[-1].status == JobStatus.FINISHED_ABORTED
        assert len(tokens(seen)) < 200
    finally:
        engine.stop()


async def test_a_waiting_request_is_withdrawn_without_output_and_a_running_one_is_not(loaded: LoadedModel) -> None:
    """How a worker hands a job it has not started to a worker that just came up: the waiting request leaves
    with no output at all (the gateway sends it elsewhere), the running one is untouched."""
    engine = make_engine(loaded, max_batch=1)
    try:
        running = engine.generate(request(loaded, "running", "hello", max_tokens=30))
        await anext(running)  # it holds the only slot now
        waiting = engine.generate(request(loaded, "waiting", "hello", max_tokens=3))
        assert engine.load() == (1, 1)
        assert not await engine.withdraw("running")
        assert await engine.withdraw("waiting")
        assert [out async for out in waiting] == []
        assert not await engine.withdraw("waiting")  # gone: nothing to withdraw twice
        assert not await engine.withdraw("unknown")
        rest = [out async for out in running]
        assert rest[-1].status == JobStatus.FINISHED_LENGTH and len(tokens(rest)) == 29
        assert engine.load() == (0, 0)
        # The withdrawn id is free again: the job may come back to this worker.
        outs = await asyncio.wait_for(run(engine, request(loaded, "waiting", "hello", max_tokens=3)), 30)
        assert outs[-1].status == JobStatus.FINISHED_LENGTH
    finally:
        engine.stop()


async def test_higher_priority_is_admitted_first(loaded: LoadedModel) -> None:
    engine = make_engine(loaded, max_batch=1)
    order: list[str] = []
    try:
        blocker = engine.generate(request(loaded, "blocker", "hello", max_tokens=200))
        await anext(blocker)  # it holds the only slot now
        low = engine.generate(request(loaded, "low", "hello", max_tokens=3))
        high = engine.generate(request(loaded, "high", "hello", max_tokens=3, priority=5))
        await blocker.aclose()
        await asyncio.gather(finish_into(order, low), finish_into(order, high))
    finally:
        engine.stop()
    assert order == ["high", "low"]


async def test_a_full_queue_refuses_at_once(loaded: LoadedModel) -> None:
    engine = make_engine(loaded, max_batch=1, max_waiting=1)
    try:
        a = engine.generate(request(loaded, "a", "hello", max_tokens=50))
        b = engine.generate(request(loaded, "b", "hello", max_tokens=50))
        with pytest.raises(EngineOverloaded):
            engine.generate(request(loaded, "c", "hello", max_tokens=50))
        await a.aclose()
        await b.aclose()
    finally:
        engine.stop()


class FlakyRunner(ModelRunner):
    """A real runner whose next step fails once, as a device error would."""

    fail_next = False

    def execute(self, out):  # type: ignore[no-untyped-def]
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated device error")
        return super().execute(out)


async def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(loaded: LoadedModel) -> None:
    runner = new_runner(loaded, num_blocks=64, max_step_tokens=64, max_batch=2, runner_class=FlakyRunner)
    assert isinstance(runner, FlakyRunner)
    engine = make_engine(loaded, max_batch=2, runner=runner)
    try:
        stream = engine.generate(request(loaded, "doomed", "hello", max_tokens=100))
        outs = []
        async for out in stream:
            outs.append(out)
            if len(outs) == 1:
                runner.fail_next = True
        assert outs[-1].status == JobStatus.FINISHED_ERROR
        assert outs[-1].error is not None and "simulated device error" in outs[-1].error.message
        fine = await run(engine, request(loaded, "fine", "hello", max_tokens=5))
        assert fine[-1].status == JobStatus.FINISHED_LENGTH
    finally:
        engine.stop()


async def test_keys_of_one_priority_share_the_slots_fairly(loaded: LoadedModel) -> None:
    engine = make_engine(loaded, max_batch=1)
    order: list[str] = []
    try:
        blocker = engine.generate(request(loaded, "blocker", "hello", max_tokens=3, key="a"))
        await anext(blocker)
        rids = ("a1", "a2", "a3", "b1")
        streams = [engine.generate(request(loaded, rid, "hello", max_tokens=3, key=rid[0])) for rid in rids]
        await blocker.aclose()
        await asyncio.gather(*(finish_into(order, s) for s in streams))
    finally:
        engine.stop()
    # a queued three requests before b's one, but a already had the slot (the blocker): b goes first, not last.
    assert order == ["b1", "a1", "a2", "a3"]


async def test_greedy_equals_transformers_when_the_pool_forces_preemption(
    loaded: LoadedModel, tiny_model: Path
) -> None:
    """A pool far too small for five requests at once: some are preempted, recomputed, and still generate exactly
    what transformers generates alone."""
    engine = make_engine(loaded, max_batch=4, num_blocks=1 + 20, block_size=4)  # 80 tokens for ~150 wanted
    try:
        reqs = [request(loaded, f"r{i}", p, max_tokens=20) for i, p in enumerate(PROMPTS)]
        results = await asyncio.gather(*(run(engine, r) for r in reqs))
    finally:
        engine.stop()
    assert engine.scheduler.num_preemptions > 0
    for req, outs in zip(reqs, results, strict=True):
        assert tokens(outs) == hf_greedy(tiny_model, req.prompt_ids, 20), req.request_id
    assert engine.kv.pool.usage == 0.0


async def test_a_repeated_prompt_is_served_from_the_prefix_cache(loaded: LoadedModel) -> None:
    engine = make_engine(loaded)
    prompt = PROMPTS[0] + " " + PROMPTS[3]
    try:
        first = await run(engine, request(loaded, "first", prompt, max_tokens=6))
        second = await run(engine, request(loaded, "second", prompt, max_tokens=6))
    finally:
        engine.stop()
    n = len(loaded.tokenizer.encode(prompt, add_special_tokens=False))
    assert first[-1].usage is not None and first[-1].usage.cached_tokens == 0
    assert second[-1].usage is not None and second[-1].usage.cached_tokens == (n - 1) // 4 * 4
    assert tokens(first) == tokens(second)


async def test_choices_of_one_prompt_share_its_prefill(loaded: LoadedModel) -> None:
    engine = make_engine(loaded)
    prompt = PROMPTS[3] + " " + PROMPTS[0]
    try:
        outs = await asyncio.gather(*(run(engine, request(loaded, f"n{i}", prompt, max_tokens=5)) for i in range(3)))
    finally:
        engine.stop()
    cached = sorted(o[-1].usage.cached_tokens for o in outs if o[-1].usage is not None)
    assert cached[0] == 0 and cached[1] == cached[2] > 0
    assert len({tuple(tokens(o)) for o in outs}) == 1


@pytest.mark.parametrize(("mode", "shared"), [("per_key", False), ("off", False), ("shared", True)])
async def test_prefix_cache_modes(loaded: LoadedModel, mode: str, shared: bool) -> None:
    engine = make_engine(loaded, prefix_cache=mode)
    prompt = PROMPTS[3]
    try:
        await run(engine, request(loaded, "a", prompt, max_tokens=2, key="alice"))
        bob = await run(engine, request(loaded, "b", prompt, max_tokens=2, key="bob"))
        alice = await run(engine, request(loaded, "c", prompt, max_tokens=2, key="alice"))
    finally:
        engine.stop()
    assert bob[-1].usage is not None and alice[-1].usage is not None
    assert (bob[-1].usage.cached_tokens > 0) == shared
    assert (alice[-1].usage.cached_tokens > 0) == (mode != "off")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_batched_greedy_on_cuda_equals_transformers(tiny_model: Path) -> None:
    loaded = load_model(tiny_model, device="cuda")
    runner = new_runner(loaded, num_blocks=64, block_size=4, max_step_tokens=64, max_batch=3, device="cuda")
    engine = TextEngine(runner, loaded.tokenizer, EngineConfig(max_batch=3, max_step_tokens=16))
    engine.start()
    await greedy_equals_transformers(engine, loaded, tiny_model)


async def test_the_engine_hands_freed_memory_back_when_it_goes_idle(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(loaded, speculative="off")
    idle_at: list[int] = []  # the scheduler's request count at each release

    def release() -> bool:
        idle_at.append(len(engine.scheduler))
        return True

    monkeypatch.setattr(engine_module, "release_freed_memory", release)
    try:
        await asyncio.gather(
            run(engine, request(loaded, "a", "hello", max_tokens=6)),
            run(engine, request(loaded, "b", "Once upon a time", max_tokens=12)),
        )
    finally:
        engine.stop()
    assert engine.steps >= 12
    assert idle_at and set(idle_at) == {0} and len(idle_at) <= 2  # once idle, not at every step
