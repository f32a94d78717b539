"""Beam search and best-of-n sampling over Whisper's decoder, for the windows of many requests in one batch.

whisper's ``DecodingTask`` takes one set of options (prompt, temperature, beam size) for its whole batch, and
in whisper 20250625 its beam search fails on more than one audio at a time (the encoder output is not repeated
per beam). Here every window brings its own prompt, temperature and search, and all of them advance together,
one decoder pass per token::

    rows          W * G              G rows per window: its beams (T = 0) or its samples (T > 0); a window with
                                     fewer uses the first ones, the rest idle (G is the widest window's)
    prefix        [W, L0]            sot_prev + prompt + sot sequence, left-padded to the longest: run once per
                                     window, then its keys and values are copied to the window's G rows
    cross k/v     [W, n_audio_ctx, D]  per layer, once per window; its G rows' queries attend to it together
    self k/v      [W * G, L0 + n, D] per layer, preallocated; a beam step reorders rows by index

Padded prefix positions are masked out of self-attention and each row counts its positions from its own first
token, so a window decodes the same tokens whatever it is batched with (up to float rounding). A window leaves
the batch as soon as it is finished, so a short one never runs the steps of a long one.

The search itself is whisper's: a beam keeps the ``beam_size`` best unfinished sequences and collects finished
ones until it has ``beam_size * patience``; the winner, of beams or of samples, has the highest sum of log
probabilities over its length (whisper's ranker, faster-whisper's length_penalty=1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from whisper.model import Whisper
from whisper.tokenizer import Tokenizer

from ember.runtimes.audio.rules import LogitRules


@dataclass(frozen=True)
class SearchOptions:
    """How a window is searched; the defaults are faster-whisper's ``transcribe``."""

    # Beams at temperature 0; 1 is greedy decoding.
    beam_size: int = 5
    # Independent samples at a temperature above 0 (a fallback); the likeliest one wins.
    best_of: int = 5
    # A beam search ends when it has finished round(beam_size * patience) candidates (whisper's patience).
    patience: float = 1.0

    def group(self, temperature: float) -> int:
        """Rows one window takes in the batch."""
        return self.beam_size if temperature == 0 else self.best_of


@dataclass(frozen=True)
class WindowTask:
    """One window to decode: which encoder output, after which tokens, how."""

    # Row of the encoder output passed to ``decode``.
    features: int
    # sot_prev + the prompt + the sot sequence (start, language, task): the tokens before the first sampled one.
    prefix: tuple[int, ...]
    # Index of the start-of-transcript token in ``prefix``: the no-speech probability is read there.
    sot_index: int
    temperature: float
    search: SearchOptions


@dataclass(frozen=True)
class WindowResult:
    """The winning sequence of a window."""

    # The sampled tokens, text and timestamps, without end-of-text.
    tokens: list[int]
    # Sum of the tokens' log probabilities (end-of-text included, as whisper counts it).
    sum_logprob: float
    # sum_logprob / (len(tokens) + 1): whisper's avg_logprob, the fallback's measure of confidence.
    avg_logprob: float
    # Probability of the no-speech token at the start-of-transcript position.
    no_speech_prob: float
    temperature: float


@dataclass
class _Window:
    """A window's search state while it runs."""

    task: WindowTask
    no_speech_prob: float
    # Finished beams: tokens (without end-of-text) -> sum of log probabilities.
    finished: dict[tuple[int, ...], float] = field(default_factory=dict)

    @property
    def beam(self) -> bool:
        return self.task.temperature == 0

    @property
    def width(self) -> int:
        return self.task.search.group(self.task.temperature)

    @property
    def max_candidates(self) -> int:
        return max(1, round(self.task.search.beam_size * self.task.search.patience))


