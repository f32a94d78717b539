"""Constrained decoding: grammars compiled with llguidance into matchers whose token masks the engine applies.

Call cycle: the worker compiles a job's grammar (``GrammarCompiler.matcher``, off the engine thread: it can take
milliseconds) and hands the matcher to the engine with the request. Each step the engine asks ``TokenMasks`` for
the allowed tokens of every constrained row, masks those rows' logits to -inf (the other rows are untouched,
so they cost nothing), samples the whole batch at once, then feeds each sampled token back to its matcher.
A matcher that has reached the end of its grammar allows only EOS, so the sequence stops there.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import llguidance
import torch

from ember.bus.messages import OutputConstraint
from ember.runtimes.text.tokenizer import TextTokenizer

# JSON the way the tool formats and most chat models write it, and no runs of free whitespace: a weak model
# (or a random one) could otherwise fill max_tokens with newlines inside an object.
JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """A schema, regex or grammar that cannot be compiled (the job is refused with a 400)."""


def with_style(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with Ember's JSON layout (llguidance reads it from ``x-guidance``)."""
    return {**schema, "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}}


def response_grammar(constraint: OutputConstraint) -> str:
    """The llguidance grammar for a ``response_format``; raises GrammarError."""
    try:
        if constraint.type == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(with_style({"type": "object"}))
        if constraint.type == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(with_style(constraint.json_schema or {}))
        if constraint.type == "regex":
            return llguidance.LLMatcher.grammar_from_regex(constraint.pattern or "")
        return llguidance.grammar_from("grammar", constraint.grammar or "")
    except ValueError as e:
        raise GrammarError(str(e)) from None


def json_rule(schema: dict[str, Any]) -> str:
    """A Lark rule body that matches JSON valid against ``schema`` (embedded in larger grammars)."""
    return f"%json {json.dumps(with_style(schema))}"


class GrammarCompiler:
    """Compiles grammars into matchers for one model's vocabulary; thread-safe."""

    def __init__(self, tokenizer: TextTokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._lock = threading.Lock()
        self._ll: llguidance.LLTokenizer | None = None

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary (built once: ~0.2 s for a 49k vocabulary)."""
        with self._lock:
            if self._ll is None:
                eos = sorted(self._tokenizer.eos_token_ids)
                self._ll = llguidance.LLTokenizer(
                    self._tokenizer.to_json(), n_vocab=self._vocab_size, eos_token=eos or None
                )
            return self._ll

    def special(self, texts: Sequence[str]) -> frozenset[str]:
        """Those of ``texts`` that are one special token of the vocabulary: a grammar must name them as ``<text>``,
        since llguidance never matches a special token against text (Qwen's added ``<tool_call>`` is one)."""
        found = set()
        for text in texts:
            ids = self._tokenizer.encode(text, add_special_tokens=False) if text else []
            if len(ids) == 1 and self.ll_tokenizer.is_special_token(ids[0]):
                found.add(text)
        return frozenset(found)

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        """A fresh matcher at the start of ``grammar``; raises GrammarError for an invalid one."""
        tokenizer = self.ll_tokenizer
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
        if is_error:
            raise GrammarError(_first_line(messages[0]))
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(_first_line(matcher.get_error()))
        return matcher


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "invalid grammar"


class TokenMasks:
    """Applies the matchers' token masks to the rows of a batch of logits (on the engine thread)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32
        self._shifts = torch.arange(32, dtype=torch.int32)  # [32]
        # Masks of more than one row are computed in parallel by llguidance's own thread pool.
        self._executor: llguidance.LLExecutor | None = None

    @torch.inference_mode()  # the runner's logits are inference tensors: only updated in place in this mode
    def apply(self, logits: torch.Tensor, matchers: Sequence[llguidance.LLMatcher | None]) -> None:
        """Set the logits of tokens each row's matcher forbids to -inf, in place; rows without one are untouched."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return
        bitmask = torch.empty(len(rows), self._words, dtype=torch.int32)  # [R, W], bit j of word w: token 32w+j
        pairs: list[tuple[llguidance.LLMatcher, int]] = []
        for k, i in enumerate(rows):
            m = matchers[i]
            assert m is not None  # rows holds the constrained rows only
            pairs.append((m, k))
        if len(pairs) == 1:
            pairs[0][0].unsafe_compute_mask_ptr(bitmask.data_ptr(), self._words * 4)
        else:
            if self._executor is None:
                self._executor = llguidance.LLExecutor()
            self._executor.unsafe_compute_mask_ptr(pairs, bitmask.data_ptr(), self._words * 4, len(rows))
        allowed = ((bitmask.unsqueeze(-1) >> self._shifts) & 1).bool().flatten(1)  # [R, W * 32]
        vocab = logits.shape[-1]
        if allowed.shape[1] < vocab:  # the model's head may be wider than the tokenizer: never pick those
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
        allowed = allowed[:, :vocab].to(logits.device)
        index = torch.tensor(rows, device=logits.device)
        logits.index_copy_(0, index, logits.index_select(0, index).masked_fill_(~allowed, float("-inf")))
