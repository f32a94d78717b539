"""Which KV blocks each request holds: allocation as it grows, prefix-cache hits on admission, release at the end.

Call cycle, all on the engine thread (the scheduler is the only caller)::

    hit = kv.lookup(req)                    # a waiting request: its longest cached prefix (no references taken)
    kv.allocate(req, n, hit)                # room for n more tokens after the hit; False if the pool is short
    ... the runner computes the tokens ...
    req.num_computed += n; kv.commit(req)   # index the blocks that are now full and computed
    kv.free(req)                            # finished or preempted: blocks go back (indexed ones stay cached)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ember.runtimes.text.block_pool import ROOT, BlockKey, BlockPool
from ember.runtimes.text.request import Request


@dataclass
class PrefixHit:
    """The cached blocks a request can start from, and their entry ids; empty when nothing matched."""

    block_ids: list[int] = field(default_factory=list)
    entries: list[int] = field(default_factory=list)

    def num_tokens(self, block_size: int) -> int:
        return len(self.block_ids) * block_size


class KVCacheManager:
    def __init__(self, pool: BlockPool, *, caching: bool = True) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        # Off: nothing is looked up or indexed, whatever a request's salt says.
        self.caching = caching
        # Counters for metrics and tests.
        self.lookups = 0
        self.hit_tokens = 0

    @property
    def capacity_tokens(self) -> int:
        """The most tokens one request can hold: every usable block."""
        return (self.pool.num_blocks - 1) * self.block_size

    def lookup(self, req: Request) -> PrefixHit:
        """The longest run of cached full blocks that ``req``'s tokens start with.

        At least one token is always left to compute: the step that computes it yields the logits of the next.
        """
        hit = PrefixHit()
        if not self._caches(req):
            return hit
        self.lookups += 1
        bs = self.block_size
        for j in range((req.num_tokens - 1) // bs):
            block = self.pool.lookup(self._key(req, j, hit.entries))
            if block is None:
                break
            hit.block_ids.append(block.id)
            hit.entries.append(block.entry)
        return hit

    def next_key(self, req: Request, entries: list[int] | None = None) -> BlockKey | None:
        """The key of the first full block past ``entries`` (default: the request's computed prefix), or None.

        For a running request that is the block its prefill is computing now; for a waiting one, after a lookup,
        the first block the cache missed. When the two are equal, the waiting request can wait a step and take
        that block from the cache instead of computing it too (``n > 1`` choices of one prompt).
        """
        if not self._caches(req):
            return None
        entries = req.prefix_entries if entries is None else entries
        j = len(entries)
        if (j + 1) * self.block_size > req.num_tokens:
            return None
        return self._key(req, j, entries)

    def blocks_needed(self, req: Request, num_new: int, hit: PrefixHit | None = None) -> int:
        """Blocks the pool must hand out for ``req`` to hold ``num_new`` more tokens (after the hit, if any)."""
        hit_blocks = len(hit.block_ids) if hit else 0
        total = req.num_computed + hit_blocks * self.block_size + num_new
        have = len(req.block_ids) + hit_blocks
        needed = -(-total // self.block_size) - have
        # Hit blocks nobody holds leave the idle list when taken, so they count against it too.
        idle_hits = sum(1 for b in hit.block_ids if self.pool.blocks[b].ref_count == 0) if hit else 0
        return max(needed, 0) + idle_hits

    def allocate(self, req: Request, num_new: int, hit: PrefixHit | None = None, *, reserve: int = 0) -> bool:
        """Give ``req`` the hit's blocks and room for ``num_new`` more tokens; False (and no change) if the pool
        would keep fewer than ``reserve`` idle blocks afterwards."""
        if self.blocks_needed(req, num_new, hit) + reserve > self.pool.num_idle:
            return False
        if hit is not None and hit.block_ids:
            assert req.num_computed == 0 and not req.block_ids, "a prefix hit applies to a request with no blocks"
            self.pool.take(hit.block_ids)
            req.block_ids = list(hit.block_ids)
            req.prefix_entries = list(hit.entries)
            req.num_computed = hit.num_tokens(self.block_size)
            self.hit_tokens += req.num_computed
        total = req.num_computed + num_new
        missing = -(-total // self.block_size) - len(req.block_ids)
        if missing > 0:
            req.block_ids += self.pool.allocate(missing)
        return True

    def commit(self, req: Request, upto: int | None = None) -> None:
        """Index the request's blocks that are full and computed (and lie within its first ``upto`` tokens, if
        given), so later requests can hit them."""
        if not self._caches(req):
            return
        computed = req.num_computed if upto is None else min(req.num_computed, upto)
        for j in range(len(req.prefix_entries), computed // self.block_size):
            entry = self.pool.index(req.block_ids[j], self._key(req, j, req.prefix_entries))
            req.prefix_entries.append(entry)

    def free(self, req: Request) -> None:
        """Give back every block of ``req`` and forget its progress (it restarts from 0 if readmitted)."""
        self.pool.release(req.block_ids[::-1])
        req.block_ids = []
        req.prefix_entries = []
        req.num_computed = 0

    def slot(self, req: Request, position: int) -> int:
        """Where the KV of ``req``'s token at ``position`` lives in the flat [blocks * block_size] cache."""
        return req.block_ids[position // self.block_size] * self.block_size + position % self.block_size

    def _caches(self, req: Request) -> bool:
        return self.caching and req.cache_salt is not None

    def _key(self, req: Request, j: int, entries: list[int]) -> BlockKey:
        """Block j's key; ``entries`` must hold the entry ids of blocks 0..j-1."""
        bs = self.block_size
        parent = entries[j - 1] if j else ROOT
        assert req.cache_salt is not None
        return (req.cache_salt, parent, tuple(req.token_ids[j * bs : (j + 1) * bs]))
