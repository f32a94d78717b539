"""The result of ``client.completions.create()`` (plain text in, text out); streamed events have the same shape."""

from __future__ import annotations

from typing import Literal

from .._models import BaseModel
from .completion_usage import CompletionUsage

__all__ = ["Completion", "CompletionChoice", "Logprobs"]


class Logprobs(BaseModel):
    """The legacy completions logprobs: parallel lists, one entry per token."""

    tokens: list[str] | None = None
    token_logprobs: list[float] | None = None
    # Per token, the ``logprobs`` most likely tokens and their log probabilities.
    top_logprobs: list[dict[str, float]] | None = None
    # Character offset of each token in the returned text (which includes the prompt with ``echo``).
    text_offset: list[int] | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    # None in every streamed event but a choice's last.
    finish_reason: Literal["stop", "length", "content_filter", "abort", "error"] | None = None
    logprobs: Logprobs | None = None


class Completion(BaseModel):
    """A text completion: ``choices[0].text`` is the generated text."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
