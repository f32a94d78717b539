"""Fixtures for the CLI's tests: the SDK tests' fake gateway (``tests/sdk/fake_gateway.py``) over loopback, for
the commands that are API clients (``ember batch``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sdk.fake_gateway import ServerState, make_app, serve_in_thread


@pytest.fixture(scope="session")
def gateway_state() -> ServerState:
    return ServerState()


@pytest.fixture(scope="session")
def gateway_url(gateway_state: ServerState) -> Iterator[str]:
    """The fake gateway on uvicorn in a thread; its base URL (``http://127.0.0.1:N/v1``)."""
    with serve_in_thread(make_app(gateway_state)) as url:
        yield url


@pytest.fixture
def fake_gateway(gateway_state: ServerState, gateway_url: str) -> ServerState:
    """The fake gateway's state, emptied for this test; its URL is ``gateway_url``."""
    gateway_state.reset()
    return gateway_state
