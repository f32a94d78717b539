"""Token counts for a request, the same for chat and text completions."""

from __future__ import annotations

from .._models import BaseModel

__all__ = ["CompletionTokensDetails", "CompletionUsage", "PromptTokensDetails"]


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int | None = None
    audio_tokens: int | None = None
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None


class PromptTokensDetails(BaseModel):
    # Prompt tokens whose KV cache was reused from an earlier request.
    cached_tokens: int | None = None
    audio_tokens: int | None = None


class CompletionUsage(BaseModel):
    """Tokens in the prompt and the generated text; ``total_tokens`` is their sum."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None
