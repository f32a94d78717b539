"""Speculative decoding's parts alone: the n-gram index, the sampler's accept/reject rule, the scheduler's drafts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from ember.bus.messages import SamplingParams
from ember.runtimes.text.block_pool import BlockPool
from ember.runtimes.text.kv_manager import KVCacheManager
from ember.runtimes.text.request import GenerateRequest, Request
from ember.runtimes.text.sampling import Sampler, SequenceSampling
from ember.runtimes.text.scheduler import Scheduler, SchedulerConfig
from ember.runtimes.text.spec_decode import Drafter, NgramIndex, PromptLookupDrafter, SpecConfig, Speculator
from ember.runtimes.text.spec_decode.speculator import EXPLORE_EVERY, StepTimes

# ---- prompt lookup ------------------------------------------------------------------------------------------


def test_lookup_continues_the_latest_earlier_occurrence_of_the_longest_suffix() -> None:
    index = NgramIndex(max_n=3, min_n=1)
    #         0  1  2  3  4  5  6  7  8  9
    tokens = [1, 2, 3, 9, 1, 2, 3, 8, 5, 2, 3]
    # Suffix (5, 2, 3) never occurred, (2, 3) last ended at 6 (followed by 8, 5, 2, 3), not at 2.
    assert index.propose(tokens, 3) == [8, 5, 2]
    # (3, 4) is new, (4,) too: nothing.
    assert index.propose([*tokens, 4], 3) == []
    # The longest suffix wins over a later, shorter match: (9, 1, 2) ended at 5, (1, 2) too, (2,) at 9.
    assert index.propose([*tokens, 4, 9, 1, 2], 2) == [3, 8]


def test_the_suffix_does_not_match_itself_and_a_draft_stops_at_the_end() -> None:
    index = NgramIndex()
    assert index.propose([5], 4) == []
    assert index.propose([5, 6], 4) == []
    # (5,) ... the earlier 5 at 0 is followed by 6, 5: the draft is cut at the sequence's end.
    assert index.propose([5, 6, 5], 4) == [6, 5]
    assert index.propose([5, 6, 5], 0) == []


def test_an_index_kept_up_to_date_step_by_step_equals_a_fresh_one() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 6, (300,), generator=gen).tolist()
    running = NgramIndex()
    for end in range(1, len(tokens) + 1):
        assert running.propose(tokens[:end], 4) == NgramIndex().propose(tokens[:end], 4)


def test_the_drafter_keeps_its_index_on_the_request() -> None:
    req = _request("r", [1, 2, 3, 1, 2])
    drafter = PromptLookupDrafter()
    assert drafter.propose([req], [2]) == [[3, 1]]
    index = req.draft.state
    req.token_ids += [3, 7]
    assert drafter.propose([req], [2]) == [[]]
    assert req.draft.state is index


# ---- the accept/reject rule -----------------------------------------------------------------------------


def _seq(vocab: int, **params: object) -> SequenceSampling:
    return SequenceSampling.create(SamplingParams(**params), vocab, "cpu")


def test_greedy_keeps_drafts_up_to_the_first_that_is_not_the_argmax() -> None:
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(1))
    best = logits.argmax(-1).tolist()
    sampler = Sampler()
    [all_right] = sampler.verify(logits, [_seq(50, temperature=0)], [best[:4]])
    assert all_right.token_ids == best  # 4 drafts and the token after them
    wrong = [*best[:2], (best[2] + 1) % 50, best[3]]
    [partial] = sampler.verify(logits, [_seq(50, temperature=0)], [wrong])
    assert partial.token_ids == best[:3]  # the model's own token where the draft went wrong
    [none] = sampler.verify(logits[:1], [_seq(50, temperature=0)], [[]])
    assert none.token_ids == best[:1]


def _toy_logits(prefix: Sequence[int], vocab: int) -> torch.Tensor:
    """A deterministic stand-in for a model: logits [V] that depend on the last two tokens."""
    gen = torch.Generator().manual_seed(1000 * prefix[-2] + prefix[-1])
    return 2.0 * torch.randn(vocab, generator=gen)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0, "frequency_penalty": 0.7},
        {"temperature": 1.0, "seed": 7},
        {"temperature": 0.8, "top_p": 0.9, "top_k": 20, "seed": 3, "presence_penalty": 0.5, "frequency_penalty": 0.3},
    ],
    ids=["greedy-penalized", "t1", "cut-penalized"],
)
def test_drafted_decoding_emits_exactly_the_tokens_and_logprobs_of_plain_decoding(params: dict[str, object]) -> None:
    """Drafts right and wrong, of every length: each sequence still emits what it emits one token at a time,
    with the same logprobs, and its penalties count the emitted tokens in order."""
    vocab, n = 40, 60
    sampler = Sampler()
    plain = _seq(vocab, logprobs=True, top_logprobs=2, **params)
    tokens, logprobs = [1, 2], []
    while len(tokens) < 2 + n:
        out = sampler.sample(_toy_logits(tokens, vocab)[None], [plain])
        tokens += out.token_ids
        assert out.logprobs is not None
        logprobs += out.logprobs
    reference = tokens[2:]

    drafted = _seq(vocab, logprobs=True, top_logprobs=2, **params)
    got, got_logprobs = [1, 2], []
    accepted = rejected = 0
    step = 0
    while len(got) < 2 + n:
        done = len(got) - 2
        # Draft 0..4 tokens: the right continuation, with one wrong token every third step.
        draft = reference[done : done + step % 5]
        if step % 3 == 2 and draft:
            draft[-1] = (draft[-1] + 1) % vocab
        rows = torch.stack([_toy_logits(got + draft[:j], vocab) for j in range(len(draft) + 1)])
        [out] = sampler.verify(rows, [drafted], [draft])
        kept = len(out.token_ids) - 1
        accepted += kept
        rejected += len(draft) - kept
        got += out.token_ids
        assert out.logprobs is not None and out.top_logprobs is not None
        got_logprobs += out.logprobs
        step += 1
    assert got[2 : 2 + n] == reference
    assert got_logprobs[:n] == pytest.approx(logprobs, abs=1e-6)
    assert accepted > 20 and rejected > 0  # both paths were taken
    if plain.counts is not None:
        assert drafted.counts is not None
        # Penalty counts are those of the emitted tokens (more may be emitted than n).
        assert torch.equal(drafted.counts, torch.bincount(torch.tensor(got[2:]), minlength=vocab).float())


def _processed(logits: torch.Tensor, counts: torch.Tensor, *, temperature: float, top_p: float, presence: float):
    """The distribution the sampler draws from, written out plainly: penalty, temperature, top-p (no top-k)."""
    x = (logits - presence * (counts > 0)) / temperature
    p = torch.softmax(x.double(), -1)
    order = p.argsort(descending=True)
    before = torch.cumsum(p[order], 0) - p[order]
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[before < top_p]] = True
    p = torch.where(keep, p, 0.0)
    return p / p.sum()


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum()
    support = probs > 0
    assert counts[~support].sum() == 0, "a token outside the distribution's support was emitted"
    expected = n * probs[support]
    return float(((counts[support] - expected) ** 2 / expected).sum())


def test_sampled_drafts_leave_the_output_distribution_unchanged() -> None:
    """Many seeded sequences each verify a one-token draft d under temperature, top-p and a presence penalty:
    d is accepted with probability p(d), a rejection yields p without d renormalized, and the next token after
    an accepted d follows p with d counted by the penalty. Chi-square bounds at p = 0.001 (seeds are fixed)."""
    vocab, n = 8, 20_000
    temperature, top_p, presence = 0.9, 0.95, 0.8
    rows = torch.tensor([[1.0, 0.5, 0.0, -0.5, 2.0, -3.0, 0.3, 0.8], [0.2, 1.5, -1.0, 0.0, 0.5, 0.4, -2.0, 1.0]])
    draft = 0
    seqs = [_seq(vocab, temperature=temperature, top_p=top_p, presence_penalty=presence, seed=i) for i in range(n)]
    for s in seqs:
        s.record(4)  # an earlier token: its logit is penalized at both positions
    outs = Sampler().verify(rows.repeat(n, 1), seqs, [[draft]] * n)

    p0 = _processed(rows[0], torch.eye(vocab)[4], temperature=temperature, top_p=top_p, presence=presence)
    p1 = _processed(
        rows[1], torch.eye(vocab)[4] + torch.eye(vocab)[draft], temperature=temperature, top_p=top_p, presence=presence
    )
    first = torch.bincount(torch.tensor([o.token_ids[0] for o in outs]), minlength=vocab).float()
    after = torch.bincount(torch.tensor([o.token_ids[1] for o in outs if len(o.token_ids) == 2]), minlength=vocab)
    rejected = torch.bincount(torch.tensor([o.token_ids[0] for o in outs if len(o.token_ids) == 1]), minlength=vocab)
    residual = p0.clone()
    residual[draft] = 0
    residual /= residual.sum()
    critical = {7: 24.32, 6: 22.46, 5: 20.52, 4: 18.47}  # chi-square 0.999 quantiles by degrees of freedom
    for observed, expected in [(first, p0), (after.float(), p1), (rejected.float(), residual)]:
        df = int((expected > 0).sum()) - 1
        assert _chi_square(observed, expected) < critical[df], (observed / observed.sum(), expected)
    acceptance = 1 - rejected.sum() / n
    assert abs(acceptance - p0[draft]) < 4 * (p0[draft] * (1 - p0[draft]) / n) ** 0.5


def test_a_sequence_s_generator_moves_only_by_the_tokens_it_emits() -> None:
    vocab = 30
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(5))
    a, b = _seq(vocab, temperature=1.0, seed=11), _seq(vocab, temperature=1.0, seed=11)
    [out] = Sampler().verify(logits, [a], [[vocab + 1, 0, 0]])  # a draft that cannot be right
    assert len(out.token_ids) == 1
    Sampler().sample(logits[:1], [b])
    assert torch.equal(a.generator.get_state(), b.generator.get_state())


# ---- the scheduler's drafts ---------------------------------------------------------------------------------


class FixedDrafter(Drafter):
    """Always guesses token 7, as many as allowed."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        return [[7] * n for n in limits]

    def finish(self, req: Request) -> None:
        self.finished.append(req.request_id)


def _request(rid: str, prompt: list[int], max_tokens: int = 32, **sampling: object) -> Request:
    return Request(GenerateRequest(rid, prompt, SamplingParams(temperature=0, **sampling), max_tokens))


def _scheduler(mode: str = "always", *, step_tokens: int = 16, blocks: int = 64, k: int = 4) -> Scheduler:
    kv = KVCacheManager(BlockPool(blocks, 4))
    speculator = Speculator(SpecConfig(mode, k), [FixedDrafter()], max_context=1000)  # type: ignore[arg-type]
    return Scheduler(SchedulerConfig(max_batch=8, max_step_tokens=step_tokens), kv, speculator)


def _prefill(s: Scheduler, *reqs: Request, first: int = 5) -> None:
    """Admit and prefill these requests together, and give each its first token."""
    for req in reqs:
        s.add(req)
    while any(req.num_computed < req.num_tokens for req in reqs):
        out = s.schedule()
        assert all(c.num_tokens > 1 for c in out.chunks)
        s.update(out)
    for req in reqs:
        req.token_ids.append(first)


def test_drafts_take_only_the_budget_that_prompts_leave() -> None:
    s = _scheduler(step_tokens=16)
    decoding = _request("d", [1, 2, 3])
    _prefill(s, decoding)
    s.add(_request("p", list(range(10, 24))))  # 14 prompt tokens: 2 of the budget are left
    out = s.schedule()
    assert out.num_scheduled_tokens == {"d": 3, "p": 14}
    assert out.chunks[0].draft_ids == [7, 7] and out.chunks[0].samples
    assert out.num_tokens <= s.config.step_capacity
    s.update(out)
    decoding.token_ids.append(9)  # no draft accepted
    s.verified(out.chunks[0], 0)
    out.chunks[1].request.token_ids.append(9)
    # A whole budget of prompt: no room for drafts at all.
    s.add(_request("q", list(range(30, 46))))
    out = s.schedule()
    assert out.num_scheduled_tokens == {"d": 1, "p": 1, "q": 16}


def test_rejected_drafts_are_rolled_back_and_never_cached() -> None:
    s = _scheduler(step_tokens=16)
    req = _request("r", [1, 2, 3, 4, 5, 6])  # 6 tokens, blocks of 4
    _prefill(s, req)  # 7 tokens, 6 computed, 2 blocks
    out = s.schedule()
    [chunk] = out.chunks
    assert chunk.token_ids() == [5, 7, 7, 7, 7] and len(req.block_ids) == 3  # positions 6..10
    s.update(out)
    assert req.num_computed == 7  # the drafts' KV is not the request's yet
    req.token_ids += [7, 9]  # the first draft was right, the model said 9 after it
    s.verified(chunk, 1)
    assert req.num_computed == 8 and req.num_tokens == 9
    assert len(req.block_ids) == 3  # position 8, the next one to compute, is in block 2
    # Only the block below the computed mark (positions 0-3 and 4-7) is cached; none holds a rejected draft.
    assert len(req.prefix_entries) == 2 and s.kv.pool.num_cached == 2
    assert req.draft.drafted == 4 and req.draft.accepted == 1 and s.speculator is not None
    assert s.speculator.accepted_tokens == 1


def test_blocks_holding_only_rejected_drafts_go_back_to_the_pool() -> None:
    s = _scheduler(step_tokens=16, k=8)
    req = _request("r", [1, 2, 3])
    _prefill(s, req)  # 4 tokens, 3 computed
    idle = s.kv.pool.num_idle
    out = s.schedule()
    [chunk] = out.chunks
    assert len(req.block_ids) == 3  # positions 3..11
    s.update(out)
    req.token_ids.append(9)  # no draft accepted
    s.verified(chunk, 0)
    assert req.block_ids and len(req.block_ids) == 2 and s.kv.pool.num_idle == idle - 1
    s.finish(req)
    assert s.kv.pool.num_idle == 63 and s.speculator is not None
    assert s.speculator.drafters[0].finished == ["r"]  # type: ignore[attr-defined]


