"""The parameters of ``client.completions.create()``.

No ``from __future__ import annotations``: see ``chat_completion_create_params``.
"""

from collections.abc import Mapping
from typing import Required, TypedDict

from .chat_completion_create_params import ChatCompletionStreamOptionsParam

__all__ = ["CompletionCreateParams"]


class CompletionCreateParams(TypedDict, total=False):
    """The body of ``POST /completions`` less ``stream``; see ``Completions.create`` for each field."""

    model: Required[str]
    # Text, a batch of texts, token ids, or a batch of token-id lists.
    prompt: Required[str | list[str] | list[int] | list[list[int]]]
    echo: bool | None
    logprobs: int | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    stop: str | list[str] | None
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    logit_bias: Mapping[str, int] | None
    n: int | None
    best_of: int | None
    suffix: str | None
    user: str
    stream_options: ChatCompletionStreamOptionsParam | None
