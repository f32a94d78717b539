"""The batched sampler: greedy, temperature, top-k, top-p, penalties, seeds, masks and logprobs on real torch."""

from __future__ import annotations

import math

import pytest
import torch

from ember.bus.messages import SamplingParams
from ember.runtimes.text.sampling import Sampler, SequenceSampling

V = 1000
NEG_INF = float("-inf")


def _seq(vocab: int = V, **params: object) -> SequenceSampling:
    return SequenceSampling.create(SamplingParams(**params), vocab, "cpu")


def _logits(batch: int, vocab: int = V, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _frequencies(logits: torch.Tensor, draws: int, **params: object) -> torch.Tensor:
    """Draw ``draws`` tokens from one row of logits (one seeded sequence per draw, all in one batch)."""
    seqs = [_seq(logits.shape[-1], seed=i, **params) for i in range(draws)]
    tokens = Sampler().sample(logits.expand(draws, -1), seqs).token_ids
    return torch.bincount(torch.tensor(tokens), minlength=logits.shape[-1]).float() / draws


def test_greedy_takes_argmax_and_never_touches_the_generator() -> None:
    logits = _logits(8)
    seqs = [_seq(temperature=0.0, seed=i) for i in range(8)]
    states = [s.generator.get_state() for s in seqs]
    out = Sampler().sample(logits, seqs)
    assert out.token_ids == logits.argmax(-1).tolist()
    assert out.logprobs is None and out.top_logprobs is None
    assert all(torch.equal(s.generator.get_state(), state) for s, state in zip(seqs, states, strict=True))


@pytest.mark.parametrize("params", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "top_p": 0.5}], ids=str)
def test_cuts_that_leave_one_token_are_greedy(params: dict[str, object]) -> None:
    logits = _logits(32, seed=1)
    seqs = [_seq(temperature=1.5, seed=i, **params) for i in range(32)]
    assert Sampler().sample(logits, seqs).token_ids == logits.argmax(-1).tolist()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_follow_the_tempered_softmax(temperature: float) -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    expected = torch.softmax(logits[0] / temperature, -1)
    got = _frequencies(logits, 8000, temperature=temperature)
    # 8000 draws: one standard deviation is at most 0.0056.
    assert torch.allclose(got, expected, atol=0.025), (got, expected)


def test_draws_follow_the_distribution_across_vocabulary_blocks() -> None:
    # The draw picks a block of 1024 tokens, then a token in it: cover block edges and the short last block.
    vocab = 2500
    support = torch.tensor([3, 1023, 1024, 2047, 2048, 2499])
    logits = torch.full((1, vocab), NEG_INF)
    logits[0, support] = torch.tensor([0.0, 1.0, 0.5, 1.5, 0.2, 1.2])
    expected = torch.softmax(logits[0, support], -1)
    got = _frequencies(logits, 8000)
    assert got.sum() == pytest.approx(got[support].sum())  # nothing outside the support
    assert torch.allclose(got[support], expected, atol=0.025), (got[support], expected)


def test_top_k_keeps_the_k_most_likely_renormalized() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    got = _frequencies(logits, 8000, top_k=2)
    expected = torch.tensor([0.0, 0.0, 1.0, math.e]) / (1.0 + math.e)
    assert got[:2].sum() == 0
    assert torch.allclose(got, expected, atol=0.025), (got, expected)


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    got = _frequencies(logits, 8000, top_p=0.7)  # 0.5 < 0.7 <= 0.8: the two most likely tokens
    assert got[2:].sum() == 0
    assert torch.allclose(got[:2], torch.tensor([0.625, 0.375]), atol=0.025), got


def test_top_p_applies_to_what_top_k_left() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    # After top_k=2 the distribution is [0.625, 0.375]: top_p=0.6 then keeps one token. Over the full distribution it
    # would have kept two (0.5 < 0.6).
    assert _frequencies(logits, 500, top_k=2, top_p=0.6).tolist() == [1.0, 0.0, 0.0, 0.0]


