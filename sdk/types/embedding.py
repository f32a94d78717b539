"""Embeddings (``client.embeddings``)."""

from __future__ import annotations

import array
import base64
import sys
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import field_validator

from .._models import BaseModel

__all__ = ["CreateEmbeddingResponse", "Embedding", "EmbeddingUsage"]


class Embedding(BaseModel):
    """One input's vector, at ``index`` in the request's ``input``."""

    object: Literal["embedding"]
    index: int
    # Floats, whichever encoding_format the server answered in (base64 is decoded on arrival).
    embedding: list[float]

    @field_validator("embedding", mode="before")
    @classmethod
    def _decode_base64(cls, value: Any) -> Any:
        if isinstance(value, str):  # encoding_format="base64": float32, little-endian
            values = array.array("f", base64.b64decode(value))
            if sys.byteorder == "big":
                values.byteswap()
            return values.tolist()
        return value


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class CreateEmbeddingResponse(BaseModel):
    """The result of ``client.embeddings.create()``: one ``Embedding`` per input, in input order."""

    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage

    def __iter__(self) -> Iterator[Embedding]:  # type: ignore[override]
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
