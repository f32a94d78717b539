"""Whisper's logit rules (suppress blank and special tokens, timestamp pairing), for a whole batch of rows at once.

The rules are whisper's own (``SuppressBlank``, ``SuppressTokens`` with ``suppress_tokens="-1"`` and
``ApplyTimestampRules`` in ``whisper.decoding``): the same tokens are allowed at every step. whisper applies the
timestamp rules row by row in Python, reading each row's tokens back as a list; here each rule is one masked fill
over the batch, so forty beams cost what one does.
"""

from __future__ import annotations

import torch
from whisper.tokenizer import Tokenizer

# whisper's max_initial_timestamp (1.0 s) in timestamp tokens of 0.02 s: the first timestamp is at most this one.
MAX_INITIAL_TIMESTAMP_INDEX = 50


def suppressed_tokens(tokenizer: Tokenizer) -> list[int]:
    """whisper's ``suppress_tokens="-1"``: non-speech symbols, and the special tokens that only a prompt may hold."""
    ids = set(tokenizer.non_speech_tokens)
    ids.update((tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm))
    for special in (tokenizer.no_speech, tokenizer.no_timestamps):  # no-speech is read at sot; timestamps are on
        if special is not None:
            ids.add(special)
    return sorted(ids)


class LogitRules:
    """The tokens a row may sample next, given the tokens it sampled so far (all rows sampled as many)."""

    def __init__(self, tokenizer: Tokenizer, device: torch.device) -> None:
        self.eot = tokenizer.eot
        self.timestamp_begin = tokenizer.timestamp_begin
        self.suppress = torch.tensor(suppressed_tokens(tokenizer), device=device)
        # At the first sampled position a blank and end-of-text are never allowed (SuppressBlank).
        self.blank = torch.tensor([*tokenizer.encode(" "), tokenizer.eot], device=device)

    def apply(self, logits: torch.Tensor, sampled: torch.Tensor) -> None:
        """Mask ``logits`` ``[R, V]`` in place; ``sampled`` ``[R, n]`` holds each row's tokens after its prefix."""
        tb, neg = self.timestamp_begin, float("-inf")
        stamps = logits[:, tb:]  # a view: masking it masks the logits
        logits[:, self.suppress] = neg
        n = sampled.shape[1]
        if n == 0:
            # A window opens with a timestamp, no later than 1 s in.
            logits[:, self.blank] = neg
            logits[:, :tb] = neg
            stamps[:, MAX_INITIAL_TIMESTAMP_INDEX + 1 :] = neg
        else:
            last_stamp = sampled[:, -1] >= tb
            # With fewer than two tokens the one before the last counts as a timestamp (whisper's rule).
            before_stamp = sampled[:, -2] >= tb if n >= 2 else torch.ones_like(last_stamp)
            # Timestamps come in pairs: after a pair, text; after a lone one (a segment's end), its partner or eot.
            stamps.masked_fill_((last_stamp & before_stamp)[:, None], neg)
            _fill_rows(logits[:, : self.eot], last_stamp & ~before_stamp)
            # Timestamps never go back, and a segment never has zero length: a closing stamp may repeat the
            # opening one only as its partner. Stamps never decrease, so the latest one is the largest.
            latest = torch.where(sampled >= tb, sampled - tb, -1).amax(dim=1)
            floor = torch.where(last_stamp & ~before_stamp, latest, latest + 1).clamp(min=0)
            columns = torch.arange(stamps.shape[1], device=logits.device)
            stamps.masked_fill_(columns[None, :] < floor[:, None], neg)
        # When all timestamps together are likelier than any one text token, the row samples a timestamp. (Compared
        # as logits: the softmax's normaliser is the same on both sides.)
        stamp_mass = logits[:, tb:].logsumexp(dim=-1)
        best_text = logits[:, :tb].amax(dim=-1)
        _fill_rows(logits[:, :tb], stamp_mass > best_text)


def _fill_rows(view: torch.Tensor, rows: torch.Tensor) -> None:
    """-inf into the chosen rows of ``view`` (a slice of the vocabulary): only those rows are written, where a
    broadcast mask would pass over every row of a 50k-wide matrix."""
    index = rows.nonzero().squeeze(1)
    if index.numel():
        view[index] = float("-inf")