def test_a_wide_nucleus_is_found_past_the_first_guess() -> None:
    vocab = 4096
    logits = torch.linspace(0.0, 1.0, vocab).unsqueeze(0)  # nearly flat: the 0.9 nucleus holds ~3,600 tokens
    probs = torch.softmax(logits[0], -1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    nucleus = set(order[before < 0.9].tolist())
    got = _frequencies(logits, 2000, top_p=0.9)
    drawn = set(got.nonzero().flatten().tolist())
    assert drawn <= nucleus
    assert len(drawn) > 1000  # far beyond the 256 candidates looked at first


def test_only_the_rows_with_a_wide_nucleus_look_further_and_nothing_else_changes() -> None:
    vocab = 4096
    flat = torch.linspace(0.0, 1.0, vocab)
    peaked = torch.randn(vocab, generator=torch.Generator().manual_seed(8)) * 4
    rows = [(flat, {"top_p": 0.9}), (peaked, {"top_p": 0.9}), (flat, {"top_k": 5, "top_p": 0.9}), (peaked, {})]
    sampler = Sampler()
    alone = []
    for row, params in rows:
        seq = _seq(vocab, seed=11, **params)
        alone.append([sampler.sample(row[None], [seq]).token_ids[0] for _ in range(20)])
    batch = [_seq(vocab, seed=11, **params) for _, params in rows]
    logits = torch.stack([row for row, _ in rows])
    together = [sampler.sample(logits, batch).token_ids for _ in range(20)]
    assert [list(column) for column in zip(*together, strict=True)] == alone
    assert all(t >= vocab - 5 for t in alone[2])


def test_mixed_batch_rows_follow_their_own_params() -> None:
    logits = _logits(6, seed=2)
    logits[3, :] = NEG_INF
    logits[3, 7] = 0.0  # a row with a single allowed token
    seqs = [
        _seq(temperature=0.0),
        _seq(temperature=1.0, top_k=1, seed=1),
        _seq(temperature=0.7, top_p=1e-6, seed=2),
        _seq(temperature=1.3, top_k=50, top_p=0.9, seed=3),
        _seq(temperature=2.0, seed=4),
        _seq(temperature=0.0, presence_penalty=0.0),
    ]
    out = Sampler().sample(logits, seqs).token_ids
    argmax = logits.argmax(-1).tolist()
    assert [out[i] for i in (0, 1, 2, 5)] == [argmax[i] for i in (0, 1, 2, 5)]
    assert out[3] == 7
    assert 0 <= out[4] < V


def _reference_penalized_greedy(logits: list[float], steps: int, presence: float, frequency: float) -> list[int]:
    """OpenAI's formula, one token at a time in plain Python."""
    counts = [0] * len(logits)
    picked = []
    for _ in range(steps):
        adjusted = [x - c * frequency - (c > 0) * presence for x, c in zip(logits, counts, strict=True)]
        token = max(range(len(logits)), key=lambda i: adjusted[i])
        runner_up = max(x for i, x in enumerate(adjusted) if i != token)
        assert adjusted[token] - runner_up > 1e-4, "a near tie would make float32 and float64 disagree"
        counts[token] += 1
        picked.append(token)
    return picked


@pytest.mark.parametrize(
    ("presence", "frequency"), [(1.0, 0.0), (0.0, 0.3), (0.4, 0.25), (-0.5, 0.0), (0.0, -0.2), (2.0, 2.0)]
)
def test_penalties_follow_openais_formula(presence: float, frequency: float) -> None:
    row = [2.0, math.sqrt(2), 2 ** (1 / 3), math.log10(2), NEG_INF]
    expected = _reference_penalized_greedy(row, 12, presence, frequency)
    penalized = _seq(5, temperature=0.0, presence_penalty=presence, frequency_penalty=frequency)
    plain = _seq(5, temperature=0.0)
    sampler = Sampler()
    logits = torch.tensor([row, row])
    got = [sampler.sample(logits, [plain, penalized]).token_ids for _ in range(12)]
    assert [g[1] for g in got] == expected
    assert [g[0] for g in got] == [0] * 12  # the unpenalized neighbour is untouched
    assert torch.equal(logits, torch.tensor([row, row]))  # the caller's logits are not modified
    assert penalized.counts is not None and penalized.counts.tolist() == [expected.count(i) for i in range(5)]
    assert plain.counts is None


def test_penalties_apply_to_sampled_rows() -> None:
    logits = torch.tensor([[5.0, 0.0, 0.0]])
    seq = _seq(3, temperature=1.0, presence_penalty=2.0, frequency_penalty=2.0, seed=0)
    sampler = Sampler()
    tokens = [sampler.sample(logits, [seq]).token_ids[0] for _ in range(6)]
    # Token 0 starts far ahead, but each use costs it 2 + 2 per count: it cannot stay the favourite.
    assert len(set(tokens)) == 3


def test_a_seeded_sequence_draws_the_same_tokens_whatever_its_batch() -> None:
    def params() -> list[SequenceSampling]:
        return [
            _seq(temperature=0.9, top_p=0.9, seed=1234),
            _seq(temperature=1.0, top_k=40, seed=99, presence_penalty=0.5),
            _seq(temperature=0.0),
            _seq(temperature=1.2, seed=None),
            _seq(temperature=0.6, seed=7, frequency_penalty=0.3, logprobs=True, top_logprobs=3),
        ]

    steps = [_logits(1, seed=100 + step) for step in range(30)]
    sampler = Sampler()
    alone = [_seq(temperature=0.9, top_p=0.9, seed=1234) for _ in range(2)]
    runs = [[sampler.sample(x, [seq]).token_ids[0] for x in steps] for seq in alone]
    assert runs[0] == runs[1]

    for position in range(5):
        batch = params()
        batch.insert(position, batch.pop(0))
        noise = [_logits(4, seed=500 + step) for step in range(30)]
        got = []
        for x, rest in zip(steps, noise, strict=True):
            logits = torch.cat([rest[:position], x, rest[position:]])
            got.append(sampler.sample(logits, batch).token_ids[position])
        assert got == runs[0], position

    other_seed = _seq(temperature=0.9, top_p=0.9, seed=4321)
    assert [sampler.sample(x, [other_seed]).token_ids[0] for x in steps] != runs[0]


def test_seeds_beyond_64_bits_are_accepted() -> None:
    a, b = _seq(seed=2**70 + 5), _seq(seed=2**70 + 5)
    logits = _logits(1)
    assert Sampler().sample(logits, [a]).token_ids == Sampler().sample(logits, [b]).token_ids


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 2.0},
        {"temperature": 0.0},
        {"temperature": 1.0, "top_k": 500},
        {"temperature": 1.0, "top_p": 0.999},
        {"temperature": 1.0, "top_k": 3, "top_p": 0.5},
        {"temperature": 1.0, "presence_penalty": -2.0, "frequency_penalty": -2.0},
    ],
    ids=str,
)
def test_masked_tokens_are_never_picked(params: dict[str, object]) -> None:
    batch = 256
    logits = _logits(batch, seed=3)
    allowed = torch.rand(batch, V, generator=torch.Generator().manual_seed(4)) < 0.01
    allowed[:, 0] = True  # every row keeps at least one token
    # The allowed tokens are unlikely ones: a bug that leaked probability to masked tokens would show.
    logits[allowed] -= 20.0
    logits[~allowed] = NEG_INF
    seqs = [_seq(seed=i, logprobs=True, top_logprobs=20, **params) for i in range(batch)]
    sampler = Sampler()
    for _ in range(3):
        out = sampler.sample(logits, seqs)
        assert all(allowed[i, t] for i, t in enumerate(out.token_ids))
        assert out.logprobs is not None and all(math.isfinite(lp) for lp in out.logprobs)
        assert out.top_logprobs is not None
        for i, top in enumerate(out.top_logprobs):
            assert all(allowed[i, t] and math.isfinite(lp) for t, lp in top)
            assert len(top) == min(20, int(allowed[i].sum()))


def test_logprobs_come_from_the_raw_distribution() -> None:
    logits = _logits(4, seed=5)
    seqs = [
        _seq(temperature=0.3, presence_penalty=1.5, seed=1, logprobs=True, top_logprobs=5),
        _seq(temperature=0.0),
        _seq(temperature=1.7, top_k=10, seed=2, logprobs=True),
        _seq(temperature=0.0, logprobs=True, top_logprobs=2),
    ]
    sampler = Sampler()
    sampler.sample(logits, seqs)  # the penalties now differ from zero for the first row
    out = sampler.sample(logits, seqs)
    reference = torch.log_softmax(logits, -1)
    assert out.logprobs is not None and out.top_logprobs is not None
    for i, token in enumerate(out.token_ids):
        assert out.logprobs[i] == pytest.approx(reference[i, token].item(), abs=1e-5)
    for i, n in enumerate([5, 0, 0, 2]):
        best = reference[i].topk(n) if n else None
        got = out.top_logprobs[i]
        assert [t for t, _ in got] == ([] if best is None else best.indices.tolist())
        assert [lp for _, lp in got] == pytest.approx([] if best is None else best.values.tolist(), abs=1e-5)


def test_logprobs_without_alternatives_leave_top_logprobs_out() -> None:
    out = Sampler().sample(_logits(2), [_seq(temperature=0.0, logprobs=True), _seq(temperature=0.0)])
    assert out.logprobs is not None and len(out.logprobs) == 2
    assert out.top_logprobs is None


def test_half_precision_logits_are_accepted() -> None:
    logits = _logits(3).half()
    seqs = [_seq(temperature=0.0), _seq(seed=1, top_p=0.5), _seq(seed=2, top_k=5, logprobs=True)]
    out = Sampler().sample(logits, seqs)
    assert out.token_ids[0] == logits.float().argmax(-1)[0].item()
    assert out.logprobs is not None and all(math.isfinite(lp) for lp in out.logprobs)