def test_drafts_stop_short_of_max_tokens_and_skip_grammar_requests() -> None:
    s = _scheduler(step_tokens=64)
    short = _request("short", [1, 2, 3], max_tokens=3)
    constrained = _request("constrained", [1, 2, 3])
    constrained.params.matcher = object()  # type: ignore[assignment]  # only its presence matters here
    _prefill(s, short, constrained)  # 1 token out: short has 2 more to go, so 1 draft at most
    out = s.schedule()
    assert {c.request.request_id: c.draft_ids for c in out.chunks} == {"short": [7], "constrained": []}


def _timed(speculator: Speculator, ms: Callable[[int], float]) -> Speculator:
    for n in range(1, 40):
        speculator.timed(n, ms(n) / 1000)
    return speculator


def _auto(ms: Callable[[int], float]) -> Speculator:
    return _timed(Speculator(SpecConfig("auto", 4), [FixedDrafter()], max_context=1000), ms)


def test_auto_drafts_whatever_is_expected_to_pay_when_rows_are_free() -> None:
    speculator = _auto(lambda n: 50.0)  # weight reads dominate: every step size costs the same
    reqs = [_request(f"r{i}", [1, 2, 3]) for i in range(3)]
    assert speculator.propose(reqs, 64, 3) == [[7] * 4] * 3
    assert speculator.propose(reqs, 6, 3) == [[7] * 4, [7] * 2, []]  # the budget is the limit


def test_auto_drafts_nothing_where_each_row_costs_a_token() -> None:
    speculator = _auto(lambda n: 10.0 * n)  # compute-bound: a draft row costs what a decode row does
    req = _request("r", [1, 2, 3])
    assert speculator.propose([req], 64, 1) == [[]]
    # ... unless the request's drafts are always right: then 4 drafts for 5 rows still break even at best.
    req.draft.rates["drafter"] = 0.999
    assert speculator.propose([req], 64, 1) == [[]]


def test_auto_drafts_as_deep_as_the_acceptance_and_the_measured_cost_allow() -> None:
    speculator = _auto(lambda n: 20.0 + 5.0 * (n - 1))  # each extra row adds a quarter of a decode step
    good, poor, fresh = (_request(rid, [1, 2, 3]) for rid in ("good", "poor", "fresh"))
    good.draft.rates["drafter"], poor.draft.rates["drafter"] = 0.95, 0.2
    assert speculator.propose([good], 64, 1) == [[7] * 4]
    assert speculator.propose([poor], 64, 1) == [[]]
    assert speculator.propose([fresh], 64, 1) == [[7]]  # the prior (0.5) pays for one token, not two
    # In one step, draft tokens go to the requests most likely to keep them, while they pay: here a step of 7
    # tokens yields 6.5 expected for 50 ms; fresh's half a token more would not pay for its 5 ms.
    assert speculator.propose([poor, good, fresh], 64, 3) == [[], [7] * 4, []]


def test_auto_still_measures_what_it_has_stopped_drafting() -> None:
    speculator = _auto(lambda n: 10.0 * n)
    req = _request("r", [1, 2, 3])
    req.draft.rates["drafter"] = 0.1
    offers = [speculator.propose([req], 64, 1)[0] for _ in range(EXPLORE_EVERY)]
    assert offers.count([7] * 4) == 1 and offers.count([]) == EXPLORE_EVERY - 1
    assert 0.4 < req.draft.rates["drafter"] < 0.5  # drifting back towards the prior


