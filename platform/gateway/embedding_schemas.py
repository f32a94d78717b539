"""The body of ``/v1/embeddings`` and its response, in OpenAI's shape.

``input`` is a string, a list of strings, a list of token ids (one input) or a list of such lists; token ids are
the model's own tokenizer's (OpenAI's are tiktoken's, for its own models). Unknown fields are ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ember.gateway.errors import InvalidRequest

# OpenAI's limit on inputs per request.
MAX_INPUTS = 2048


class EmbeddingsBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    # Strict types: a JSON true is not the token id 1, and 3 is not the text "3".
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = None

    def inputs(self) -> tuple[list[str] | None, list[list[int]] | None]:
        """(texts, token-id lists), one of them None; raises InvalidRequest naming the first bad input."""
        raw = self.input
        if isinstance(raw, str):
            if not raw:
                raise InvalidRequest("input is an empty string: give the text to embed", param="input")
            return [raw], None
        if not raw:
            raise InvalidRequest("input is an empty list: give at least one input", param="input")
        if len(raw) > MAX_INPUTS:
            raise InvalidRequest(f"input holds {len(raw)} inputs; at most {MAX_INPUTS} per request", param="input")
        if isinstance(raw[0], int):
            return None, [list(raw)]
        if isinstance(raw[0], str):
            texts: list[str] = raw
            empty = next((i for i, t in enumerate(texts) if not t), None)
            if empty is not None:
                raise InvalidRequest(f"input[{empty}] is an empty string", param=f"input[{empty}]")
            return texts, None
        lists: list[list[int]] = raw
        empty = next((i for i, ids in enumerate(lists) if not ids), None)
        if empty is not None:
            raise InvalidRequest(f"input[{empty}] is an empty list of token ids", param=f"input[{empty}]")
        return None, lists


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    # A list of floats, or (encoding_format "base64") the float32 little-endian bytes in base64.
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage
