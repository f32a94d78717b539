"""Which of a step's decodes draft, how many tokens each, and how their drafts fared.

The scheduler asks ``propose`` once per step, after it has placed the step's decodes and prompt chunks, with the
prompt budget those left: drafts only ever fill spare room, so a long prompt's prefill is never slowed by them.
After the forward the scheduler reports each verified draft to ``observe``, and the engine the step's duration to
``timed``.

Modes::

    off     no drafting
    always  every decode drafts num_tokens (prompt lookup: where its suffix occurred before), within budget
    auto    the drafts that pay, by measurement: a draft token is worth what it is expected to add to the step's
            tokens, and costs what it adds to the step's time (and, drafted by a model, its forwards)

Drafters are asked in order, each for the requests that the ones before it left without a draft: prompt lookup
first (free; where the text repeats, its drafts are long runs of right tokens), then a draft model if one is
configured (its forwards cost time, so it drafts only where lookup found nothing, or nothing that pays).

How "auto" weighs them: each request keeps, per drafter, an estimate ``rate`` of the chance that a draft token is
accepted given the one before it was (a running average of its verified drafts), so its i-th draft token is
expected to add ``rate ** i`` tokens. A request's estimate starts from its drafter's ``prior``: the same running
average over every request's drafts (from PRIOR_RATE), since a new request on a server whose draft model is right
99 times in 100 is better guessed by that than by a constant.

The step times come from the engine's own steps (``StepTimes``): what an extra row costs differs by orders of
magnitude between kernels (a dense float32 forward of 1 to 16 rows reads the same weights in the same time; a
quantized one may stream them once per few rows) and with the other load on the machine. Of all candidate draft
tokens, best first, the step keeps the number D that maximizes
``(tokens the step yields + expected accepted drafts) / time(step tokens + D)``, per drafter in turn (a later one
weighs its drafts in a step that holds the earlier ones'). Prompt lookup's drafts are free, so they are looked up
first and cut to what pays; a draft model's cost ``seconds(depth)`` joins the step's time, and it is asked only
for the depths that pay. Estimates that keep a request or a step size from drafting would never be revised: a
request that could draft and does not drifts back towards its drafter's prior, a step size not yet timed runs
without drafts once, and every EXPLORE_EVERY-th step that could draft takes all its drafts (and so measures them).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ember.runtimes.text.request import Request
from ember.runtimes.text.spec_decode.interface import Drafter

SpeculativeMode = Literal["auto", "always", "off"]

# A drafter's acceptance rate before any of its drafts was verified; how fast a request's estimate follows what it
# sees (per drafted token verified) and drifts back to its drafter's prior (per step it could draft and did not);
# how fast the prior follows every request's drafts (per drafted token verified, slower: it is many requests').
PRIOR_RATE = 0.5
RATE_WEIGHT = 0.2
RATE_DRIFT = 0.05
PRIOR_WEIGHT = 0.02
# Every this many steps with drafts on offer, all are taken: step times and acceptance rates are measured again.
EXPLORE_EVERY = 64
# Step sizes (tokens) whose times are kept; larger steps are taken to cost in proportion to their tokens.
TIMED_STEPS = 256
# How fast a step size's time follows new measurements.
TIME_WEIGHT = 0.1


@dataclass(frozen=True)
class SpecConfig:
    mode: SpeculativeMode = "auto"
    # The most tokens drafted for one request in one step (each step then yields 1 to num_tokens + 1 tokens).
    num_tokens: int = 4

    def __post_init__(self) -> None:
        if self.num_tokens < 1:
            raise ValueError(f"num_speculative_tokens={self.num_tokens} must be at least 1")


class StepTimes:
    """How long a step of n tokens takes on this machine: a running average per n, from the engine's own steps."""

    def __init__(self, largest: int = TIMED_STEPS) -> None:
        self._seconds = [0.0] * (largest + 1)  # 0.0: not measured yet

    def record(self, num_tokens: int, seconds: float) -> None:
        if 0 < num_tokens < len(self._seconds) and seconds > 0:
            old = self._seconds[num_tokens]
            self._seconds[num_tokens] = seconds if not old else old + TIME_WEIGHT * (seconds - old)

    def seconds(self, n: int) -> float:
        """The estimated time of a step of ``n`` tokens (0.0 when nothing that small has been timed)."""
        return self._estimate(min(n, len(self._seconds) - 1))

    def ratio(self, base: int, grown: int) -> float:
        """time(grown tokens) / time(base tokens). Optimistic where unmeasured: a size not yet timed costs what the
        largest timed size below it does (so drafting tries it, and then it is timed)."""
        if base >= len(self._seconds):
            return grown / base
        t0, t1 = self._estimate(base), self._estimate(min(grown, len(self._seconds) - 1))
        if not t0 or not t1:
            return 1.0
        return t1 / t0 * max(1.0, grown / (len(self._seconds) - 1))

    def _estimate(self, n: int) -> float:
        for m in range(n, 0, -1):
            if self._seconds[m]:
                return self._seconds[m]
        return 0.0


