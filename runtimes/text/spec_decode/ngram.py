"""Prompt lookup: draft what followed the last time the request's latest tokens occurred in its own text.

Code edits, summaries, extraction and quoting repeat long spans of the prompt; there the tokens that followed an
earlier occurrence of the last few tokens are a good guess at the next ones, and a free one (no model runs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ember.runtimes.text.request import Request
from ember.runtimes.text.spec_decode.interface import Drafter

# The longest and shortest suffix looked up: the longest match found is used, as the most specific.
MAX_NGRAM = 3
MIN_NGRAM = 1
# Bits per token id in an n-gram's key (ids up to ~1M; 3 of them fit an int64; a larger id would only make keys
# collide: a worse guess, never a wrong output, since drafts are verified), and how many new tokens are indexed
# with numpy rather than one by one.
_BITS = 20
_BULK = 64


class NgramIndex:
    """Where each n-gram (MIN_NGRAM <= n <= MAX_NGRAM) of a growing sequence last ended.

    Updated incrementally: each token is indexed once, with one dictionary write per n, so a step costs O(new
    tokens) however long the sequence is; a prompt is indexed in bulk with numpy (8k tokens in a few ms). The
    sequence only ever grows (rejected drafts never enter it), so the index never has to forget anything. An
    n-gram's key is its token ids packed into one int, _BITS each.
    """

    def __init__(self, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM) -> None:
        if not 1 <= min_n <= max_n or max_n * _BITS > 63:
            raise ValueError(f"n-gram lengths {min_n}..{max_n} must satisfy 1 <= min <= max <= {63 // _BITS}")
        self.max_n, self.min_n = max_n, min_n
        # _last[n - min_n][key of an n-gram] = the position of its last token, at its latest occurrence.
        self._last: list[dict[int, int]] = [{} for _ in range(min_n, max_n + 1)]
        # n-grams ending before this position are indexed.
        self._indexed = 0

    def propose(self, tokens: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the longest suffix of ``tokens`` that
        occurred before; [] when none did."""
        end = len(tokens)
        # Everything but the suffix's own last position: a match must be an earlier occurrence.
        self._extend(tokens, end - 1)
        if k <= 0:
            return []
        for n in range(min(self.max_n, end - 1), self.min_n - 1, -1):
            found = self._last[n - self.min_n].get(_key(tokens, end - n, end))
            if found is not None:
                return list(tokens[found + 1 : found + 1 + k])
        return []

    def _extend(self, tokens: Sequence[int], upto: int) -> None:
        """Index the n-grams that end at positions [indexed, upto)."""
        first = self._indexed
        if upto - first > _BULK:
            self._extend_bulk(tokens, first, upto)
        else:
            for p in range(first, upto):
                for n in range(self.min_n, min(self.max_n, p + 1) + 1):
                    self._last[n - self.min_n][_key(tokens, p - n + 1, p + 1)] = p
        self._indexed = max(self._indexed, upto)

    def _extend_bulk(self, tokens: Sequence[int], first: int, upto: int) -> None:
        base = max(0, first - self.max_n + 1)
        ids = np.asarray(tokens[base:upto], dtype=np.int64)  # ids[i] is the token at position base + i
        for n in range(self.min_n, self.max_n + 1):
            lo = max(first, n - 1)  # the first position an n-gram can end at
            if lo >= upto:
                continue
            keys = np.zeros(upto - lo, dtype=np.int64)
            for j in range(n):  # the n-gram ending at p holds positions p - n + 1 ... p
                keys = (keys << _BITS) | ids[lo - n + 1 + j - base : upto - n + 1 + j - base]
            # Later positions overwrite earlier ones: the latest occurrence stays.
            self._last[n - self.min_n].update(zip(keys.tolist(), range(lo, upto), strict=True))


def _key(tokens: Sequence[int], start: int, end: int) -> int:
    key = 0
    for t in tokens[start:end]:
        key = key << _BITS | t
    return key


class PromptLookupDrafter(Drafter):
    """Drafts from the request's own prompt and output (an ``NgramIndex`` per request, in ``req.draft.state``)."""

    name = "prompt_lookup"

    def __init__(self, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM) -> None:
        self.max_n, self.min_n = max_n, min_n

    def propose(self, reqs: Sequence[Request], limits: Sequence[int]) -> list[list[int]]:
        drafts = []
        for req, limit in zip(reqs, limits, strict=True):
            index = req.draft.state
            if not isinstance(index, NgramIndex):
                index = req.draft.state = NgramIndex(self.max_n, self.min_n)
            drafts.append(index.propose(req.token_ids, limit))
        return drafts
