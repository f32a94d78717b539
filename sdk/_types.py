"""Small types shared by the clients and the resource groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, TypeAlias

import httpx

# What a caller may pass as a timeout: seconds for every phase, an ``httpx.Timeout``, or None for no limit.
Timeout: TypeAlias = float | httpx.Timeout | None
Headers: TypeAlias = Mapping[str, str]
Body: TypeAlias = Mapping[str, Any]
# Multipart uploads: form field -> (filename, content, content type), each read once so a retry can resend it.
Files: TypeAlias = Mapping[str, tuple[str, bytes, str]]


class NotGiven:
    """The value of an argument the caller left out, where ``None`` is itself a meaningful value.

    ``timeout=None`` means "no timeout", so "use the client's timeout" needs its own marker.
    """

    def __bool__(self) -> Literal[False]:
        return False

    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven()
