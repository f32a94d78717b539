"""What the next step computes: which requests, how many tokens each, and in which KV blocks.

Every step is one forward over a flattened batch. ``schedule()`` fills it under a budget of prompt tokens::

    running    every running request gets its next tokens: 1 when it decodes (outside the budget), a chunk of its
               prompt while it prefills (highest priority, then oldest first; chunks stop where the budget does,
               or a little past it to finish a prompt). A request that
               needs a new block when the pool is empty preempts the lowest-priority, newest running request:
               its blocks are freed and it waits again, to be recomputed later (mostly from the prefix cache).
    waiting    then new requests are admitted, in fair-queue order (priority, then the key served least, then
               age), while the budget, ``max_batch`` and the pool allow: each starts from its longest cached
               prefix and prefills the rest in chunks. A request whose next block another running request is
               prefilling right now (n > 1 choices of one prompt) waits a step and takes it from the cache.

    padding    a step with a prompt chunk runs at a padded size (``step_rows``: the runner's matmul shapes);
               the rows past its tokens go to prompt tokens that wait, running prompts' first, then new requests'.
    drafts     with a Speculator, decodes may then draft tokens into the budget left over (spec_decode/): such
               a decode is a chunk of 1 + k tokens, its last token and the drafts, verified in the same forward.

The step's tokens come back to ``update()``: computed marks move forward and full blocks enter the prefix index.
Sampling and stop conditions are the engine's; it calls ``verified()`` once a draft's accepted tokens are
appended (the rest is rolled back), and ``finish()`` for a request that is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ember.bus.messages import JobStatus
from ember.runtimes.fair_queue import FairQueue
from ember.runtimes.text.block_pool import BlockKey
from ember.runtimes.text.kv_manager import KVCacheManager, PrefixHit
from ember.runtimes.text.request import Request
from ember.runtimes.text.spec_decode import Speculator


@dataclass(frozen=True)
class SchedulerConfig:
    # Requests running at once (their KV is in the pool; memory is bounded by the pool, not by this).
    max_batch: int = 32
    # Prompt tokens computed per step (prefill chunks): a long prompt delays the running decodes by at most one such
    # step. Decodes ride along outside it, one token per running request.
    max_step_tokens: int = 512
    # The rows the model computes for a step of n tokens that holds a prompt chunk, at most as many as a step may
    # hold (ModelRunner.step_rows: such steps are padded to a few matmul shapes), or None where it computes n. Rows
    # past n are filled with prompt tokens that wait, rather than computed as padding (_fill_padding).
    step_rows: Callable[[int], int] | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch={self.max_batch} must be at least 1")
        if self.max_step_tokens < 1:
            raise ValueError(f"max_step_tokens={self.max_step_tokens} must be at least 1")

    @property
    def slack(self) -> int:
        """How far a chunk may run past the budget to finish its prompt, rather than leave a stub of it to the
        next step (where it would delay that request's first token by a whole step)."""
        return self.max_step_tokens // 8

    @property
    def step_capacity(self) -> int:
        """The most tokens one step can hold: a budget's worth of prompt, its slack, and a decode per request."""
        return self.max_step_tokens + self.slack + self.max_batch


@dataclass
class ScheduledChunk:
    """``num_tokens`` tokens from position ``start`` computed in this step: the request's own, then any drafts."""

    request: Request
    start: int
    num_tokens: int
    # Whether the chunk reaches the request's last token, so the step yields its next-token logits (fixed when
    # scheduled: the sampled token is appended to the request afterwards).
    samples: bool = field(init=False)
    # Guessed tokens after the request's last one (speculative decoding): the step computes them too, and yields
    # the logits at each of the chunk's 1 + len(draft_ids) positions.
    draft_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.samples = self.start + self.num_tokens == self.request.num_tokens

    def grow(self, count: int) -> None:
        """Compute ``count`` more of the request's own tokens (a prompt chunk, before any drafts)."""
        assert not self.draft_ids and self.start + self.num_tokens + count <= self.request.num_tokens
        self.num_tokens += count
        self.samples = self.start + self.num_tokens == self.request.num_tokens

    def add_drafts(self, draft_ids: list[int]) -> None:
        assert self.samples and not self.draft_ids, "drafts follow a request's last token, once"
        self.draft_ids = draft_ids
        self.num_tokens += len(draft_ids)

    @property
    def num_sampled(self) -> int:
        """Logit rows the step yields for this chunk."""
        return 1 + len(self.draft_ids) if self.samples else 0

    def token_ids(self) -> list[int]:
        """The token ids the chunk computes."""
        own = self.num_tokens - len(self.draft_ids)
        return self.request.token_ids[self.start : self.start + own] + self.draft_ids


@dataclass
class SchedulerOutput:
    # Single-token chunks (decodes) first, then decodes with drafts, then prompt chunks: the runner reads them in
    # this order.
    chunks: list[ScheduledChunk] = field(default_factory=list)
    # Requests that lost their blocks in this step and wait again.
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def num_scheduled_tokens(self) -> dict[str, int]:
        """{request_id: tokens computed this step}, for every kind of work alike."""
        return {c.request.request_id: c.num_tokens for c in self.chunks}

    def __bool__(self) -> bool:
        return bool(self.chunks)


class Scheduler:
    """Owns the waiting queue and the running set. Not thread-safe: the engine thread alone calls it."""

    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, speculator: Speculator | None = None) -> None:
        self.config = config
        self.kv = kv
        self.speculator = speculator
        self.waiting: FairQueue[Request] = FairQueue()
        self.running: list[Request] = []
        # Counters for metrics and tests.
        self.num_preemptions = 0
        self.num_deferred = 0
        # Prompt tokens of the requests admitted so far, and those of them taken from the prefix cache.
        self.admitted_prompt_tokens = 0
        self.cached_prompt_tokens = 0

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, req: Request) -> None:
        if req.num_tokens > self.kv.capacity_tokens:
            # The worker checks this before accepting; a request that cannot fit would preempt everyone forever.
            raise ValueError(f"{req.num_tokens} tokens exceed the KV pool's {self.kv.capacity_tokens}")
        req.status = JobStatus.QUEUED
        p = req.params
        req.arrival = self.waiting.push(req, request_id=p.request_id, key=p.key, priority=p.priority)

    def remove(self, request_ids: set[str]) -> list[Request]:
        """Take these requests out, waiting or running, freeing their blocks."""
        removed = self.waiting.remove(request_ids)
        for req in [r for r in self.running if r.request_id in request_ids]:
            self.finish(req)
            removed.append(req)
        return removed

    def finish(self, req: Request) -> None:
        """A running request is done (or failed): its blocks go back to the pool."""
        if req in self.running:
            self.running.remove(req)
        self.kv.free(req)
        if self.speculator is not None:
            self.speculator.finish(req)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_step_tokens
        scheduled: list[ScheduledChunk] = []
        # Highest priority first, then oldest: preemption takes from the other end.
        order = self._by_priority()
        while order:
            req = order.pop(0)
            num_new = self._chunk(req.num_tokens - req.num_computed, budget)
            if num_new == 0:
                continue  # no budget left for its prompt in this step
            while not self.kv.allocate(req, num_new):
                victim = order.pop() if order else req
                self._preempt(victim, out)
                if victim is req:
                    break
            else:
                scheduled.append(ScheduledChunk(req, req.num_computed, num_new))
                budget -= num_new if num_new > 1 else 0
        if not out.preempted:
            # Admitting while requests are being preempted would only thrash.
            budget = self._admit(scheduled, budget)
            self._fill_padding(scheduled)
        scheduled = self._background_yields(scheduled)
        if not out.preempted:
            self._draft(scheduled, budget)
        # Decodes, then decodes with drafts, then prompt chunks: the order the runner reads them in.
        out.chunks = sorted(scheduled, key=lambda c: (c.num_tokens > 1) + (c.num_tokens > 1 and not c.draft_ids))
        return out

    def _by_priority(self) -> list[Request]:
        """The running requests, highest priority first, then oldest."""
        return sorted(self.running, key=lambda r: (-r.params.priority, r.arrival))

    @staticmethod
    def _background_yields(scheduled: list[ScheduledChunk]) -> list[ScheduledChunk]:
        """Background requests (priority below 0: batch lines) sit out a step that computes a foreground
        request's prompt: their rows would slow the very step that brings that request's first token, which
        is what its user waits on. They lose one step in a few; their blocks stay allocated for the next."""
        if not any(c.num_tokens > 1 and c.request.params.priority >= 0 for c in scheduled):
            return scheduled
        return [c for c in scheduled if c.request.params.priority >= 0]

    def _chunk(self, remaining: int, budget: int, slack: int | None = None) -> int:
        """How many of a request's ``remaining`` tokens to compute now, with ``budget`` prompt tokens left."""
        if remaining == 1:
            return 1  # a decode, or a prompt's last token: outside the budget
        if remaining <= budget + (self.config.slack if slack is None else slack):
            return remaining
        return max(budget, 0)

    def _fill_padding(self, scheduled: list[ScheduledChunk]) -> None:
        """Give the rows a step with a prompt chunk would compute as padding to prompt tokens that wait: first to the
        running requests' prompts (highest priority, then oldest), then to waiting requests. Such a step costs its
        padded size whatever fills it: 16 SmolLM2-135M decodes beside a 512-token prompt make 528 tokens, which
        run as 576 rows (runner.padded_rows), 48 of them computing nothing."""
        rows = self.config.step_rows
        if rows is None or not any(c.num_tokens > 1 for c in scheduled):  # before drafts: these are prompt chunks
            return
        total = sum(c.num_tokens for c in scheduled)
        spare = rows(total) - total
        chunks = {id(c.request): c for c in scheduled}
        for req in self._by_priority():
            if spare <= 0:
                return
            chunk = chunks.get(id(req))
            if chunk is not None and chunk.samples:
                continue  # a decode, or a chunk that ends its prompt already
            have = chunk.num_tokens if chunk is not None else 0
            grow = min(spare, req.num_tokens - req.num_computed - have)
            if grow <= 0 or not self.kv.allocate(req, have + grow, reserve=len(self.running)):
                continue
            if chunk is None:
                scheduled.append(ScheduledChunk(req, req.num_computed, grow))
            else:
                chunk.grow(grow)
            spare -= grow
        if spare > 0:
            self._admit(scheduled, spare, slack=0)

    def _admit(self, scheduled: list[ScheduledChunk], budget: int, slack: int | None = None) -> int:
        """Admit waiting requests into the step; returns the budget they left."""
        prefilling = {k for c in scheduled if (k := self.kv.next_key(c.request)) is not None and c.num_tokens > 1}
        hits: dict[int, PrefixHit] = {}

        def admissible(req: Request) -> bool:
            hit = hits.get(id(req))
            if hit is None:
                hit = hits[id(req)] = self.kv.lookup(req)
            deferred = self._pending(req, hit, prefilling)
            self.num_deferred += deferred
            return not deferred

        while len(self.running) < self.config.max_batch:
            req = self.waiting.peek(admissible)
            if req is None:
                break
            # Looked up again: blocks admitted before it in this step may have evicted what the filter saw.
            hit = self.kv.lookup(req)
            num_new = self._chunk(req.num_tokens - hit.num_tokens(self.kv.block_size), budget, slack)
            if num_new == 0:
                break
            # Keep a block per running request in hand, so the running ones can grow without a preemption.
            if not self.kv.allocate(req, num_new, hit, reserve=len(self.running)):
                break
            self.waiting.take(1, where=lambda r, req=req: r is req)
            if not req.admitted:
                req.admitted = True
                req.num_cached_tokens = min(req.num_computed, req.num_prompt_tokens)
                self.admitted_prompt_tokens += req.num_prompt_tokens
                self.cached_prompt_tokens += req.num_cached_tokens
            req.status = JobStatus.RUNNING
            self.running.append(req)
            scheduled.append(ScheduledChunk(req, req.num_computed, num_new))
            budget -= num_new if num_new > 1 else 0
            if num_new > 1 and (key := self.kv.next_key(req)) is not None:
                prefilling.add(key)
        return budget

    def _draft(self, scheduled: list[ScheduledChunk], budget: int) -> None:
        """Let the step's decodes draft into the budget left (never by preempting: a draft is only a guess)."""
        if self.speculator is None or budget <= 0:
            return
        decodes = [c for c in scheduled if c.num_tokens == 1 and c.samples]
        if not decodes:
            return
        step_tokens = sum(c.num_tokens for c in scheduled)
        drafts = self.speculator.propose([c.request for c in decodes], budget, step_tokens)
        for chunk, draft in zip(decodes, drafts, strict=True):
            # Keep a block per running request in hand, as admission does.
            if draft and self.kv.allocate(chunk.request, 1 + len(draft), reserve=len(self.running)):
                chunk.add_drafts(draft)

    def _pending(self, req: Request, hit: PrefixHit, prefilling: set[BlockKey]) -> bool:
        """Whether another request is computing ``req``'s first missed block in this step."""
        if not prefilling:
            return False
        return self.kv.next_key(req, hit.entries) in prefilling

    def preempt_all(self) -> list[Request]:
        """Send every running request back to the waiting queue, its blocks freed (it recomputes them when it
        runs again: its output so far is kept, and greedy output is unchanged); returns them."""
        out = SchedulerOutput()
        for req in list(self.running):
            self._preempt(req, out)
        return out.preempted

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self.kv.free(req)
        req.status = JobStatus.QUEUED
        req.num_preemptions += 1
        self.num_preemptions += 1
        p = req.params
        self.waiting.requeue(req, request_id=p.request_id, key=p.key, priority=p.priority, arrival=req.arrival)
        out.preempted.append(req)

    def update(self, out: SchedulerOutput) -> None:
        """The step ran: its tokens' KV is in the cache (drafts' KV too, but it counts only once accepted)."""
        for chunk in out.chunks:
            req = chunk.request
            req.num_computed = chunk.start + chunk.num_tokens - len(chunk.draft_ids)
            self.kv.commit(req)

    def verified(self, chunk: ScheduledChunk, accepted: int) -> None:
        """The first ``accepted`` of ``chunk``'s drafts were right; the engine has appended them to the request
        (unless it finished). Their KV, computed in the step, becomes the request's; the rest is rolled back.

        Rejected K/V stays in slots past the computed mark, where nothing reads it (attention masks by position)
        until the next tokens overwrite it; blocks holding only such slots go back to the pool. Only blocks below
        the computed mark enter the prefix index, so it never holds a rejected token's K/V.
        """
        req = chunk.request
        assert self.speculator is not None and chunk.draft_ids
        self.speculator.observe(req, len(chunk.draft_ids), accepted)
        if req.status.finished or req not in self.running:
            return
        req.num_computed += accepted
        assert req.num_computed == req.num_tokens - 1, "the accepted drafts and the next token are appended"
        self.kv.commit(req)
        keep = -(-req.num_tokens // self.kv.block_size)  # the next step writes position num_tokens - 1
        if len(req.block_ids) > keep:
            extra, req.block_ids = req.block_ids[keep:], req.block_ids[:keep]
            self.kv.pool.release(extra[::-1])

    def waiting_requests(self) -> Iterable[Request]:
        return iter(self.waiting)
