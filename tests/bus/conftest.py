"""Fixtures the bus tests share."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def model() -> str:
    """A model id of the test's own, so its workers share no queue with another test's."""
    return f"spell-{uuid.uuid4().hex[:8]}"