class BatchDecoder:
    """Decodes windows of any prompts, temperatures and searches together (on the model's device)."""

    def __init__(self, model: Whisper, tokenizer: Tokenizer) -> None:
        self.model = model
        self.eot = tokenizer.eot
        self.no_speech = tokenizer.no_speech
        self.n_ctx = model.dims.n_text_ctx
        # whisper's sample_len: at most half the context is sampled, the other half may hold the prompt.
        self.sample_len = self.n_ctx // 2
        device = model.decoder.positional_embedding.device
        self.rules = LogitRules(tokenizer, device)
        # Each block's query, key and value projections as one matrix: one matmul per layer and step instead of
        # three (a step's matmuls are small, so their count matters). The key has no bias in whisper.
        with torch.no_grad():
            self.qkv = [
                (
                    torch.cat([b.attn.query.weight, b.attn.key.weight, b.attn.value.weight]),
                    torch.cat([b.attn.query.bias, torch.zeros_like(b.attn.query.bias), b.attn.value.bias]),
                )
                for b in model.decoder.blocks
            ]

    def max_prompt(self) -> int:
        """Prompt tokens a window may carry (the latest ones are kept), whisper's n_ctx // 2 - 1."""
        return self.n_ctx // 2 - 1

    def decode(self, features: torch.Tensor, tasks: list[WindowTask]) -> list[WindowResult]:
        """The best sequence of each task; ``features`` ``[B, n_audio_ctx, D]`` is the encoder's output."""
        if not tasks:
            return []
        decoder = self.model.decoder
        device = features.device
        xa = features[torch.tensor([t.features for t in tasks], device=device)]  # [W, A, D]
        n_head = decoder.blocks[0].attn.n_head
        # Head-major and contiguous: every step reads all of it, and attention reads this layout fastest.
        cross = [
            (_heads(b.cross_attn.key(xa), n_head).contiguous(), _heads(b.cross_attn.value(xa), n_head).contiguous())
            for b in decoder.blocks
        ]
        width = max(t.search.group(t.temperature) for t in tasks)
        logits, cache, no_speech, pad = self._prefill(tasks, cross, width)
        l0 = max(len(t.prefix) for t in tasks)  # the slots the prefixes fill
        windows = [_Window(t, p) for t, p in zip(tasks, no_speech, strict=True)]
        alive = list(range(len(tasks)))  # positions in ``tasks`` of the windows still in the batch, in row order
        results: list[WindowResult | None] = [None] * len(tasks)
        rows_pad = pad.repeat_interleave(width)  # [R]
        sampled = torch.empty(len(tasks) * width, 0, dtype=torch.long, device=device)
        sums = torch.zeros(len(tasks) * width, device=device)
        filled = l0
        for step in range(self.sample_len):
            self.rules.apply(logits, sampled)
            next_tokens, source, sums = self._choose(logits, sampled, sums, [windows[w] for w in alive], width, step)
            sampled = torch.cat([sampled[source], next_tokens[:, None]], dim=1)
            # Beams move between the rows of their window, whose prefixes are the same: only what was sampled moves.
            if filled > l0 and source.tolist() != list(range(source.numel())):
                for k, v in cache:
                    k[:, :, l0:filled] = k[source, :, l0:filled]
                    v[:, :, l0:filled] = v[source, :, l0:filled]
            # Finished windows leave the batch: their results are read now, their rows dropped.
            keep: list[int] = []
            for slot, w in enumerate(alive):
                win, rows = windows[w], slice(slot * width, (slot + 1) * width)
                over = len(win.task.prefix) + step + 1 > self.n_ctx or step + 1 >= self.sample_len
                if over or self._done(win, sampled[rows]):
                    results[w] = self._result(win, sampled[rows], sums[rows])
                else:
                    keep.append(slot)
            if not keep:
                break
            if len(keep) < len(alive):
                rows_index = torch.tensor(
                    [slot * width + g for slot in keep for g in range(width)], dtype=torch.long, device=device
                )
                slots = torch.tensor(keep, device=device)
                alive = [alive[s] for s in keep]
                cross = [(k[slots], v[slots]) for k, v in cross]
                cache = [(k[rows_index], v[rows_index]) for k, v in cache]
                sampled, sums, next_tokens, rows_pad = (
                    sampled[rows_index],
                    sums[rows_index],
                    next_tokens[rows_index],
                    rows_pad[rows_index],
                )
            mask = None
            if int(rows_pad.max()) > 0:
                mask = (torch.arange(filled + 1, device=device)[None, :] >= rows_pad[:, None])[:, None, None, :]
            positions = (filled - rows_pad)[:, None]
            x = self._forward(next_tokens[:, None], positions, mask, cache, filled, cross, width)
            filled += 1
            logits = self._logits(x[:, -1])
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def _prefill(
        self, tasks: list[WindowTask], cross: list[tuple[torch.Tensor, torch.Tensor]], width: int
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], list[float], torch.Tensor]:
        """Run each window's prefix once; returns the first logits of its ``width`` rows ``[W * width, V]``, the
        self-attention caches with the prefixes copied to every row, the no-speech probabilities, and each
        window's left padding ``[W]``."""
        device = cross[0][0].device
        # A prompt is capped at max_prompt tokens before it gets here; the sot sequence adds at most 4.
        assert all(len(t.prefix) <= self.max_prompt() + 5 for t in tasks), "a window's prompt is over the cap"
        lengths = torch.tensor([len(t.prefix) for t in tasks], device=device)
        l0 = int(lengths.max())
        pad = l0 - lengths  # [W]
        prefix = torch.full((len(tasks), l0), self.eot, dtype=torch.long, device=device)
        for i, t in enumerate(tasks):
            prefix[i, l0 - len(t.prefix) :] = torch.tensor(t.prefix, device=device)
        # Keys may be padding only for the padding itself (a query never has nothing to attend to).
        cols = torch.arange(l0, device=device)
        positions = (cols[None, :] - pad[:, None]).clamp(min=0)
        mask = None
        if int(pad.max()) > 0:
            causal = cols[None, :, None] >= cols[None, None, :]  # [1, query, key]
            real = (cols[None, None, :] >= pad[:, None, None]) | (cols[None, :, None] == cols[None, None, :])
            mask = (causal & real)[:, None]  # [W, 1, L0, L0]
        _, n_head, _, head_dim = cross[0][0].shape
        shape = (len(tasks), n_head, l0, head_dim)
        head = [(cross[0][0].new_empty(shape), cross[0][0].new_empty(shape)) for _ in cross]
        x = self._forward(prefix, positions, mask, head, 0, cross, 1)  # [W, L0, D]
        sot_rows = torch.tensor([l0 - len(t.prefix) + t.sot_index for t in tasks], device=device)
        sot_logits = self._logits(x[torch.arange(len(tasks), device=device), sot_rows])
        no_speech = (
            sot_logits.softmax(dim=-1)[:, self.no_speech].tolist()
            if self.no_speech is not None
            else [float("nan")] * len(tasks)
        )
        logits = self._logits(x[:, -1]).repeat_interleave(width, dim=0)  # [W * G, V]
        # The rows' caches, long enough for every step: each window's prefix copied to its G rows.
        cache = []
        for k, v in head:
            big_k = k.new_empty(len(tasks) * width, n_head, l0 + self.sample_len, head_dim)  # [R, heads, slots, d]
            big_v = torch.empty_like(big_k)
            big_k[:, :, :l0] = k.repeat_interleave(width, dim=0)
            big_v[:, :, :l0] = v.repeat_interleave(width, dim=0)
            cache.append((big_k, big_v))
        return logits, cache, no_speech, pad

    def _forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: list[tuple[torch.Tensor, torch.Tensor]],
        filled: int,
        cross: list[tuple[torch.Tensor, torch.Tensor]],
        width: int,
    ) -> torch.Tensor:
        """whisper's TextDecoder on ``tokens`` ``[R, T]`` at cache slots ``filled ..``; returns ``[R, T, D]``.

        ``positions`` ``[R, T]`` are each row's own; ``mask`` ``[R, 1, T, filled + T]`` (True: attend) or None
        for plain causal attention; ``cache`` holds ``[R, heads, slots, head dim]`` per layer; rows
        ``w * width .. (w + 1) * width`` attend to ``cross[layer][w]`` (``[W, heads, n_audio_ctx, head dim]``).
        """
        decoder = self.model.decoder
        dtype = cross[0][0].dtype
        x = (decoder.token_embedding(tokens) + decoder.positional_embedding[positions]).to(dtype)
        r, t, d = x.shape
        end = filled + t
        layers = zip(decoder.blocks, self.qkv, cache, cross, strict=True)
        for block, (w, b), (k_cache, v_cache), (ck, cv) in layers:
            attn, n_head = block.attn, block.attn.n_head
            h = block.attn_ln(x)
            q, k, v = F.linear(h, w.to(h.dtype), b.to(h.dtype)).split(d, dim=-1)
            k_cache[:, :, filled:end] = _heads(k, n_head)
            v_cache[:, :, filled:end] = _heads(v, n_head)
            q = _heads(q, n_head)
            causal = mask is None and t > 1
            a = F.scaled_dot_product_attention(
                q, k_cache[:, :, :end], v_cache[:, :, :end], attn_mask=mask, is_causal=causal
            )
            x = x + attn.out(_merge(a))
            cross_attn = block.cross_attn
            assert cross_attn is not None and block.cross_attn_ln is not None
            h = block.cross_attn_ln(x)
            # A window's rows query its audio together: [W * G, T, D] -> [W, G * T, D].
            q = _heads(cross_attn.query(h).reshape(r // width, width * t, d), n_head)
            a = F.scaled_dot_product_attention(q, ck, cv)
            x = x + cross_attn.out(_merge(a).reshape(r, t, d))
            x = x + block.mlp(block.mlp_ln(x))
        return x

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` hidden states -> ``[R, V]`` float32 logits (whisper ties them to the token embedding)."""
        decoder = self.model.decoder
        x = decoder.ln(x)
        return (x @ decoder.token_embedding.weight.to(x.dtype).T).float()

    def _choose(
        self,
        logits: torch.Tensor,
        sampled: torch.Tensor,
        sums: torch.Tensor,
        windows: list[_Window],
        width: int,
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's next token, the row it continues (beams move between rows), and its new log-prob sum."""
        device = logits.device
        # log p = logit - logsumexp: topk of the logits is topk of the log-probabilities, without a pass to
        # normalise the whole vocabulary.
        norm = logits.logsumexp(dim=-1)  # [R]
        n_rows = logits.shape[0]
        tokens = torch.full((n_rows,), self.eot, dtype=torch.long, device=device)
        new_sums = sums.clone()
        source = list(range(n_rows))
        sample_rows = [s * width + g for s, w in enumerate(windows) if not w.beam for g in range(w.width)]
        if sample_rows:
            rows = torch.tensor(sample_rows, device=device)
            temps = torch.tensor([w.task.temperature for w in windows if not w.beam for _ in range(w.width)])
            picked = torch.multinomial((logits[rows] / temps.to(device)[:, None]).softmax(dim=-1), 1)[:, 0]
            ended = (
                sampled[rows, -1] == self.eot if step > 0 else torch.zeros_like(picked, dtype=torch.bool)
            )  # a finished sample stays finished: end-of-text again, scoring nothing
            gained = (logits[rows, picked] - norm[rows]).masked_fill(ended, 0.0)
            tokens[rows] = picked.masked_fill(ended, self.eot)
            new_sums[rows] = sums[rows] + gained
        if any(w.beam for w in windows):
            top, top_tok = logits.topk(width + 1, dim=-1)  # [R, G + 1]
            top_lp = top - norm[:, None]
            top_lp_l, top_tok_l, sums_l = top_lp.tolist(), top_tok.tolist(), sums.tolist()
            beam_tokens, beam_sums = tokens.tolist(), new_sums.tolist()
            for s, w in enumerate(windows):
                if w.beam:
                    self._beam_step(
                        w, s * width, step, top_lp_l, top_tok_l, sums_l, sampled, source, beam_tokens, beam_sums
                    )
            tokens = torch.tensor(beam_tokens, device=device)
            new_sums = torch.tensor(beam_sums, device=device, dtype=sums.dtype)
        return tokens, torch.tensor(source, device=device), new_sums

    def _beam_step(
        self,
        w: _Window,
        base: int,
        step: int,
        top_lp: list[list[float]],
        top_tok: list[list[int]],
        sums: list[float],
        sampled: torch.Tensor,
        source: list[int],
        tokens: list[int],
        new_sums: list[float],
    ) -> None:
        """One step of a window's beam search: its k best unfinished continuations take its rows."""
        k = w.task.search.beam_size
        # At the first step the k beams are one sequence: expand it once.
        beams = range(1) if step == 0 else range(k)
        candidates = [
            (sums[base + b] + top_lp[base + b][c], base + b, top_tok[base + b][c]) for b in beams for c in range(k + 1)
        ]
        candidates.sort(key=lambda c: -c[0])
        kept = 0
        for score, row, token in candidates:
            if token == self.eot:
                if len(w.finished) < w.max_candidates:
                    w.finished[tuple(sampled[row].tolist())] = score
                continue
            source[base + kept], tokens[base + kept], new_sums[base + kept] = row, token, score
            kept += 1
            if kept == k:
                break

    def _done(self, w: _Window, sampled: torch.Tensor) -> bool:
        if w.beam:
            return len(w.finished) >= w.max_candidates
        return bool((sampled[: w.width, -1] == self.eot).all())

    def _result(self, w: _Window, sampled: torch.Tensor, sums: torch.Tensor) -> WindowResult:
        """The window's winner: of its finished beams (topped up with its live ones), or of its samples."""
        rows, scores = sampled[: w.width].tolist(), sums[: w.width].tolist()
        candidates: dict[tuple[int, ...], float] = dict(w.finished)
        if w.beam:
            for i in sorted(range(w.width), key=lambda i: -scores[i]):
                if len(candidates) >= w.task.search.beam_size:
                    break
                candidates.setdefault(tuple(_until_eot(rows[i], self.eot)), scores[i])
        else:
            for i in range(w.width):
                candidates.setdefault(tuple(_until_eot(rows[i], self.eot)), scores[i])
        best = max(candidates, key=lambda c: candidates[c] / max(1, len(c)))
        score = candidates[best]
        return WindowResult(
            tokens=list(best),
            sum_logprob=score,
            avg_logprob=score / (len(best) + 1),
            no_speech_prob=w.no_speech_prob,
            temperature=w.task.temperature,
        )


def _until_eot(tokens: list[int], eot: int) -> list[int]:
    return tokens[: tokens.index(eot)] if eot in tokens else tokens


def _heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """``[B, T, D]`` -> ``[B, n_head, T, D / n_head]`` (a view)."""
    b, t, d = x.shape
    return x.view(b, t, n_head, d // n_head).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``[B, n_head, T, d]`` -> ``[B, T, n_head * d]``."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)
