"""Which blocks a request holds: growth, prefix hits, commits, release; and the salts of the cache modes."""

from __future__ import annotations

from ember.bus.messages import SamplingParams
from ember.runtimes.text.block_pool import BlockPool
from ember.runtimes.text.kv_manager import KVCacheManager
from ember.runtimes.text.request import GenerateRequest, Request


def request(tokens: list[int], salt: str | None = "") -> Request:
    return Request(GenerateRequest("r", tokens, SamplingParams(), max_tokens=8), cache_salt=salt)


def computed(kv: KVCacheManager, req: Request, n: int | None = None) -> Request:
    """Allocate and 'compute' the request's first n tokens (all by default), as a step would."""
    n = req.num_tokens - req.num_computed if n is None else n
    assert kv.allocate(req, n)
    req.num_computed += n
    kv.commit(req)
    return req


def test_blocks_follow_the_tokens() -> None:
    kv = KVCacheManager(BlockPool(num_blocks=10, block_size=4))
    req = request(list(range(10)))
    assert kv.allocate(req, 5) and len(req.block_ids) == 2
    req.num_computed = 5
    assert kv.allocate(req, 3) and len(req.block_ids) == 2  # 8 tokens still fit in 2 blocks
    req.num_computed = 8
    assert kv.allocate(req, 1) and len(req.block_ids) == 3
    assert kv.slot(req, 9) == req.block_ids[2] * 4 + 1


def test_allocation_fails_whole_when_the_pool_is_short() -> None:
    kv = KVCacheManager(BlockPool(num_blocks=4, block_size=4))  # 3 usable blocks
    a = request(list(range(8)))
    assert kv.allocate(a, 8)
    b = request(list(range(8)))
    assert not kv.allocate(b, 8) and b.block_ids == []
    assert kv.allocate(b, 4) and len(b.block_ids) == 1
    assert not kv.allocate(a, 1, reserve=1)  # would leave fewer idle blocks than asked to keep


def test_a_prompt_reuses_the_full_blocks_another_computed() -> None:
    kv = KVCacheManager(BlockPool(num_blocks=16, block_size=4))
    first = computed(kv, request(list(range(1, 14))))  # 13 tokens: 3 full blocks
    assert len(first.prefix_entries) == 3
    second = request([*range(1, 9), 99, 98, 97, 96, 95])
    hit = kv.lookup(second)
    assert hit.block_ids == first.block_ids[:2]  # the third block differs
    assert kv.allocate(second, second.num_tokens - 8, hit)
    assert second.num_computed == 8 and second.block_ids[:2] == first.block_ids[:2]
    assert kv.pool.blocks[first.block_ids[0]].ref_count == 2


def test_a_hit_always_leaves_a_token_to_compute() -> None:
    kv = KVCacheManager(BlockPool(num_blocks=16, block_size=4))
    computed(kv, request(list(range(8))))
    again = request(list(range(8)))  # two whole blocks, all cached
    hit = kv.lookup(again)
    assert hit.num_tokens(4) == 4  # the last block is recomputed: its last token's logits are needed


def test_freed_blocks_stay_cached_until_their_memory_is_needed() -> None:
    kv = KVCacheManager(BlockPool(num_blocks=4, block_size=4))  # 3 usable blocks
    first = computed(kv, request(list(range(9))))
    kv.free(first)
    assert kv.pool.num_idle == 3
    assert kv.lookup(request(list(range(9)))).num_tokens(4) == 8
    other = computed(kv, request([50] * 9))  # needs all three: evicts the cached ones
    assert kv.lookup(request(list(range(9)))).num_tokens(4) == 0
    assert len(other.block_ids) == 3


def test_salts_separate_tenants_and_none_opts_out() -> None:
    kv = KVCacheManager(BlockPool(num_blocks=16, block_size=4))
    computed(kv, request(list(range(9)), salt="\0a"))
    assert kv.lookup(request(list(range(9)), salt="\0a")).num_tokens(4) == 8
    assert kv.lookup(request(list(range(9)), salt="\0b")).num_tokens(4) == 0
    assert kv.lookup(request(list(range(9)), salt="")).num_tokens(4) == 0
    assert kv.lookup(request(list(range(9)), salt=None)).num_tokens(4) == 0
    off = KVCacheManager(BlockPool(num_blocks=16, block_size=4), caching=False)
    computed(off, request(list(range(9))))
    assert off.pool.num_cached == 0 and off.lookup(request(list(range(9)))).num_tokens(4) == 0


def test_next_key_names_the_block_being_computed() -> None:
    kv = KVCacheManager(BlockPool(num_blocks=16, block_size=4))
    a = request(list(range(13)))
    computed(kv, a, 4)
    b = request(list(range(13)))
    hit = kv.lookup(b)
    # b's first miss is the block a computes next: the scheduler lets b wait for it.
    assert kv.next_key(b, hit.entries) == kv.next_key(a)
    assert kv.next_key(request(list(range(3)))) is None  # no full block
