"""Fixtures for the SDK's tests: the fake gateway (``fake_gateway.py``) and clients pointed at it.

``AsyncEmber`` reaches the app in-process through ``httpx.ASGITransport``; ``Ember`` over real loopback HTTP to
uvicorn running in a thread (ASGITransport is async-only, and it buffers a whole response, so closing a stream
early can only be seen over a socket).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

import ember
from ember import _retries
from tests.sdk.fake_gateway import ServerState, make_app, serve_in_thread


@pytest.fixture(scope="session")
def server_state() -> ServerState:
    return ServerState()


@pytest.fixture(autouse=True)
def _reset_server(server_state: ServerState) -> None:
    server_state.reset()


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without Retry-After waits ~1 ms, so retry tests stay fast; Retry-After itself is unchanged."""
    monkeypatch.setattr(_retries, "INITIAL_RETRY_DELAY", 0.001)
    monkeypatch.setattr(_retries, "MAX_RETRY_DELAY", 0.004)


@pytest.fixture(scope="session")
def live_url(server_state: ServerState) -> Iterator[str]:
    """The fake app on uvicorn, in a thread, on a free loopback port; yields its base URL."""
    with serve_in_thread(make_app(server_state)) as url:
        yield url


@pytest.fixture
def client(live_url: str) -> Iterator[ember.Ember]:
    with ember.Ember(base_url=live_url, api_key="sk-test") as client:
        yield client


@pytest.fixture
async def aclient(server_state: ServerState) -> AsyncIterator[ember.AsyncEmber]:
    transport = httpx.ASGITransport(app=make_app(server_state))
    async with httpx.AsyncClient(transport=transport) as http_client:
        async with ember.AsyncEmber(base_url="http://testserver/v1", api_key="sk-test", http_client=http_client) as c:
            yield c
