"""Which of a step's decodes draft, how many tokens each, and how their drafts fared.

The scheduler asks ``propose`` once per step, after it has placed the step's decodes and prompt chunks, with the
prompt budget those left: drafts only ever fill spare room, so a long prompt's prefill is never slowed by them.
After the forward the scheduler reports each verified draft to ``observe``, which adapts the request's next
draft length and keeps the counts that metrics read.

Modes::

    off     no drafting
    ngram   prompt lookup on every decode whose suffix occurred before, num_tokens drafts each, within budget
    auto    the same, where it pays: drafts fill a step only up to AUTO_STEP_ROWS tokens (below that a forward
            costs about what one token's does), and each request's draft length follows its acceptance: it
            doubles while drafts are accepted whole, drops to what was accepted (+1) on a partial rejection, and a
            wholly rejected draft pauses the request's drafting for 1, 2, 4 ... MAX_BACKOFF steps
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ember.runtimes.text.request import Request
from ember.runtimes.text.spec_decode.interface import Drafter

SpeculativeMode = Literal["auto", "ngram", "off"]

# "auto" fills a step with drafts only up to this many tokens. Measured on SmolLM2-135M (float32, 2 cores): a
# forward of 1 to 16 rows costs the same within noise (~70-80 ms: reading the weights dominates), 24 and 32 rows
# ~20% more. Past it the step is bound by compute, and a rejected draft token costs about what a token does.
AUTO_STEP_ROWS = 16
# The longest pause, in steps, of a request whose drafts keep being rejected (non-repetitive text).
MAX_BACKOFF = 16


@dataclass(frozen=True)
class SpecConfig:
    mode: SpeculativeMode = "auto"
    # The most tokens drafted for one request in one step (each step then yields 1 to num_tokens + 1 tokens).
    num_tokens: int = 4

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_speculative_tokens={self.num_tokens} must be at least 1")


class Speculator:
    """Plans drafts within a step's spare room and adapts them to their acceptance. Engine thread only."""

    def __init__(self, config: SpecConfig, drafter: Drafter, max_context: int) -> None:
        if config.mode == "off":
            raise ValueError("speculative='off' runs without a Speculator")
        self.config = config
        self.drafter = drafter
        self.max_context = max_context
        # Counters for metrics: draft tokens verified, and accepted; steps that verified a draft.
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.verify_steps = 0

    def propose(self, reqs: Sequence[Request], room: int, step_tokens: int) -> list[list[int]]:
        """Drafts for these decoding requests ([] for those that do not draft), at most ``room`` tokens in all,
        in a step that holds ``step_tokens`` tokens without them."""
        if self.config.mode == "auto":
            room = min(room, AUTO_STEP_ROWS - step_tokens)
        chosen: list[Request] = []
        limits: list[int] = []
        for req in reqs:
            if room <= 0:
                break
            n = min(self._length(req), self._headroom(req), room)
            if n > 0:
                chosen.append(req)
                limits.append(n)
                room -= n
        if not chosen:
            return [[] for _ in reqs]
        drafts = {id(r): d[:n] for r, d, n in zip(chosen, self.drafter.propose(chosen, limits), limits, strict=True)}
        return [drafts.get(id(r), []) for r in reqs]

    def observe(self, req: Request, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens was verified and its first ``accepted`` were right."""
        record = req.draft
        record.drafted += drafted
        record.accepted += accepted
        record.steps += 1
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        self.verify_steps += 1
        if accepted == drafted:
            record.length = min(self.config.num_tokens, 2 * max(record.length, drafted))
            record.backoff = 0
        elif accepted:
            record.length = accepted + 1
            record.backoff = 0
        else:
            record.length = 1
            record.backoff = min(2 * record.backoff or 1, MAX_BACKOFF)
            record.cooldown = record.backoff

    def finish(self, req: Request) -> None:
        self.drafter.finish(req)

    def _length(self, req: Request) -> int:
        """How many tokens the request's policy lets it draft now."""
        if req.params.matcher is not None:
            # Grammar-constrained output is not drafted: each token must be masked by the matcher in order, and
            # a draft would have to be checked against (and rolled back in) the matcher too.
            return 0
        if self.config.mode != "auto":
            return self.config.num_tokens
        record = req.draft
        if record.cooldown:
            record.cooldown -= 1
            return 0
        return record.length or self.config.num_tokens

    def _headroom(self, req: Request) -> int:
        """Drafts that could still be used: a step yields one token more than it drafts, and never past
        max_tokens; the drafts' KV must fit in the context."""
        return min(req.params.max_tokens - req.num_output_tokens - 1, self.max_context - req.num_tokens)
