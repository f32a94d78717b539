"""Turn one engine step's logits into one token per running sequence, each with its own ``SamplingParams``.

The engine calls ``Sampler.sample`` once per step with the logits of every running sequence::

    logits [B, V] ─ penalties ─┬─ greedy rows (temperature 0) ───────────────────────── argmax
                               └─ sampled rows ─ /temperature ─ softmax ─ top-k/top-p ─ inverse-CDF draw
    logits [B, V] (raw) ─ log-softmax ─ the chosen token's logprob and the top alternatives (when a row asked)

A sampled row draws exactly one uniform number per step from its own generator and looks it up in its own row's
CDF, so a seeded request gets the same tokens whatever else shares its batch. Greedy rows never touch a generator.

Speculative decoding (``Sampler.verify``): a sequence that drafted k tokens has k + 1 rows, the logits after its
last token and after each draft. Each row is sampled exactly as above, with the penalty counts the drafts before
it would have made, and the drafts are kept up to the first one that differs from the row's pick; the pick there
(or after the last draft) follows them. With a point-mass draft d (prompt lookup), this is the standard
accept/reject rule: d is kept with probability p(d), and on a rejection the pick is distributed as p with d
removed and renormalized; p being the distribution this sampler would draw from at that position. Only the kept
rows' random numbers count: the generator is set back to after them, so a seeded sequence emits exactly the
tokens it emits without drafts, and greedy ones the argmax at every position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ember.bus.messages import SamplingDefaults, SamplingParams

# Temperatures below this are greedy: dividing by them would overflow float32 logits (vLLM uses the same cut).
GREEDY_BELOW = 1e-5
# A nucleus is first looked for among this many top tokens (a top-k is far cheaper than sorting the vocabulary:
# ~60 µs against ~3 ms per row on a CPU); only a flatter distribution escalates, 8x at a time, up to a full sort.
_NUCLEUS_GUESS = 256
_NUCLEUS_GROWTH = 8
# Tokens per block in the two-stage draw (see _pick).
_BLOCK = 1024


@dataclass
class SequenceSampling:
    """One sequence's sampling state: the engine creates it when a request joins and keeps it until the request ends."""

    params: SamplingParams
    # Always a CPU generator, even when the model runs on a GPU: a step needs one uniform number per row, and drawing
    # them on the host and copying the batch over once beats a kernel launch per row on a device generator.
    generator: torch.Generator
    # counts[token]: how often this sequence has generated the token so far; [V] float32 on the logits' device.
    # Kept only when a presence or frequency penalty is set (None otherwise), so plain requests cost nothing.
    counts: torch.Tensor | None = None

    @classmethod
    def create(cls, params: SamplingParams, vocab_size: int, device: torch.device | str) -> SequenceSampling:
        """The state for a request that is joining the batch.

        Args:
            params: The request's sampling parameters, as they came from the gateway.
            vocab_size: V, the width of the logits the engine will pass to ``Sampler.sample``.
            device: Where the logits live; the penalty counts are kept there.

        Returns:
            A fresh state whose generator is seeded from ``params.seed`` (a random seed when it is None).
        """
        # Fields the request left unset get OpenAI's defaults (the worker has usually filled in the model's own).
        params = params.with_defaults(SamplingDefaults())
        generator = torch.Generator()
        if params.seed is None:
            generator.seed()
        else:
            # torch takes seeds modulo 2**64 but rejects larger ints; OpenAI's seed is any integer.
            generator.manual_seed(params.seed & 0xFFFF_FFFF_FFFF_FFFF)
        counts = None
        if params.presence_penalty or params.frequency_penalty:
            counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        return cls(params=params, generator=generator, counts=counts)

    @property
    def greedy(self) -> bool:
        return self.params.temperature < GREEDY_BELOW

    @property
    def wants_logprobs(self) -> bool:
        return self.params.logprobs or self.params.top_logprobs > 0

    def record(self, token_id: int) -> None:
        """Count a generated token toward the penalties (``Sampler.sample`` does this for the tokens it picks)."""
        if self.counts is not None:
            self.counts[token_id] += 1

    def ahead(self, draft_ids: Sequence[int]) -> list[SequenceSampling]:
        """This state at each position of a draft: as it would be after 0, 1, ... len(draft_ids) of its tokens.

        They share the generator; only the penalty counts differ (copies, for the rows after a draft token).
        """
        if self.counts is None:
            return [self] * (len(draft_ids) + 1)
        states = [self]
        counts = self.counts
        for token_id in draft_ids:
            counts = counts.clone()
            counts[token_id] += 1
            states.append(replace(self, counts=counts))
        return states


