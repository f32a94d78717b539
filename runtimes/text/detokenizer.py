"""Token ids to streamed text, one token at a time, with OpenAI's stop strings.

Two stages, each holding text back for its own reason::

    token ─ decode a short window, diff ─ new characters ─ stop-string matcher ─ text safe to emit
             (held: a partial UTF-8                          (held: a tail that may still become
              character, or nothing visible yet)              a stop string)

Decoding re-decodes only a window: the tokens since the last emission plus the ones before it as context (vLLM's
prefix/read offsets), because a token's text can depend on its neighbours (a SentencePiece token's leading space is
dropped at the start of a decode) and byte-level tokens can hold part of a character. Each step therefore costs
O(window), never O(output).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Prompt tokens kept as context for the first generated token (vLLM uses the same number).
_PROMPT_CONTEXT = 5
# What a decoder puts in place of bytes that are not (yet) a whole UTF-8 character.
_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """What the detokenizer needs from a tokenizer; ``tokenizers.Tokenizer`` and our ``TextTokenizer`` both fit."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns one sequence's generated tokens into text as they arrive, cutting at the first stop string."""

    def __init__(
        self, tokenizer: Decoder, prompt_ids: Sequence[int], stop: Sequence[str] = (), skip_special_tokens: bool = True
    ) -> None:
        """Start a sequence's detokenizer.

        Args:
            tokenizer: Anything with ``decode(ids, skip_special_tokens=...) -> str``.
            prompt_ids: The prompt; its last few tokens give the first generated token its context (leading space).
            stop: Stop strings. Generation stops at the first one to complete (of several completed by the same
                token, the one that starts first); it and everything after it are not emitted. Empty strings are
                ignored.
            skip_special_tokens: Passed to every ``decode``.
        """
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._stops = _StopMatcher(stop)
        # The decode window: _window[:_read] were already decoded to text (context), _window[_read:] not yet.
        self._window = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._read = len(self._window)
        self._last = self._decode(self._window)  # the latest decode(_window)
        self._context_len = len(self._last)  # len(decode(_window[:_read]))
        # Characters of decode(_window) past the context that already went to the stop matcher: text before a
        # partial character at the end of the window.
        self._passed = 0
        self._pieces: list[str] = []
        self._text: str | None = ""
        self.stopped = False
        # The stop string that matched, once ``stopped``.
        self.stop_str: str | None = None

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if self._text is None:
            self._text = "".join(self._pieces)
        return self._text

    def add(self, token_id: int) -> str:
        """Take the next generated token; return the text that is now safe to emit (may be "")."""
        if self.stopped:
            return ""
        self._window.append(token_id)
        return self._emit(self._stops.feed(self._decode_new(final=False)))

    def flush(self) -> str:
        """At the end of generation: return the held-back text (nothing once a stop string matched)."""
        if self.stopped:
            return ""
        fresh = self._stops.feed(self._decode_new(final=True))
        return self._emit(fresh + ("" if self._stops.stopped else self._stops.release()))

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _skipped(self, token_id: int) -> bool:
        """Whether ``token_id`` is a special token that decoding drops."""
        if not self._skip_special or self._decode([token_id]):
            return False
        return self._tokenizer.decode([token_id], skip_special_tokens=False) != ""

    def _decode_new(self, final: bool) -> str:
        """Characters the window now adds past what was already passed on; at ``final``, partial ones too."""
        text = self._decode(self._window)
        if not final and text == self._last and self._skipped(self._window[-1]):
            # A skipped special token changes nothing, now or later (it is dropped before the decoder runs): forget
            # it, so that a run of them (ignore_eos) does not grow the window. Other tokens that add nothing yet
            # must stay: a partial byte, or SentencePiece's lone "▁" whose space shows once a word follows.
            self._window.pop()
            return ""
        self._last = text
        start = self._context_len + self._passed
        if final or (len(text) > self._context_len and not text.endswith(_REPLACEMENT)):
            # The window ends on whole characters: slide it so that the new tokens become the next context.
            del self._window[: self._read]
            self._read = len(self._window)
            self._last = self._decode(self._window)
            self._context_len = len(self._last)
            self._passed = 0
            return text[start:]
        # A partial character (or no visible text) at the end: pass on only what precedes it, keep the window.
        settled = len(text.rstrip(_REPLACEMENT))
        if settled <= start:
            return ""
        self._passed = settled - self._context_len
        return text[start:settled]

    def _emit(self, text: str) -> str:
        if self._stops.stopped:
            self.stopped = True
            self.stop_str = self._stops.matched
        if text:
            self._pieces.append(text)
            self._text = None
        return text


class _StopMatcher:
    """Finds the first stop string in a stream of text, holding back any tail that could still start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        # Text received but not yet released; always shorter than the longest stop string.
        self._held = ""
        self.stopped = False
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """Take more text; return the part of it (and of what was held) that can no longer be part of a stop."""
        if not text or self.stopped:
            return ""
        buffer = self._held + text
        if not self._stops:
            return buffer
        # The held text cannot contain a whole stop string, so any match here ends in the new text.
        first = min(((i, s) for s in self._stops if (i := buffer.find(s)) >= 0), default=None)
        if first is not None:
            self.stopped, self.matched, self._held = True, first[1], ""
            return buffer[: first[0]]
        hold = max(_stop_prefix_len(buffer, s) for s in self._stops)
        self._held = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def release(self) -> str:
        """Give up what is held: the stream ended without it becoming a stop string."""
        held, self._held = self._held, ""
        return held


def _stop_prefix_len(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    # Only positions holding the stop's first character can start a match.
    start = text.find(stop[0], max(0, len(text) - len(stop) + 1))
    while start >= 0:
        if stop.startswith(text[start:]):
            return len(text) - start
        start = text.find(stop[0], start + 1)
    return 0
