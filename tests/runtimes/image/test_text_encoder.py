"""The pixel model's prompt encoder: real all-MiniLM-L6-v2 weights from their package."""

from __future__ import annotations

import pytest
import torch

from ember.runtimes.image.text_encoder import PromptEncoder

OTHERS = [f"a {c} square on the left" for c in ("blue", "green", "yellow", "purple", "orange", "black", "white")]


@pytest.fixture(scope="module")
def encoder() -> PromptEncoder:
    return PromptEncoder.from_package()


def uncached(encoder: PromptEncoder) -> PromptEncoder:
    return PromptEncoder(encoder.tokenizer, encoder.model, encoder.max_tokens, cache_size=0)


def test_a_prompt_is_encoded_the_same_whatever_its_batch_mates(encoder: PromptEncoder) -> None:
    # Eight prompts at once: enough rows for the encoder's matmuls to block their reductions another way.
    fresh = uncached(encoder)
    alone, alone_mask = fresh.encode(["a red circle"])
    mixed, mask = fresh.encode([*OTHERS[:3], "A Red Circle", *OTHERS[3:]])
    assert mixed.shape == (8, encoder.max_tokens, encoder.dim) and mixed.dtype == torch.float32
    assert torch.equal(mixed[3], alone[0]) and torch.equal(mask[3], alone_mask[0])
    # Padding carries nothing.
    assert int(alone_mask.sum()) < encoder.max_tokens and not alone[0, int(alone_mask.sum()) :].any()


def test_recent_prompts_are_kept_up_to_the_cache_size(encoder: PromptEncoder) -> None:
    small = PromptEncoder(encoder.tokenizer, encoder.model, encoder.max_tokens, cache_size=3)
    first, _ = small.encode(OTHERS[:5])
    again, _ = small.encode(OTHERS[:5])
    assert torch.equal(first, again)
    assert list(small._cache) == [p.lower() for p in OTHERS[2:5]]
    assert torch.equal(small.encode([OTHERS[4]])[0][0], uncached(encoder).encode([OTHERS[4]])[0][0])
