"""Whether a reply under ``tool_choice: auto`` may begin with a call: decided on the model's own first-token odds.

A small model offered tools tends to call one of them for almost any question: Qwen2.5-Coder-1.5B called a tool
for 5 of 12 questions that none fits in benchmarks/tool_call_eval.py ("What is the capital of Australia?" ->
get_stock_quote). Its first token says how sure it is. Summed over the whole vocabulary, the probability it puts
on the tokens that begin a call (the call tag, ``{``) or the forms a small model wraps calls in (a code fence,
``<...>`` markup, ``[``) is high where a tool fits and low where none does. On the tuning set
(benchmarks/data/tool_gate_cases.py, measured by benchmarks/tool_gate_probe.py, with auto's guidance), the 1.5B
puts 0.43-0.99 on them for the 22 prompts a tool fits and 0.00-0.33 for 19 of the 20 that none fits (the 20th
asks for SQL: 0.83 on the code fence, and the grammar still lets it answer in a code block).

So under ``auto``, at the first generated token only, the gate sums the model's raw probability of those tokens
(before the grammar's mask, temperature or top-p: the model's belief, not the sampler's). Below the model's
``tool_call_threshold`` it forbids them for that token: the reply begins with words, and the grammar keeps it text
to the end. At or above it nothing changes, and the grammar lets the model call or write text as before. Calls a
client requires (``required``, a named function) never pass a gate.

The first token cannot tell every question apart: asked "What is the capital of Australia?" with a stock quote tool
among those offered, the 1.5B puts 0.50 on beginning a call, as much as on some calls that fit. What it writes next
tells more. Under the grammar a call must name an offered function, and the grammar's mask hides what the model
wanted to write instead. So, second, over the tokens of the first call's function name (from its key ``"name":`` to
the value's closing quote), the engine multiplies the raw probability the model puts on the tokens the grammar
allows (``NameWatch.confidence``: the model's own probability of naming an offered function, and this one). Where a
tool fits it is 0.99 or more (0.993 at the least on benchmarks/data/tool_gate_cases.py): the model wanted that very
name. Where none does it falls: "get_stock_quote" for the capital of Australia had 0.958 of the model's odds, a code
fence's call for "write a SQL query" 0.10. Below ``name_threshold`` the worker drops the
call before anything of it reaches the client and answers in text instead (TextJobHandler._answer), from the
prompt's cached KV. Only the name: the tokens before it are the call's layout, which the grammar fixes and the model
often wanted otherwise (in a code fence it would break the line after ``{``), whether a tool fits or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ember.runtimes.text.tokenizer import TextTokenizer

# What a call, or a small model's wrapping of one, begins with (after leading whitespace).
CALL_STARTS = (b"{", b"[", b"<", b"`")

# The reply tokens within which the first call's name is measured, at most: a call's opening (a code fence, the
# tag, `{"name": "`) and its function's name take far fewer.
CALL_NAME_TOKENS = 48

# The key whose string value is the call's function name, in every tool format's JSON.
NAME_KEY = b'"name":'


@dataclass
class NameWatch:
    """One reply's measurement of how sure the model was of its first call's function name (the module docstring):
    made by the engine when the reply's first token begins a call, fed every token up to the name's end."""

    confidence: float = 1.0
    # The reply's bytes so far, up to the end of the name.
    text: bytes = b""
    done: bool = False

    def measuring(self) -> bool:
        """Whether the next token is part of the name, or closes it."""
        return not self.done and NAME_KEY in self.text

    def add(self, token: bytes) -> None:
        """A token of the reply, as the model wrote it."""
        self.text += token
        at = self.text.find(NAME_KEY)
        self.done = at >= 0 and self.text.count(b'"', at + len(NAME_KEY)) >= 2


def call_start_tokens(tokenizer: TextTokenizer, vocab_size: int, tags: tuple[str, ...] = ()) -> torch.Tensor:
    """A bool [vocab_size] mask of the tokens that begin a call: ``CALL_STARTS`` and the format's tag tokens. Not
    the vocabulary's other added tokens: ``<|im_end|>`` begins no call, it ends a reply."""
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    added = tokenizer.added_token_ids()
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if i not in added and tokenizer.token_bytes(i).lstrip(b" \t\r\n").startswith(CALL_STARTS):
            mask[i] = True
    for tag in tags:
        ids = tokenizer.encode(tag, add_special_tokens=False) if tag else []
        if len(ids) == 1 and ids[0] < vocab_size:  # the tag is one (special) token: Qwen's <tool_call>
            mask[ids[0]] = True
    return mask


@dataclass(frozen=True)
class CallGate:
    """The first-token decision of one request: ``starts`` is shared by every request of a model."""

    starts: torch.Tensor  # bool [V]
    threshold: float
    # The call_confidence a call's name must reach for the call to stand (0: never checked).
    name_threshold: float = 0.0

    def call_probability(self, logits: torch.Tensor) -> float:
        """The probability the model puts on beginning a call, from one row of raw logits [V]."""
        vocab = min(logits.shape[-1], self.starts.shape[0])
        probs = torch.softmax(logits[:vocab].float(), dim=-1)
        return float(probs[self.starts[:vocab].to(logits.device)].sum())

    @torch.inference_mode()  # the runner's logits are inference tensors: only updated in place in this mode
    def apply(self, logits: torch.Tensor) -> bool:
        """Close the gate on one row of logits [V] in place when the model is not sure enough of a call; returns
        whether a call stays possible."""
        if self.threshold <= 0.0:
            return True
        if self.call_probability(logits) >= self.threshold:
            return True
        vocab = min(logits.shape[-1], self.starts.shape[0])
        logits[:vocab].masked_fill_(self.starts[:vocab].to(logits.device), float("-inf"))
        return False

    def begins_call(self, token: int) -> bool:
        """Whether a reply whose first token is ``token`` is a call (the grammar keeps it one from there)."""
        return 0 <= token < self.starts.shape[0] and bool(self.starts[token])
