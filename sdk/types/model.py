"""The models a server offers (``client.models``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from .._models import BaseModel

__all__ = ["Model", "ModelList"]


class Model(BaseModel):
    """A model the server can run; pass its ``id`` as ``model=``."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    """The result of ``client.models.list()``: iterate it, or read ``data``."""

    object: Literal["list"]
    data: list[Model]

    # NOTE: replaces pydantic's iteration over (field, value) pairs, as openai-python's pages do, so that
    # `for model in client.models.list()` works.
    def __iter__(self) -> Iterator[Model]:  # type: ignore[override]
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
