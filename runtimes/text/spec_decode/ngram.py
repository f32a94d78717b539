"""Prompt lookup: draft what followed the last time the request's latest tokens occurred in its own text.

Code edits, summaries, extraction and quoting repeat long spans of the prompt; there the tokens that followed an
earlier occurrence of the last few tokens are a good guess at the next ones, and a free one (no model runs).
"""

from __future__ import annotations

from collections.abc import Sequence

from ember.runtimes.text.request import Request
from ember.runtimes.text.spec_decode.interface import Drafter

# The longest and shortest suffix looked up: the longest match found is used, as the most specific.
MAX_NGRAM = 3
MIN_NGRAM = 1


class NgramIndex:
    """Where each n-gram (MIN_NGRAM <= n <= MAX_NGRAM) of a growing sequence last ended.

    Updated incrementally: each token is indexed once, with one dictionary write per n, so a step costs O(new
    tokens) however long the sequence is. The sequence only ever grows (rejected drafts never enter it), so the
    index never has to forget anything.
    """

    def __init__(self, max_n: int = MAX_NGRAM, min_n: int = MIN_NGRAM) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram lengths {min_n}..{max_n} must satisfy 1 <= min <= max")
        self.max_n, self.min_n = max_n, min_n
        # _last[n - min_n][ngram] = the position of the n-gram's last token, its latest occurrence.
        self._last: list[dict[tuple[int, ...], int]] = [{} for _ in range(min_n, max_n + 1)]
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
            found = self._last[n - self.min_n].get(tuple(tokens[end - n :]))
            if found is not None:
                return list(tokens[found + 1 : found + 1 + k])
        return []

    def _extend(self, tokens: Sequence[int], upto: int) -> None:
        """Index the n-grams that end at positions [indexed, upto)."""
        for p in range(self._indexed, upto):
            for n in range(self.min_n, min(self.max_n, p + 1) + 1):
                self._last[n - self.min_n][tuple(tokens[p - n + 1 : p + 1])] = p
        self._indexed = max(self._indexed, upto)


class PromptLookupDrafter(Drafter):
    """Drafts from the request's own prompt and output (an ``NgramIndex`` per request, in ``req.draft.state``)."""

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
