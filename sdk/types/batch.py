"""Batches (``client.batches``): many requests from one uploaded JSONL file, run within a completion window.

A batch's ``status`` moves ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed``; it may end
``failed`` (its input did not validate: see ``errors``), ``expired`` (the window passed) or ``cancelled``
(after ``cancelling``). Finished requests' results are in ``output_file_id``, failed ones' in ``error_file_id``;
an expired or cancelled batch still has the results of the requests it finished.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from .._models import BaseModel
from .._pagination import CursorPage

__all__ = ["Batch", "BatchError", "BatchErrors", "BatchList", "BatchRequestCounts", "BatchStatus"]

BatchStatus: TypeAlias = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
# The statuses a batch never leaves.
FINISHED_STATUSES: frozenset[BatchStatus] = frozenset({"failed", "completed", "expired", "cancelled"})


class BatchError(BaseModel):
    """Why the input file failed validation: a ``message``, with the ``line`` of the file where it applies."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    # 1-based line of the input file, or None for the file as a whole.
    line: int | None = None


class BatchErrors(BaseModel):
    object: str | None = None
    data: list[BatchError] | None = None


class BatchRequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class Batch(BaseModel):
    """A batch; poll ``client.batches.retrieve(id)`` until ``done``, then download ``output_file_id``."""

    id: str
    object: Literal["batch"]
    # The API path every request in the input file goes to, e.g. ``/v1/chat/completions``.
    endpoint: str
    # Validation errors of the input file (a ``failed`` batch); None otherwise.
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    # Unix seconds of each step; None for a step not (yet) taken.
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts | None = None
    metadata: dict[str, str] | None = None

    @property
    def done(self) -> bool:
        """Whether the batch has reached a status it never leaves (completed, failed, expired, cancelled)."""
        return self.status in FINISHED_STATUSES


class BatchList(CursorPage[Batch]):
    """The result of ``client.batches.list()``: one page of batches, newest first; iterate it, or read ``data``."""
