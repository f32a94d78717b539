"""The KV cache's memory as a pool of fixed-size blocks, with reference counts and the prefix-cache index.

A block holds the keys and values of ``block_size`` consecutive tokens of one sequence (the tensors live in the
model runner; this module only does the bookkeeping). Each block is in exactly one of three states::

    in use      ref_count > 0: in the block table of one or more running requests (shared prefix blocks have
                one count per request)
    cached      ref_count == 0, but full and indexed by its contents: a later request with the same prefix
                takes it back instead of computing it again; the least recently freed is reused first
    free        ref_count == 0 and not indexed: reused before any cached block

Prefix-cache keys make a false hit impossible by construction, not merely unlikely: a full block's key is
``(salt, parent, tokens)``, where ``tokens`` are its own token ids, ``parent`` the id of the cache entry of the
block before it (0 for the first block) and ``salt`` separates tenants when caching is per key. Entry ids come
from a counter and are never reused, so equal keys mean equal token ids all the way back to the first token,
and dictionary lookups compare the tuples themselves, not a digest. When a parent is evicted, its children's
keys name an id that no lookup can produce again: they can no longer be hit and age out of the LRU.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# (salt, parent entry id, the block's token ids)
BlockKey = tuple[str, int, tuple[int, ...]]

# The parent id of a sequence's first block.
ROOT = 0
# Block 0 is never handed out: block tables are padded with it, and the runner keeps it zeroed, so a padded read
# is finite (a masked attention weight of 0 times a NaN left in unused memory would still be NaN).
NULL_BLOCK = 0


class NoFreeBlocks(Exception):
    """The pool cannot hand out the blocks asked for; the scheduler preempts or waits."""


@dataclass
class Block:
    id: int
    ref_count: int = 0
    # Set while the block is in the prefix index (full, computed, and its contents known).
    key: BlockKey | None = None
    entry: int = 0


class BlockPool:
    """Blocks 1..num_blocks-1 (0 is the null block), handed out and taken back by the KV cache manager.

    Not thread-safe: the engine thread alone uses it.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"num_blocks={num_blocks}: the pool needs the null block and at least one more")
        if block_size < 1:
            raise ValueError(f"block_size={block_size} must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, the next to be reused first: free ones ahead of cached ones, and cached ones
        # in the order they were freed (least recently used first). An OrderedDict gives O(1) removal of a block
        # that a prefix hit takes back.
        self._idle: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks))
        # The prefix index: key -> block. Only blocks whose KV is fully computed are in it.
        self._index: dict[BlockKey, Block] = {}
        self._next_entry = ROOT + 1
        # Counters for metrics and tests.
        self.evictions = 0

    @property
    def num_idle(self) -> int:
        """Blocks that can be handed out now (free, or cached and evictable)."""
        return len(self._idle)

    @property
    def num_cached(self) -> int:
        """Blocks in the prefix index (in use or not)."""
        return len(self._index)

    @property
    def usage(self) -> float:
        """The fraction of usable blocks held by running requests."""
        return 1.0 - self.num_idle / (self.num_blocks - 1)

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks (ref_count 1 each), evicting the least recently used cached ones if needed."""
        if n > len(self._idle):
            raise NoFreeBlocks(f"{n} blocks asked for, {len(self._idle)} available")
        out = []
        for _ in range(n):
            block_id, _ = self._idle.popitem(last=False)
            block = self.blocks[block_id]
            if block.key is not None:
                self._forget(block)
                self.evictions += 1
            block.ref_count = 1
            out.append(block_id)
        return out

    def take(self, block_ids: list[int]) -> None:
        """Add a reference to each block (prefix hits); an idle cached block leaves the LRU."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._idle[block_id]
            block.ref_count += 1

    def release(self, block_ids: list[int]) -> None:
        """Drop one reference from each block; a block nobody holds becomes cached (if indexed) or free.

        Pass a request's table in reverse order: its last blocks then become the first to be evicted, since a
        later request is more likely to share the beginning of a prompt than its end.
        """
        for block_id in block_ids:
            block = self.blocks[block_id]
            assert block.ref_count > 0, f"block {block_id} released more often than taken"
            block.ref_count -= 1
            if block.ref_count == 0:
                self._idle[block_id] = None
                if block.key is None:
                    # Nothing to keep: reuse it before any block that may still be hit.
                    self._idle.move_to_end(block_id, last=False)

    def lookup(self, key: BlockKey) -> Block | None:
        """The cached block with exactly these contents, or None."""
        return self._index.get(key)

    def index(self, block_id: int, key: BlockKey) -> int:
        """Put a computed, full block in the prefix index under ``key``; returns the entry id its children name.

        When another block already holds the same contents, that block's entry stands for both and this one
        stays unindexed (it is freed like any other when its request ends).
        """
        existing = self._index.get(key)
        if existing is not None:
            return existing.entry
        block = self.blocks[block_id]
        assert block.key is None, f"block {block_id} is indexed already"
        block.key, block.entry = key, self._next_entry
        self._next_entry += 1
        self._index[key] = block
        return block.entry

    def reset_index(self) -> int:
        """Forget every cached prefix (blocks in use stay valid); returns how many entries were dropped."""
        dropped = len(self._index)
        for block in list(self._index.values()):
            self._forget(block)
            if block.ref_count == 0:
                self._idle.move_to_end(block.id, last=False)
        return dropped

    def _forget(self, block: Block) -> None:
        assert block.key is not None
        del self._index[block.key]
        block.key, block.entry = None, 0
