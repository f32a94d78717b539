"""The KV block pool: allocation, reference counts, the LRU of cached blocks and the prefix index."""

from __future__ import annotations

import pytest

from ember.runtimes.text.block_pool import NULL_BLOCK, ROOT, BlockPool, NoFreeBlocks


def key(tokens: tuple[int, ...], parent: int = ROOT, salt: str = "") -> tuple[str, int, tuple[int, ...]]:
    return (salt, parent, tokens)


def test_blocks_are_handed_out_once_and_never_the_null_block() -> None:
    pool = BlockPool(num_blocks=5, block_size=4)
    got = pool.allocate(4)
    assert sorted(got) == [1, 2, 3, 4] and NULL_BLOCK not in got
    assert pool.num_idle == 0 and pool.usage == 1.0
    with pytest.raises(NoFreeBlocks):
        pool.allocate(1)
    pool.release(got[::-1])
    assert pool.num_idle == 4 and pool.usage == 0.0


def test_a_shared_block_is_idle_only_when_its_last_holder_releases_it() -> None:
    pool = BlockPool(num_blocks=3, block_size=4)
    (b,) = pool.allocate(1)
    pool.take([b])  # a second request shares it
    assert pool.blocks[b].ref_count == 2
    pool.release([b])
    assert pool.num_idle == 1  # the other free block only
    pool.release([b])
    assert pool.num_idle == 2
    with pytest.raises(AssertionError):
        pool.release([b])


def test_cached_blocks_are_evicted_least_recently_released_first_and_free_ones_before_them() -> None:
    pool = BlockPool(num_blocks=5, block_size=2)
    a, b, c, d = pool.allocate(4)
    for i, block in enumerate((a, b, c)):
        pool.index(block, key((i, i)))
    pool.release([b])
    pool.release([a])
    pool.release([c])
    pool.release([d])  # not indexed: nothing to keep, reused first
    assert pool.allocate(1) == [d]
    assert pool.evictions == 0
    assert pool.allocate(1) == [b]  # then the cached ones, oldest release first
    assert pool.evictions == 1 and pool.lookup(key((1, 1))) is None
    assert pool.lookup(key((0, 0))) is not None and pool.lookup(key((2, 2))) is not None


def test_a_hit_on_an_idle_cached_block_takes_it_out_of_the_lru() -> None:
    pool = BlockPool(num_blocks=3, block_size=2)
    a, b = pool.allocate(2)
    pool.index(a, key((1, 2)))
    pool.release([b, a])
    hit = pool.lookup(key((1, 2)))
    assert hit is not None and hit.id == a
    pool.take([a])
    # Only b can be handed out now; a is in use again and keeps its contents.
    assert pool.allocate(1) == [b]
    with pytest.raises(NoFreeBlocks):
        pool.allocate(1)
    assert pool.lookup(key((1, 2))) is hit


def test_equal_contents_share_one_entry() -> None:
    pool = BlockPool(num_blocks=4, block_size=2)
    a, b = pool.allocate(2)
    first = pool.index(a, key((5, 6)))
    assert pool.index(b, key((5, 6))) == first  # the second copy stays out of the index
    assert pool.blocks[b].key is None
    assert pool.lookup(key((5, 6))) is pool.blocks[a]


def test_keys_that_differ_anywhere_never_collide() -> None:
    """Hits compare whole keys: salt, parent entry and every token id; entry ids are never reused."""
    pool = BlockPool(num_blocks=16, block_size=2)
    blocks = pool.allocate(4)
    root = pool.index(blocks[0], key((1, 2)))
    child = pool.index(blocks[1], key((3, 4), parent=root))
    assert pool.lookup(key((3, 4), parent=root)) is pool.blocks[blocks[1]]
    assert pool.lookup(key((3, 4))) is None  # same tokens, another prefix
    assert pool.lookup(key((3, 4), parent=root, salt="\0tenant")) is None  # same tokens, another tenant
    assert pool.lookup(key((3, 5), parent=root)) is None
    # Evict the parent and cache the same tokens again: a new entry id, so the old child is unreachable.
    pool.release([blocks[0]])
    pool.release([blocks[2], blocks[3]])
    pool.allocate(pool.num_idle)  # evicts everything idle, the parent included
    assert pool.lookup(key((1, 2))) is None
    pool.release([blocks[1]])
    (again,) = pool.allocate(1)
    new_root = pool.index(again, key((1, 2)))
    assert new_root not in (root, child)
    assert pool.lookup(key((3, 4), parent=new_root)) is None


def test_reset_index_keeps_blocks_in_use() -> None:
    pool = BlockPool(num_blocks=4, block_size=2)
    a, b = pool.allocate(2)
    pool.index(a, key((1, 1)))
    pool.index(b, key((2, 2)))
    pool.release([b])
    assert pool.reset_index() == 2
    assert pool.num_cached == 0 and pool.blocks[a].ref_count == 1
    assert pool.num_idle == 2