@dataclass
class SampleOutput:
    """What one step picked: one entry per sequence, in the order of the ``seqs`` passed to ``Sampler.sample``;
    or, from ``Sampler.verify``, one entry per token that one sequence emits."""

    token_ids: list[int]
    # log_softmax of the raw logits (no penalties, no temperature: the model's own distribution, as OpenAI reports)
    # at the chosen token, for every row; None when no sequence asked for logprobs.
    logprobs: list[float] | None
    # Per sequence, its ``top_logprobs`` best (token_id, logprob) pairs, best first, from the same raw distribution;
    # [] for a sequence that did not ask, and masked (-inf) tokens are never listed. None when no sequence asked.
    top_logprobs: list[list[tuple[int, float]]] | None


class Sampler:
    """Picks the next token of every running sequence, vectorized over the batch."""

    def sample(self, logits: torch.Tensor, seqs: Sequence[SequenceSampling]) -> SampleOutput:
        """Pick one token per row of ``logits`` and count it toward that sequence's penalties.

        Args:
            logits: ``[B, V]`` float logits of the last position of each sequence. ``-inf`` masks a token (it is
                never picked); every row must leave at least one token unmasked. Not modified.
            seqs: ``B`` sampling states, row ``i`` of ``logits`` belonging to ``seqs[i]``.

        Returns:
            The chosen token ids, plus logprobs when any sequence asked for them.
        """
        tokens, logprobs, top_logprobs = self._choose(logits, seqs)
        token_ids = tokens.tolist()
        for seq, token_id in zip(seqs, token_ids, strict=True):
            seq.record(token_id)
        return SampleOutput(token_ids=token_ids, logprobs=logprobs, top_logprobs=top_logprobs)

    def verify(
        self, logits: torch.Tensor, seqs: Sequence[SequenceSampling], drafts: Sequence[Sequence[int]]
    ) -> list[SampleOutput]:
        """Pick each sequence's next tokens given its drafted guesses (see the module's docstring).

        Args:
            logits: ``[R, V]``: for each sequence in order, ``1 + len(drafts[i])`` rows, the logits after its last
                token and after each of its drafts. ``-inf`` masks a token, as in ``sample``. Not modified.
            seqs: The sequences' sampling states.
            drafts: Each sequence's drafted tokens ([] for none: then this is ``sample`` for its row).

        Returns:
            Per sequence, the tokens it emits (its accepted drafts, then one token of its own: 1 to
            ``len(drafts[i]) + 1`` of them) with their logprobs; each token is counted toward its penalties.
        """
        sizes = [1 + len(d) for d in drafts]
        assert logits.dim() == 2 and logits.shape[0] == sum(sizes), f"logits {tuple(logits.shape)} for rows {sizes}"
        rows = [state for seq, draft in zip(seqs, drafts, strict=True) for state in seq.ahead(draft)]
        # Where a drafting sampled row's generator was: it is set back to after the rows that are kept.
        rewind = {i: seq.generator.get_state() for i, seq in enumerate(seqs) if drafts[i] and not seq.greedy}
        tokens, logprobs, top_logprobs = self._choose(logits, rows)
        picks = tokens.tolist()
        outs = []
        first = 0
        for i, (seq, draft) in enumerate(zip(seqs, drafts, strict=True)):
            mine = picks[first : first + sizes[i]]
            accepted = 0
            while accepted < len(draft) and mine[accepted] == draft[accepted]:
                accepted += 1
            kept = slice(first, first + accepted + 1)
            if i in rewind and accepted < len(draft):
                seq.generator.set_state(rewind[i])
                for _ in range(accepted + 1):
                    _uniforms(seq.generator)
            for token_id in mine[: accepted + 1]:
                seq.record(token_id)
            outs.append(
                SampleOutput(
                    token_ids=mine[: accepted + 1],
                    logprobs=logprobs[kept] if logprobs is not None else None,
                    top_logprobs=top_logprobs[kept] if top_logprobs is not None else None,
                )
            )
            first += sizes[i]
        return outs

    def _choose(
        self, logits: torch.Tensor, seqs: Sequence[SequenceSampling]
    ) -> tuple[torch.Tensor, list[float] | None, list[list[tuple[int, float]]] | None]:
        """One token per row ``[B]`` (not yet recorded), and the logprobs the rows asked for."""
        assert logits.dim() == 2 and logits.shape[0] == len(seqs), f"logits {tuple(logits.shape)} for {len(seqs)} seqs"
        logits = logits.float()  # [B, V]
        # NOTE: each [B, V] temporary is 3 MB at B=16 and, on a CPU, fresh pages to fault in: the steps below reuse
        # the buffers they own (``adjusted`` when penalties made one, the sampled rows' copy) instead of allocating.
        adjusted = _apply_penalties(logits, seqs)  # [B, V], ``logits`` itself when no row has a penalty
        sampled = [i for i, s in enumerate(seqs) if not s.greedy]
        if not sampled:
            tokens = adjusted.argmax(dim=-1)  # [B]
        elif len(sampled) == len(seqs):
            tokens = _draw(adjusted if adjusted is not logits else logits.clone(), seqs)
        else:
            tokens = adjusted.argmax(dim=-1)  # [B]; reading the sampled rows too is cheaper than gathering the rest
            rows = torch.tensor(sampled, device=logits.device)
            tokens[rows] = _draw(adjusted.index_select(0, rows), [seqs[i] for i in sampled])
        logprobs, top_logprobs = _logprobs(logits, tokens, seqs)
        return tokens, logprobs, top_logprobs


