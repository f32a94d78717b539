"""The call gate under tool_choice auto (ember.runtimes.text.call_gate): which tokens begin a call, the decision on
one row of logits at its threshold."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ember.runtimes.text.call_gate import CallGate, call_start_tokens
from ember.runtimes.text.loader import load_model


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    return load_model(tiny_model).tokenizer


def test_tokens_that_begin_a_call_or_its_wrapping_are_marked(tokenizer) -> None:
    mask = call_start_tokens(tokenizer, tokenizer.vocab_size)
    added = tokenizer.added_token_ids()
    assert tokenizer.token_to_id("<|im_end|>") in added
    for i in range(tokenizer.vocab_size):
        raw = tokenizer.token_bytes(i).lstrip(b" \t\r\n")
        assert bool(mask[i]) == (raw.startswith((b"{", b"[", b"<", b"`")) and i not in added), raw
    assert mask.any() and not mask.all()
    # A tag that is one token of the vocabulary is marked; the model's head may be wider than the tokenizer.
    [brace] = tokenizer.encode("{", add_special_tokens=False)
    wider = call_start_tokens(tokenizer, tokenizer.vocab_size + 8, ("{",))
    assert wider.shape == (tokenizer.vocab_size + 8,) and wider[brace] and not wider[tokenizer.vocab_size :].any()


def _row(probs: dict[int, float], vocab: int = 8) -> torch.Tensor:
    """Logits [vocab] whose softmax puts probs[i] on token i and spreads the rest over the others."""
    rest = (1.0 - sum(probs.values())) / (vocab - len(probs))
    return torch.tensor([math.log(probs.get(i, rest)) for i in range(vocab)])


STARTS = torch.tensor([True, True, False, False, False, False, False, False])


def test_the_gate_closes_below_the_threshold_and_only_on_the_call_tokens() -> None:
    gate = CallGate(STARTS, threshold=0.6)
    unsure = _row({0: 0.3, 1: 0.25, 2: 0.4})  # P(call) = 0.55
    assert gate.call_probability(unsure) == pytest.approx(0.55, abs=1e-5)
    before = unsure.clone()
    assert gate.apply(unsure) is False
    assert torch.isneginf(unsure[:2]).all() and torch.equal(unsure[2:], before[2:])

    sure = _row({0: 0.5, 1: 0.2, 2: 0.2})  # P(call) = 0.7: left as it is
    before = sure.clone()
    assert gate.apply(sure) is True and torch.equal(sure, before)

    off = CallGate(STARTS, threshold=0.0)
    nothing = _row({2: 0.99})
    assert off.apply(nothing) is True and torch.isfinite(nothing).all()