class Speculator:
    """Plans drafts within a step's spare room and learns what they are worth. Engine thread only."""

    def __init__(self, config: SpecConfig, drafters: Sequence[Drafter], max_context: int) -> None:
        """``drafters``: asked in this order, each for the requests the ones before it left without a draft."""
        if config.mode == "off":
            raise ValueError("speculative='off' runs without a Speculator")
        if not drafters or len({d.name for d in drafters}) < len(drafters):
            raise ValueError(f"drafters must be one or more, with distinct names: {[d.name for d in drafters]}")
        self.config = config
        self.drafters = list(drafters)
        self.max_context = max_context
        # By drafter name: the acceptance rate of every request's drafts, where a request's own estimate starts.
        self.prior = {d.name: PRIOR_RATE for d in self.drafters}
        self.times = StepTimes()
        self._offers = 0
        # Seconds the drafter took in the current step (not part of what the step's size costs).
        self._draft_seconds = 0.0
        # Counters for metrics: draft tokens verified, and accepted; steps that verified a draft.
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.verify_steps = 0

    def propose(self, reqs: Sequence[Request], room: int, step_tokens: int) -> list[list[int]]:
        """Drafts for these decoding requests ([] for those that do not draft), at most ``room`` tokens in all,
        in a step that holds ``step_tokens`` tokens without them."""
        chosen: list[Request] = []
        limits: list[int] = []
        left = room
        for req in reqs:
            n = min(self._limit(req), left)
            if n > 0:
                chosen.append(req)
                limits.append(n)
                left -= n
        if not chosen:
            return [[] for _ in reqs]
        judge = self.config.mode == "auto"
        if judge:
            self._offers += 1
            judge = self._offers % EXPLORE_EVERY != 0
        offered: dict[int, list[int]] = {}
        for drafter in self.drafters:
            asking = [(r, n) for r, n in zip(chosen, limits, strict=True) if id(r) not in offered]
            if not asking:
                break
            # The step's tokens so far: its own and the drafts the drafters before this one placed.
            tokens = step_tokens + sum(map(len, offered.values()))
            drafted = self._draft(drafter, [r for r, _ in asking], [n for _, n in asking], judge, len(reqs), tokens)
            for r, _ in asking:
                if id(r) in drafted:
                    offered[id(r)] = drafted[id(r)]
                    r.draft.source = drafter.name
        return [offered.get(id(r), []) for r in reqs]

    def _draft(
        self, drafter: Drafter, reqs: list[Request], limits: list[int], judge: bool, yields: int, step_tokens: int
    ) -> dict[int, list[int]]:
        """``drafter``'s drafts for these requests, up to ``limits``; where ``judge``, cut to what pays. By
        ``id(request)``, only those that got a draft."""
        if judge and not drafter.free:
            # A model's drafts cost its forwards: decide how deep to draft before drafting.
            depths = self._depths(drafter, reqs, limits, yields, step_tokens)
            limits = [depths.get(id(r), 0) for r in reqs]
            reqs, limits = [r for r, n in zip(reqs, limits, strict=True) if n], [n for n in limits if n]
            if not reqs:
                return {}
        started = time.perf_counter()
        proposed = drafter.propose(reqs, limits)
        self._draft_seconds += time.perf_counter() - started
        drafts = {id(r): d[:n] for r, d, n in zip(reqs, proposed, limits, strict=True) if d and n}
        if judge and drafter.free and drafts:
            got = [r for r in reqs if id(r) in drafts]
            depths = self._depths(drafter, got, [len(drafts[id(r)]) for r in got], yields, step_tokens)
            drafts = {rid: d[: depths[rid]] for rid, d in drafts.items() if rid in depths}
        return drafts

    def _depths(
        self, drafter: Drafter, reqs: Sequence[Request], lengths: Sequence[int], yields: int, step_tokens: int
    ) -> dict[int, int]:
        """How many of each request's draft tokens (of ``lengths`` on offer from ``drafter``) raise the step's
        expected tokens per second; by ``id(request)``, absent for none."""
        name = drafter.name
        # (expected gain, request, depth): a request's gains fall with depth, so the best D are prefixes.
        candidates = sorted(
            ((self.rate(r, name) ** i, id(r), i) for r, n in zip(reqs, lengths, strict=True) for i in range(1, n + 1)),
            reverse=True,
            key=lambda c: c[0],
        )
        base = self.times.seconds(step_tokens)
        if not base:
            # No step this small has been timed: this one runs without drafts and is, so that a draft's cost can be
            # weighed against something. (Weighed against nothing, drafts looked free: a draft model asked from the
            # first step on drafted in every step after it, so no plain step was ever timed.)
            return {}
        # Tokens per second relative to the step without drafts: (yields + expected gain) / yields / time ratio.
        best, best_speed, gain, deepest = 0, 1.0, 0.0, 0
        for d, (g, _, i) in enumerate(candidates, start=1):
            gain += g
            deepest = max(deepest, i)
            ratio = self.times.ratio(step_tokens, step_tokens + d) + drafter.seconds(deepest) / base
            speed = (yields + gain) / yields / ratio
            if speed > best_speed:
                best, best_speed = d, speed
        depths: dict[int, int] = {}
        for _, rid, i in candidates[:best]:
            depths[rid] = max(depths.get(rid, 0), i)
        prior = self.prior[name]
        for r, n in zip(reqs, lengths, strict=True):
            if n and id(r) not in depths:
                rate = self.rate(r, name)
                r.draft.rates[name] = rate + RATE_DRIFT * (prior - rate)
        return depths

    def observe(self, req: Request, drafted: int, accepted: int) -> None:
        """A draft of ``drafted`` tokens was verified and its first ``accepted`` were right."""
        record = req.draft
        record.drafted += drafted
        record.accepted += accepted
        record.steps += 1
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        self.verify_steps += 1
        # Each accepted token is a success, the first rejected one a failure (those after it were never tried).
        name = record.source
        rate, prior = self.rate(req, name), self.prior[name]
        for outcome in [1.0] * accepted + [0.0] * (accepted < drafted):
            rate += RATE_WEIGHT * (outcome - rate)
            prior += PRIOR_WEIGHT * (outcome - prior)
        record.rates[name], self.prior[name] = rate, prior

    def rate(self, req: Request, drafter: str) -> float:
        """The estimated chance that a token ``drafter`` drafts for ``req`` is accepted, given the one before it
        was: the request's own estimate, or the drafter's prior before it has one."""
        return req.draft.rates.get(drafter, self.prior[drafter])

    def timed(self, num_tokens: int, seconds: float) -> None:
        """A step of ``num_tokens`` tokens (drafts included) took ``seconds``, sampling and all (and drafting, which
        is left out: what is timed is what the step's size costs)."""
        self.times.record(num_tokens, seconds - self._draft_seconds)
        self._draft_seconds = 0.0

    def finish(self, req: Request) -> None:
        for drafter in self.drafters:
            drafter.finish(req)

    def _limit(self, req: Request) -> int:
        """The most tokens ``req`` may draft now."""
        if req.params.matcher is not None:
            # Grammar-constrained output is not drafted: each token must be masked by the matcher in order, and
            # a draft would have to be checked against (and rolled back in) the matcher too.
            return 0
        # A step yields one token more than it drafts, and never past max_tokens; the drafts' KV must fit.
        headroom = min(req.params.max_tokens - req.num_output_tokens - 1, self.max_context - req.num_tokens)
        return min(self.config.num_tokens, headroom)
