"""Log probabilities of chat completion tokens (``logprobs=True``, ``top_logprobs=k``)."""

from __future__ import annotations

from .._models import BaseModel

__all__ = ["ChatCompletionTokenLogprob", "ChoiceLogprobs", "TopLogprob"]


class TopLogprob(BaseModel):
    """One of the most likely tokens at a position."""

    token: str
    # The token's UTF-8 bytes; a token can be part of a multi-byte character, so ``token`` alone may not decode.
    bytes: list[int] | None = None
    logprob: float


class ChatCompletionTokenLogprob(BaseModel):
    """The chosen token at one position, and the ``top_logprobs`` most likely tokens there."""

    token: str
    bytes: list[int] | None = None
    logprob: float
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """Log probabilities for one choice: one entry per generated token."""

    content: list[ChatCompletionTokenLogprob] | None = None
    refusal: list[ChatCompletionTokenLogprob] | None = None