def test_a_request_s_rate_follows_its_verified_drafts() -> None:
    speculator = _auto(lambda n: 10.0)
    req = _request("r", [1, 2, 3])
    assert speculator.propose([req], 64, 1) == [[7] * 4]
    speculator.observe(req, 4, 4)
    assert req.draft.rates["drafter"] > 0.75
    high = req.draft.rates["drafter"]
    speculator.observe(req, 4, 1)  # one success, then a failure (the last two drafts were never tried)
    assert req.draft.rates["drafter"] < high
    assert (req.draft.drafted, req.draft.accepted, req.draft.steps) == (8, 5, 2)
    assert (speculator.drafted_tokens, speculator.accepted_tokens, speculator.verify_steps) == (8, 5, 2)


def test_step_times_are_optimistic_where_unmeasured() -> None:
    times = StepTimes(largest=32)
    assert times.ratio(1, 5) == 1.0
    times.record(1, 0.010)
    times.record(3, 0.020)
    assert times.ratio(1, 2) == 1.0 and times.ratio(1, 5) == 2.0
    assert times.ratio(100, 110) == 1.1  # beyond the timed sizes: in proportion to the tokens


class ModelLikeDrafter(FixedDrafter):
    """Guesses token 8, at a cost: as the speculator sees a draft model."""

    name = "model"
    free = False

    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        return [[8] * n for n in limits]

    def seconds(self, depth: int) -> float:
        return depth * 0.001


class EvenLookup(FixedDrafter):
    """A free drafter that finds a guess (token 7) only for requests whose prompt has an even length."""

    name = "lookup"

    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        return [[7] * n if req.num_prompt_tokens % 2 == 0 else [] for req, n in zip(reqs, limits, strict=True)]


@pytest.mark.parametrize("mode", ["always", "auto"])
def test_a_later_drafter_drafts_for_the_requests_the_earlier_left_without_a_draft(mode: str) -> None:
    speculator = _timed(Speculator(SpecConfig(mode, 4), [EvenLookup(), ModelLikeDrafter()], 1000), lambda n: 50.0)
    even, odd = _request("even", [1, 2]), _request("odd", [1, 2, 3])
    assert speculator.propose([even, odd], 64, 2) == [[7] * 4, [8] * 4]
    assert (even.draft.source, odd.draft.source) == ("lookup", "model")
    # Each outcome goes to its own drafter's estimates: the request's, and the prior new requests start from.
    speculator.observe(even, 4, 4)
    speculator.observe(odd, 4, 0)
    assert set(even.draft.rates) == {"lookup"} and set(odd.draft.rates) == {"model"}
    assert speculator.prior["lookup"] > 0.5 > speculator.prior["model"]
    # Two drafters by one name could not be told apart.
    with pytest.raises(ValueError, match="distinct names"):
        Speculator(SpecConfig(mode, 4), [FixedDrafter(), FixedDrafter()], 1000)


def test_a_new_request_starts_from_what_its_drafter_s_drafts_have_been_worth() -> None:
    # Each extra row adds 60 % of a decode step: the prior (0.5) does not pay for a single draft token.
    speculator = _auto(lambda n: 20.0 + 12.0 * (n - 1))
    assert speculator.propose([_request("first", [1, 2, 3])], 64, 1) == [[]]
    # Other requests' drafts were nearly always right (every EXPLORE_EVERY-th offer takes all, as here).
    for i in range(25):
        req = _request(f"r{i}", [1, 2, 3])
        req.draft.source = "drafter"
        speculator.observe(req, 4, 4)
    assert speculator.prior["drafter"] > 0.9
    fresh = _request("fresh", [1, 2, 3])
    assert len(speculator.propose([fresh], 64, 1)[0]) >= 2
    assert "drafter" not in fresh.draft.rates  # still on the prior: it has verified nothing yet


def test_auto_times_a_plain_step_before_it_weighs_drafts() -> None:
    """Before any step of this size was timed, a draft's cost could be weighed against nothing and every draft would
    look free: then no plain step would ever be timed (a draft model drafted in every step at 28 % acceptance)."""
    speculator = Speculator(SpecConfig("auto", 4), [ModelLikeDrafter()], max_context=1000)
    req = _request("r", [1, 2, 3])
    assert speculator.propose([req], 64, 1) == [[]]
    speculator.timed(1, 0.050)
    assert speculator.propose([req], 64, 1) == [[8] * 4]  # larger steps untimed: tried, optimistically
