"""``CursorPage``: one page of a list the server hands out in pieces (``GET /files``, ``GET /batches``).

OpenAI's list endpoints answer ``{"object": "list", "data": [...], "first_id", "last_id", "has_more"}``; the
next page is the same call with ``after=<last_id>``. A page iterates its own items only: to walk every page,
loop while ``has_more``, passing ``after=page.last_id`` (``next_after`` says what to pass, or None at the end).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Literal, TypeVar

from ._models import BaseModel

__all__ = ["CursorPage"]

ItemT = TypeVar("ItemT", bound=BaseModel)


class CursorPage(BaseModel, Generic[ItemT]):
    """One page of results: iterate it, or read ``data``."""

    object: Literal["list"]
    data: list[ItemT]
    # The ids of the page's first and last items; None on an empty page (and from servers that leave them out).
    first_id: str | None = None
    last_id: str | None = None
    # Whether the server holds more items after this page.
    has_more: bool = False

    @property
    def next_after(self) -> str | None:
        """The ``after=`` that fetches the next page, or None when this is the last one."""
        if not self.has_more or not self.data:
            return None
        # NOTE: the last item's own id, for servers that send has_more without last_id.
        return self.last_id or getattr(self.data[-1], "id", None)

    # NOTE: replaces pydantic's iteration over (field, value) pairs, as ModelList does.
    def __iter__(self) -> Iterator[ItemT]:  # type: ignore[override]
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)