def _column(values: list[float] | list[int], like: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One value per row as a ``[N, 1]`` tensor on the logits' device."""
    return torch.tensor(values, dtype=dtype, device=like.device).unsqueeze(1)


def _apply_penalties(logits: torch.Tensor, seqs: Sequence[SequenceSampling]) -> torch.Tensor:
    """OpenAI's presence and frequency penalties: ``logit -= count * frequency + (count > 0) * presence``."""
    penalized = [(i, c) for i, s in enumerate(seqs) if (c := s.counts) is not None]
    if not penalized:
        return logits
    rows = [i for i, _ in penalized]
    counts = torch.stack([c for _, c in penalized])  # [P, V]
    frequency = _column([seqs[i].params.frequency_penalty for i in rows], logits)  # [P, 1]
    presence = _column([seqs[i].params.presence_penalty for i in rows], logits)  # [P, 1]
    unused = counts == 0  # [P, V]
    penalty = counts.mul_(frequency).add_(presence).masked_fill_(unused, 0.0)  # [P, V], in the stacked copy
    if len(rows) == len(seqs):
        return torch.sub(logits, penalty, out=penalty)
    return logits.clone().index_add_(0, torch.tensor(rows, device=logits.device), penalty, alpha=-1)


def _draw(logits: torch.Tensor, seqs: Sequence[SequenceSampling]) -> torch.Tensor:
    """Sample one token per row (temperature, top-k, top-p) with each row's own generator: ``[S, V] -> [S]``.

    ``logits`` is overwritten: the caller hands over a buffer it owns.
    """
    vocab = logits.shape[-1]
    scaled = logits.div_(_column([s.params.temperature for s in seqs], logits))  # [S, V]
    # The softmax numerator: nothing below needs it normalized, since the cuts and the draw measure mass against
    # the row's total. A -inf logit gets weight 0.
    weights = scaled.sub_(scaled.amax(dim=-1, keepdim=True)).exp_()  # [S, V], each row's largest is 1
    cut = [i for i, s in enumerate(seqs) if 0 < s.params.top_k < vocab or s.params.top_p < 1.0]
    if cut:
        floor = _cutoffs(weights if len(cut) == len(seqs) else weights[cut], [seqs[i].params for i in cut])  # [C, 1]
        if len(cut) < len(seqs):
            floor = torch.zeros(len(seqs), 1, device=logits.device).index_copy_(
                0, torch.tensor(cut, device=logits.device), floor
            )
        weights.masked_fill_(weights < floor, 0.0)
    uniform = torch.stack([_uniforms(s.generator) for s in seqs])  # [S, 2]
    return _pick(weights, uniform.to(logits.device))


def _uniforms(generator: torch.Generator) -> torch.Tensor:
    """A sampled row's random numbers for one token: one picks a block of the vocabulary, the other a token in it."""
    return torch.rand(2, dtype=torch.float64, generator=generator)


def _pick(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Draw a token per row in proportion to ``weights [S, V]``, given two uniform numbers per row ``[S, 2]``.

    One float32 running sum over the whole vocabulary would stop rising for tokens under its ulp (6e-8 near 1),
    skewing the tail by ~1e-4 of the mass (SmolLM2, T=1); a float64 one needs two [S, V] float64 buffers. Instead
    a block of ``_BLOCK`` tokens is drawn by its mass, then a token inside it: both sums are short and in float64,
    and the vocabulary is read once, with nothing as large as ``weights`` allocated.
    """
    vocab = weights.shape[-1]
    exact = torch.float32 if weights.device.type == "mps" else torch.float64  # MPS has no float64
    whole = vocab - vocab % _BLOCK
    masses = [weights[:, :whole].unfold(1, _BLOCK, _BLOCK).sum(dim=-1)] if whole else []  # unfold is a view
    if whole < vocab:
        masses.append(weights[:, whole:].sum(dim=-1, keepdim=True))
    mass = torch.cat(masses, dim=1) if len(masses) > 1 else masses[0]  # [S, ceil(V / BLOCK)]
    block = _search(mass.to(exact), uniform[:, :1].to(exact))  # [S, 1]
    index = block * _BLOCK + torch.arange(_BLOCK, device=weights.device)  # [S, BLOCK]
    inside = weights.gather(1, index.clamp(max=vocab - 1)) * (index < vocab)  # [S, BLOCK]; the last block may be short
    return (block * _BLOCK + _search(inside.to(exact), uniform[:, 1:].to(exact))).squeeze(1)  # [S]


def _search(weights: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF lookup: the position each row's uniform number falls on, ``[S, N], [S, 1] -> [S, 1]``."""
    cdf = weights.cumsum(dim=-1)  # [S, N], not normalized: the uniform number is scaled by the row's total
    total = cdf[:, -1:]  # [S, 1]
    # u < 1, but u * total can round up to total; staying strictly below it means the search always lands where
    # the CDF rises, on a weight > 0: never on a masked or cut token, nor on a block holding only such tokens.
    target = torch.minimum(uniform * total, torch.nextafter(total, torch.zeros_like(total)))  # [S, 1]
    return torch.searchsorted(cdf, target, right=True)


def _cutoffs(weights: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The smallest weight each row keeps after its top-k then top-p cut: ``[C, V] -> [C, 1]``.

    ``weights`` are unnormalized probabilities (the softmax numerator).

    Top-p is taken over the distribution left after top-k (renormalized), as in HF transformers and vLLM; it keeps
    the fewest most likely tokens whose mass reaches top_p, and always at least one. The result is a value, not a
    set of indices, so the caller keeps ``weights >= cutoff`` in vocabulary order: tokens tied with the cutoff all stay,
    and the cut does not depend on how a sort ordered ties or on how many candidates this batch looked at.
    """
    vocab = weights.shape[-1]
    top_k = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    limit = _column([k if k else vocab for k in top_k], weights, torch.long)  # [C, 1]
    top_p = _column([p.top_p for p in params], weights)  # [C, 1]
    # Rows without a top-k: their nucleus may reach past the candidates looked at.
    open_ended = _column([k == 0 for k in top_k], weights, torch.bool)  # [C, 1]
    total = weights.sum(dim=-1, keepdim=True)  # [C, 1]
    width = min(vocab, max(max(top_k), _NUCLEUS_GUESS if any(k == 0 for k in top_k) else 0))
    cutoff, fits = _cut(weights, limit, top_p, open_ended, total, width)
    # Only the rows whose nucleus did not fit look at more candidates (a flat distribution: a few % of steps).
    rows = (~fits).nonzero().squeeze(1)
    while rows.numel():
        width = min(vocab, width * _NUCLEUS_GROWTH)
        cutoff[rows], fits = _cut(weights[rows], limit[rows], top_p[rows], open_ended[rows], total[rows], width)
        rows = rows[~fits]
    return cutoff


def _cut(
    weights: torch.Tensor,
    limit: torch.Tensor,
    top_p: torch.Tensor,
    open_ended: torch.Tensor,
    total: torch.Tensor,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cutoffs ``[C, 1]`` from the ``width`` likeliest tokens of each row, and whether each cut fits in them ``[C]``."""
    vocab = weights.shape[-1]
    best = weights.sort(dim=-1, descending=True).values if width == vocab else weights.topk(width, dim=-1).values
    # best: [C, W], each row descending
    in_k = torch.arange(width, device=weights.device) < limit  # [C, W]
    kept = best * in_k
    mass = kept.cumsum(dim=-1)  # [C, W]
    # Rows with a top-k renormalize over their k tokens; the others over the whole vocabulary.
    goal = top_p * torch.where(open_ended, total, mass[:, -1:])  # [C, 1]
    # A token stays while the mass before it is short of the goal; top_p == 1 keeps all of the top-k.
    keep = in_k & ((mass - kept < goal) | (top_p >= 1.0))  # [C, W], a prefix of each row
    last = (keep.sum(dim=-1, keepdim=True) - 1).clamp_(min=0)  # [C, 1]
    fits = (mass[:, -1:] >= goal) | ~open_ended | (width == vocab)  # [C, 1]
    return best.gather(1, last), fits.squeeze(1)


def _logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, seqs: Sequence[SequenceSampling]
) -> tuple[list[float] | None, list[list[tuple[int, float]]] | None]:
    """The chosen tokens' logprobs and each asking row's top alternatives, from the raw logits ``[B, V]``."""
    if not any(s.wants_logprobs for s in seqs):
        return None, None
    # logit - logsumexp is log_softmax without a [B, V] result, and stays finite where a softmax would underflow.
    norm = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, 1]
    chosen = (logits.gather(1, tokens.unsqueeze(1)) - norm).squeeze(1).tolist()  # [B]
    rows = [i for i, s in enumerate(seqs) if s.params.top_logprobs > 0]
    if not rows:
        return chosen, None
    index = torch.tensor(rows, device=logits.device)
    best = logits[index].topk(max(seqs[i].params.top_logprobs for i in rows), dim=-1)  # [R, N]
    values = (best.values - norm[index]).tolist()
    indices = best.indices.tolist()
    top: list[list[tuple[int, float]]] = [[] for _ in seqs]
    for row, i in enumerate(rows):
        n = seqs[i].params.top_logprobs
        top[i] = [(t, v) for t, v in zip(indices[row][:n], values[row][:n], strict=True) if v != float("-inf")]
    return chosen, top
