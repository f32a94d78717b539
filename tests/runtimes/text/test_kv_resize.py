"""The text engine's KV pool resized while it serves: what a device group does when another runtime on the GPU runs
out of memory (ember.runtimes.device_group), on the tiny real-format checkpoint."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ember.runtimes.device_group.ledger import DeviceLedger
from ember.runtimes.device_group.slot import RuntimeSlot, current_slot, missing_bytes, with_reclaim
from ember.runtimes.text import engine as engine_module
from ember.runtimes.text.attention import PagedKVCache
from ember.runtimes.text.engine import EngineConfig, TextEngine
from ember.runtimes.text.loader import LoadedModel, load_model
from tests.helpers.text_runner import new_runner
from tests.runtimes.text.test_engine import PROMPTS, make_engine, request, run, tokens

BLOCKS = 256  # make_engine's pool: blocks of 4 tokens
# One sequence of the runner's max_context (256 tokens) and the null block: the least the pool may shrink to.
FLOOR = 256 // 4 + 1


@pytest.fixture(scope="module")
def loaded(tiny_model: Path) -> LoadedModel:
    return load_model(tiny_model)


async def greedy_all(engine: TextEngine, loaded: LoadedModel, resize_to: int | None = None) -> list[list[int]]:
    """Every prompt of PROMPTS at once, 24 tokens each; with ``resize_to``, the pool is resized once the first
    request has sent a few tokens (the others still running or waiting)."""
    reqs = [request(loaded, f"r{i}", p, max_tokens=24) for i, p in enumerate(PROMPTS)]
    streams = [engine.generate(r) for r in reqs]

    async def collect(i: int) -> list[int]:
        out: list[int] = []
        async for o in streams[i]:
            out += o.token_ids
            if i == 0 and resize_to is not None and len(out) >= 6 and not resized.done():
                resized.set_result(await asyncio.wrap_future(engine.resize_kv(resize_to)))
        return out

    resized: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    outputs = await asyncio.gather(*(collect(i) for i in range(len(reqs))))
    assert resize_to is None or resized.result() > 0
    return outputs


async def test_a_shrink_mid_flight_leaves_greedy_output_unchanged(loaded: LoadedModel) -> None:
    plain = make_engine(loaded, max_batch=3)
    shrunk = make_engine(loaded, max_batch=3)
    try:
        want = await greedy_all(plain, loaded)
        before = shrunk.runner.cache.nbytes
        got = await greedy_all(shrunk, loaded, resize_to=FLOOR)
        assert got == want
        assert shrunk.kv.pool.num_blocks == shrunk.runner.cache.num_blocks == FLOOR
        assert shrunk.runner.cache.nbytes == before * FLOOR // BLOCKS
        assert shrunk.scheduler.num_preemptions >= 1  # the running requests recomputed their blocks
        assert shrunk.kv.capacity_tokens >= shrunk.max_context
    finally:
        plain.stop()
        shrunk.stop()


async def test_the_pool_never_shrinks_below_one_full_context(loaded: LoadedModel) -> None:
    engine = make_engine(loaded)
    try:
        freed = await asyncio.wrap_future(engine.resize_kv(2))
        assert engine.kv.pool.num_blocks == FLOOR
        per_block = engine.runner.cache.nbytes // FLOOR
        assert freed == (BLOCKS - FLOOR) * per_block
        assert await asyncio.wrap_future(engine.release_kv(2**30)) == 0  # as small as it may be
        # A request of the whole context still runs to its end.
        long = request(loaded, "long", "a " * 200, max_tokens=40)
        outs = await run(engine, long)
        assert len(tokens(outs)) == 40
    finally:
        engine.stop()


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``check`` until it holds or ``within`` seconds pass (the engine's pool changes have no event)."""
    deadline = time.monotonic() + within
    while not check() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)


def shrinking_engine(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch, may_grow: Callable[[int], bool]
) -> TextEngine:
    """An engine that grows its pool back 0.2 s after a shrink where ``may_grow`` says so."""
    monkeypatch.setattr(engine_module, "GROW_BACK_AFTER_S", 0.2)
    engine = make_engine(loaded)
    engine.may_grow = may_grow
    return engine


