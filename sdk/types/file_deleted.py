"""The result of deleting a file (``client.files.delete``)."""

from __future__ import annotations

from typing import Literal

from .._models import BaseModel

__all__ = ["FileDeleted"]


class FileDeleted(BaseModel):
    """What ``client.files.delete(id)`` returns: ``deleted`` is True once the file is gone."""

    id: str
    object: Literal["file"]
    deleted: bool
