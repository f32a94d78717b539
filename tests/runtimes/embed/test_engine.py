"""The embeddings engine on a tiny random encoder: batching across requests changes no vector, groups stay tight,
a small request is not stuck behind a big one, aborts and overload are clean."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from ember.runtimes.embed.engine import EmbedEngine, EmbedRequest, EngineConfig, _Row, length_groups
from ember.runtimes.embed.loader import LoadedEncoder
from ember.runtimes.serving import EngineOverloaded

WORDS = "the quick brown fox jumps over lazy dog paris is capital of france and berlin germany".split()


def sentence(i: int, n: int) -> str:
    return " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))


@pytest.fixture
def engine(tiny_bert: LoadedEncoder) -> Iterator[EmbedEngine]:
    e = EmbedEngine(tiny_bert, EngineConfig(max_batch=16, max_batch_tokens=256, max_waiting=8))
    thread = threading.Thread(target=e.run, daemon=True)
    thread.start()
    yield e
    e.stop()
    thread.join(timeout=10)


def request(loaded: LoadedEncoder, texts: list[str], rid: str, key: str = "k") -> EmbedRequest:
    loop = asyncio.get_running_loop()
    return EmbedRequest(rid, loaded.tokenizer.encode(texts), loop, loop.create_future(), key=key)


async def test_vectors_do_not_depend_on_the_batch(engine: EmbedEngine, tiny_bert: LoadedEncoder) -> None:
    texts = [sentence(i, 1 + (i * 5) % 23) for i in range(40)]
    alone = []
    for i, t in enumerate(texts):
        r = request(tiny_bert, [t], f"alone-{i}")
        engine.submit(r)
        alone.append((await r.done)[0])
    batched = [request(tiny_bert, texts[i : i + 10], f"batch-{i}", key=f"k{i}") for i in range(0, 40, 10)]
    for r in batched:
        engine.submit(r)
    together = np.concatenate([await r.done for r in batched])
    assert together.shape == (40, tiny_bert.dimensions)
    np.testing.assert_allclose(together, np.stack(alone), atol=2e-6)
    assert engine.stats.forwards < 40 + 40  # the batched requests shared forward passes


def test_length_groups_keep_padding_small(tiny_bert: LoadedEncoder) -> None:
    loop = asyncio.new_event_loop()
    try:
        lengths = [3] * 40 + [30] * 10 + [60] * 4
        r = EmbedRequest("r", [[1] * n for n in lengths], loop, loop.create_future())
        groups = length_groups([_Row(r, i) for i in range(len(lengths))])
    finally:
        loop.close()
    assert sorted(len(row.ids) for g in groups for row in g) == sorted(lengths)
    padded = sum(max(len(row.ids) for row in g) * len(g) for g in groups)
    assert padded <= 1.3 * sum(lengths)  # one group would pad to 60 * 54 = 3240 against 780 real tokens
    assert len(groups) <= 3


async def test_a_small_request_of_another_key_passes_a_big_one(engine: EmbedEngine, tiny_bert: LoadedEncoder) -> None:
    big = request(tiny_bert, [sentence(i, 20) for i in range(400)], "big", key="bulk")
    small = request(tiny_bert, ["hello world"], "small", key="chat")
    engine.submit(big)
    await asyncio.sleep(0.01)
    engine.submit(small)
    await small.done
    assert not big.done.done()  # 400 rows of 22 tokens take ~35 steps of 256 tokens; the small one took one
    assert (await big.done).shape == (400, tiny_bert.dimensions)


async def test_abort_and_overload(engine: EmbedEngine, tiny_bert: LoadedEncoder) -> None:
    big = request(tiny_bert, [sentence(i, 20) for i in range(400)], "big")
    engine.submit(big)
    engine.abort("big")
    with pytest.raises(asyncio.CancelledError):
        await big.done
    waiting = [request(tiny_bert, [sentence(i, 20)] * 50, f"w{i}") for i in range(8)]
    for r in waiting:
        engine.submit(r)
    with pytest.raises(EngineOverloaded):
        engine.submit(request(tiny_bert, ["one more"], "over"))
    for r in waiting:
        assert (await r.done).shape == (50, tiny_bert.dimensions)
    after = request(tiny_bert, ["one more"], "after")
    engine.submit(after)
    assert (await after.done).shape == (1, tiny_bert.dimensions)


async def test_a_request_whose_rows_all_wait_is_withdrawn_and_a_started_one_is_not(tiny_bert: LoadedEncoder) -> None:
    """How an embeddings worker hands a job it has not started to a worker that came up later."""
    eng = EmbedEngine(tiny_bert, EngineConfig(max_batch=2, max_batch_tokens=256))
    first = request(tiny_bert, [sentence(i, 5) for i in range(4)], "first")
    second = request(tiny_bert, [sentence(i, 5) for i in range(2)], "second")
    eng.submit(first)
    eng.submit(second)
    with eng._lock:
        taken = eng._take()  # what the engine thread does first: two of first's rows go into the step
    assert {row.request.request_id for row in taken} == {"first"}
    assert not eng.withdraw("first")
    assert eng.withdraw("second")
    with pytest.raises(asyncio.CancelledError):
        await second.done
    assert second.withdrawn and not first.withdrawn
    assert not eng.withdraw("second")
