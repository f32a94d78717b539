"""Uploaded files (``client.files``): the inputs and outputs of batches, and files for other endpoints."""

from __future__ import annotations

from typing import Literal, TypeAlias

from .._models import BaseModel
from .._pagination import CursorPage

__all__ = ["FileList", "FileObject", "FilePurpose"]

# What an upload is for; ``batch`` for a batch's JSONL input. The server writes ``batch_output`` files itself.
FilePurpose: TypeAlias = Literal["assistants", "batch", "fine-tune", "vision", "user_data", "evals"]


class FileObject(BaseModel):
    """A file held by the server; pass its ``id`` as a batch's ``input_file_id``, or download it with
    ``client.files.content(id)``."""

    id: str
    object: Literal["file"]
    # Its size.
    bytes: int
    # Unix seconds.
    created_at: int
    filename: str
    # One of ``FilePurpose``, or one the server sets on files it writes (``batch_output``): kept a plain str so
    # that a purpose this SDK does not know yet still parses.
    purpose: str
    # OpenAI deprecated these two (``uploaded``, ``processed`` or ``error``); servers still send them.
    status: Literal["uploaded", "processed", "error"] | None = None
    status_details: str | None = None
    # Unix seconds when the server will delete it; None: kept until deleted.
    expires_at: int | None = None


class FileList(CursorPage[FileObject]):
    """The result of ``client.files.list()``: one page of files; iterate it, or read ``data``."""