async def test_an_idle_engine_grows_its_pool_back_once_there_is_room(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = {"ok": False}
    asked: list[int] = []

    def may_grow(nbytes: int) -> bool:
        asked.append(nbytes)
        return room["ok"]

    engine = shrinking_engine(loaded, monkeypatch, may_grow)
    try:
        await asyncio.wrap_future(engine.resize_kv(FLOOR))
        await asyncio.sleep(0.8)
        assert engine.kv.pool.num_blocks == FLOOR and asked  # asked, refused: still small
        per_block = engine.runner.cache.nbytes // FLOOR
        assert asked[-1] == (BLOCKS - FLOOR) * per_block
        room["ok"] = True
        await until(lambda: engine.kv.pool.num_blocks == BLOCKS)
        assert engine.kv.pool.num_blocks == engine.runner.cache.num_blocks == BLOCKS
        outs = await run(engine, request(loaded, "after", PROMPTS[0]))
        assert len(tokens(outs)) == 12
    finally:
        engine.stop()


async def test_a_grow_back_that_cannot_allocate_leaves_the_engine_serving(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    room = {"ok": False}
    engine = shrinking_engine(loaded, monkeypatch, lambda nbytes: room["ok"])
    try:
        await asyncio.wrap_future(engine.resize_kv(FLOOR))
        failed: list[int] = []
        make = engine.runner._new_cache

        def no_memory_once(num_blocks: int) -> PagedKVCache:
            if num_blocks == BLOCKS and not failed:
                failed.append(num_blocks)
                raise RuntimeError("DefaultCPUAllocator: not enough memory")  # what the CPU allocator raises
            return make(num_blocks)

        monkeypatch.setattr(engine.runner, "_new_cache", no_memory_once)
        room["ok"] = True
        await until(lambda: bool(failed))
        assert failed == [BLOCKS]
        # The runner made the least cache instead; the engine serves on...
        assert engine.runner.cache.num_blocks == FLOOR
        assert len(tokens(await run(engine, request(loaded, "after", PROMPTS[2])))) == 12
        # ...and grows back once an allocation succeeds again.
        await until(lambda: engine.kv.pool.num_blocks == BLOCKS)
        assert engine.kv.pool.num_blocks == engine.runner.cache.num_blocks == BLOCKS
    finally:
        engine.stop()


def group_of(engine: TextEngine, device: torch.device) -> tuple[RuntimeSlot, RuntimeSlot]:
    """A device group of ``engine``'s text runtime and an image runtime, as ``ember worker gpu`` makes it; returns
    their slots (text, image)."""
    ledger = DeviceLedger(device)
    text = RuntimeSlot("text", "text", device)
    image = RuntimeSlot("image", "image", device)
    ledger.add(text)
    ledger.add(image)
    text.add_kv_cache(lambda: engine.runner.cache.nbytes)
    text.attach_kv_pool(engine)
    return text, image


async def test_a_runtime_out_of_memory_takes_kv_blocks_back_from_the_group(loaded: LoadedModel) -> None:
    cpu = torch.device("cpu")
    engine = make_engine(loaded)
    text, image = group_of(engine, cpu)
    per_block = engine.runner.cache.nbytes // BLOCKS
    try:
        calls: list[int] = []

        def forward() -> str:
            calls.append(1)
            if len(calls) == 1:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {10 * per_block / 2**20:.2f} MiB. GPU 0 has a total ..."
                )
            return "denoised"

        context = contextvars.copy_context()
        context.run(current_slot.set, image)
        result = await asyncio.to_thread(context.run, with_reclaim, forward)
        assert result == "denoised" and len(calls) == 2
        # At least what the error asked for, in whole blocks.
        assert BLOCKS - 11 <= engine.kv.pool.num_blocks <= BLOCKS - 10
        assert text.kv_cache_bytes == engine.kv.pool.num_blocks * per_block
        assert text.reclaimed_bytes == (BLOCKS - engine.kv.pool.num_blocks) * per_block
        assert image.reclaims == 1

        # Outside a device group, or with nothing left to give, the error stands.
        def broke() -> None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

        with pytest.raises(torch.OutOfMemoryError):
            with_reclaim(broke)
        await asyncio.wrap_future(engine.resize_kv(FLOOR))
        with pytest.raises(torch.OutOfMemoryError):
            await asyncio.to_thread(context.run, with_reclaim, broke)
        # The engine serves on.
        assert len(tokens(await run(engine, request(loaded, "after", PROMPTS[1])))) == 12
    finally:
        engine.stop()


def test_missing_bytes_reads_the_allocators_message() -> None:
    assert missing_bytes(RuntimeError("Tried to allocate 20.00 MiB. GPU 0 has a total capacity")) == 20 * 2**20
    assert missing_bytes(RuntimeError("Tried to allocate 1.50 GiB.")) == int(1.5 * 2**30)
    assert missing_bytes(RuntimeError("out of memory")) == 2**30


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_a_real_out_of_memory_on_the_gpu_takes_kv_memory_back(tiny_model: Path) -> None:
    """The KV cache takes all but 1 GiB of the GPU; another runtime's 3 GiB allocation runs out of memory, the
    group shrinks the cache, and the allocation then succeeds; the engine serves on."""
    device = torch.device("cuda", 0)
    gpu_model = load_model(tiny_model, device=device)
    cfg = gpu_model.config
    per_block = PagedKVCache.bytes_per_block(
        layers=cfg.num_hidden_layers,
        block_size=16,
        kv_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        dtype=torch.float32,
    )
    free, _ = torch.cuda.mem_get_info(device)
    num_blocks = (free - 2**30) // per_block
    runner = new_runner(gpu_model, num_blocks=num_blocks, block_size=16, device="cuda")
    config = EngineConfig(max_batch=4, max_waiting=16, max_step_tokens=16)
    engine = TextEngine(runner, gpu_model.tokenizer, config)
    engine.start()
    text, image = group_of(engine, device)
    try:
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(3 * 2**30, dtype=torch.uint8, device=device)  # the premise: it does not fit as it is
        context = contextvars.copy_context()
        context.run(current_slot.set, image)
        big = await asyncio.to_thread(
            context.run, with_reclaim, lambda: torch.empty(3 * 2**30, dtype=torch.uint8, device=device)
        )
        assert big.numel() == 3 * 2**30
        assert text.reclaimed_bytes >= 3 * 2**30 and image.reclaims == 1
        assert engine.kv.pool.num_blocks == engine.runner.cache.num_blocks < num_blocks
        del big
        outs = await run(engine, request(gpu_model, "after", PROMPTS[0]))
        assert len(tokens(outs)) == 12
    finally:
        engine.stop()
