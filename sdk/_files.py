"""What an upload's ``file=`` (or ``image=``) accepts, and reading it into one multipart part.

The same forms as openai-python: a path, the bytes, an open binary file, or a tuple (filename, bytes or file
[, content type]). Each is read whole, once, so that a retried request sends the same bytes again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, TypeAlias

__all__ = ["FileTypes", "file_part"]

FileTypes: TypeAlias = (
    str | os.PathLike[str] | bytes | IO[bytes] | tuple[str, bytes | IO[bytes]] | tuple[str, bytes | IO[bytes], str]
)
_OCTET_STREAM = "application/octet-stream"


def file_part(file: FileTypes, default_name: str) -> tuple[str, bytes, str]:
    """(filename, content, content type) of ``file``; ``default_name`` names bytes and nameless file objects."""
    if isinstance(file, tuple):
        name, content = file[0], file[1]
        kind = file[2] if len(file) == 3 else _OCTET_STREAM
        data = content if isinstance(content, bytes) else content.read()
        return name, data, kind
    if isinstance(file, bytes):
        return default_name, file, _OCTET_STREAM
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        return path.name, path.read_bytes(), _OCTET_STREAM
    name = os.path.basename(str(getattr(file, "name", default_name)))
    return name, file.read(), _OCTET_STREAM
