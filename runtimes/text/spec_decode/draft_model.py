"""Draft-model drafting: a small model sharing the target's tokenizer guesses the next tokens, greedily.

Each target request has a shadow sequence in the draft model's own runner and KV pool. At each ``propose`` the
shadow catches up with the target's tokens (what it drafted last time and the target accepted is already computed;
the rest of its drafts is forgotten, as the target's scheduler forgets rejected drafts), then the draft model runs
k one-token steps for every drafting request at once, each picking its argmax. A point-mass draft is what
``Sampler.verify``'s rule expects, so sampled requests stay exact too.

A shadow's catch-up (at first: the whole prompt) is computed in chunks of at most ``prefill_budget`` tokens a
step, shared by the step's requests; a request whose shadow is still behind does not draft in that step. A new
shadow starts from the longest prompt prefix the draft pool has cached (under its request's cache salt, so tenants
stay apart as in the target's cache): a prompt sent again, or a shared system prompt, does not enter the draft model
again (Qwen2.5-Coder-0.5B drafting for 1.5B: an 800-token prompt is ~0.8 TFLOP of catch-up, ~2 s at a 2-core Zen 4's
bfloat16 peak, an estimate, spread over the first steps of the reply).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ember.runtimes.text.block_pool import BlockPool
from ember.runtimes.text.kv_manager import KVCacheManager
from ember.runtimes.text.request import GenerateRequest, Request
from ember.runtimes.text.runner import ModelRunner
from ember.runtimes.text.scheduler import ScheduledChunk, SchedulerOutput
from ember.runtimes.text.spec_decode.interface import Drafter

# Prompt tokens a step may add to the draft model's shadows (their catch-up): a long prompt enters the draft model
# over several steps rather than stall one.
DRAFT_PREFILL_BUDGET = 256
# How fast the time of one draft forward follows new measurements.
_TIME_WEIGHT = 0.2


@dataclass
class _Shadow:
    seq: Request
    # How many of the target's tokens the shadow has seen: those before it never change, so only the tokens from
    # here on are compared with the shadow's (its drafts) on the next catch-up.
    synced: int = 0


class DraftModelDrafter(Drafter):
    name = "draft_model"
    # Its drafts cost forwards of the draft model: the speculator decides how deep to draft before asking.
    free = False

    def __init__(self, runner: ModelRunner, *, vocab_size: int, prefill_budget: int = DRAFT_PREFILL_BUDGET) -> None:
        """``vocab_size``: the ids both models' tokenizers share (a draft never proposes an id past them)."""
        self.runner = runner
        self.vocab_size = min(vocab_size, runner.vocab_size)
        self.prefill_budget = prefill_budget
        # Prefix caching of prompt blocks only: a shadow's computed mark moves back over rejected drafts, and a block
        # indexed while it held them would keep its old key while its K/V is rewritten; prompt tokens never change.
        self.kv = KVCacheManager(BlockPool(runner.cache.num_blocks, runner.block_size), caching=True)
        self._shadows: dict[str, _Shadow] = {}
        # A running average of one draft forward's seconds (0: not measured yet).
        self.forward_seconds = 0.0
        # Counters for metrics and tests: shadows dropped for room, catch-up chunks that stopped short of the end.
        self.dropped = 0
        self.partial_catch_ups = 0

    def seconds(self, depth: int) -> float:
        """The expected cost of drafting ``depth`` tokens deep (one forward per token)."""
        return depth * self.forward_seconds

    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        shadows = [self._sync(req) for req in reqs]
        drafts: list[list[int]] = [[] for _ in reqs]
        # The first forward: each shadow's catch-up; those that reach their last token yield a first draft token.
        budget = self.prefill_budget
        chunks: dict[int, ScheduledChunk] = {}
        for i, shadow in enumerate(shadows):
            seq = shadow.seq
            pending = seq.num_tokens - seq.num_computed
            n = pending if pending == 1 else min(pending, budget)
            if n <= 0 or limits[i] <= 0 or not self._allocate(seq, n, reqs):
                continue
            budget -= n if n > 1 else 0
            chunks[i] = ScheduledChunk(seq, seq.num_computed, n)
            self.partial_catch_ups += n < pending
        drafting = self._forward(chunks, drafts)
        # Then one token a step for those that go deeper.
        for depth in range(2, max(limits, default=0) + 1):
            chunks = {}
            for i in drafting:
                seq = shadows[i].seq
                if limits[i] < depth or not self._allocate(seq, 1, reqs):
                    continue
                seq.token_ids.append(drafts[i][-1])
                chunks[i] = ScheduledChunk(seq, seq.num_computed, 1)
            drafting = self._forward(chunks, drafts)
        return drafts

    def finish(self, req: Request) -> None:
        shadow = self._shadows.pop(req.request_id, None)
        if shadow is not None:
            self.kv.free(shadow.seq)

    def _sync(self, req: Request) -> _Shadow:
        """The request's shadow, its tokens now the target's, its KV kept as far as the two agree."""
        shadow = self._shadows.get(req.request_id)
        if shadow is None:
            params = GenerateRequest(req.request_id, list(req.params.prompt_ids), req.params.sampling, 1)
            shadow = self._shadows[req.request_id] = _Shadow(Request(params, cache_salt=req.cache_salt))
            hit = self.kv.lookup(shadow.seq)
            if hit.block_ids:
                self.kv.allocate(shadow.seq, 0, hit)  # where the pool has no room even for these, none are taken
        seq, target = shadow.seq, req.token_ids
        agree = shadow.synced
        mine = seq.token_ids
        while agree < min(len(mine), len(target)) and mine[agree] == target[agree]:
            agree += 1
        seq.token_ids = list(target)
        seq.num_computed = min(seq.num_computed, agree)
        shadow.synced = len(target)
        return shadow

    def _allocate(self, seq: Request, n: int, keep: Sequence[Request]) -> bool:
        """Blocks for ``n`` more tokens; shadows of requests not drafting now are dropped if the pool is short."""
        if self.kv.allocate(seq, n):
            return True
        live = {r.request_id for r in keep}
        for rid in [rid for rid in self._shadows if rid not in live]:
            self.kv.free(self._shadows.pop(rid).seq)
            self.dropped += 1
        return self.kv.allocate(seq, n)

    def _forward(self, chunks: dict[int, ScheduledChunk], drafts: list[list[int]]) -> list[int]:
        """Run one draft step; append each sampling chunk's argmax to its draft; which drafts grew."""
        if not chunks:
            return []
        order = sorted(chunks, key=lambda i: chunks[i].num_tokens > 1)
        out = SchedulerOutput(chunks=[chunks[i] for i in order])
        started = time.perf_counter()
        logits = self.runner.execute(out)  # [S, V]
        picks = logits[:, : self.vocab_size].argmax(dim=-1).tolist()
        elapsed = time.perf_counter() - started
        if all(c.num_tokens == 1 for c in chunks.values()):
            # What one more token of depth costs. A forward that carries a catch-up (a prompt entering the draft
            # model, up to prefill_budget tokens) is paid once whatever the depth: timed in, it priced every draft
            # token as a prompt chunk, and `auto` stopped drafting (Qwen2.5-Coder-0.5B for 1.5B, code-edit: 1-4
            # drafting steps a request, slower than no drafts at all).
            old = self.forward_seconds
            self.forward_seconds = elapsed if not old else old + _TIME_WEIGHT * (elapsed - old)
        grew = []
        row = 0
        for i in order:
            chunk = chunks[i]
            seq = chunk.request
            seq.num_computed = chunk.start + chunk.num_tokens
            self.kv.commit(seq, upto=seq.num_prompt_tokens)  # drafts past the prompt may yet be rolled back
            if chunk.samples:
                drafts[i].append(picks[row])
                row += 1
                grew.append(i)
        return grew
