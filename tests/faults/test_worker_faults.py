"""Workers killed -9 and frozen with SIGSTOP, for real, under load: no request hangs, none waits on a dead worker.

Each test runs its own nats-server, gateway and `ember worker` processes (``FaultStack``) on a tiny model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.fault_stack import FaultStack
from tests.helpers.tiny_checkpoint import write_tiny_llama


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("faults-model") / "tiny")


@pytest.fixture
def stack(tmp_path: Path, model_path: Path) -> Iterator[FaultStack]:
    with FaultStack(tmp_path, model_path=model_path) as s:
        yield s


def timed_chat(stack: FaultStack, max_tokens: int = 8) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = httpx.post(f"{stack.url}/v1/chat/completions", json=stack.chat_body(max_tokens), timeout=60)
    return r, time.monotonic() - started


def test_after_a_worker_is_killed_requests_go_to_the_survivor_and_readiness_follows(stack: FaultStack) -> None:
    stack.start_worker("w-a")
    stack.start_worker("w-b")
    stack.wait_workers(2)
    assert timed_chat(stack)[0].status_code == 200

    stack.kill("w-a")
    # Right after the kill, the gateway's registry still lists w-a: a job sent there finds no responders and goes
    # to w-b at once.
    for _ in range(6):
        r, took = timed_chat(stack)
        assert r.status_code == 200, r.text
        assert r.headers["x-ember-worker"] == "w-b"
        assert took < 2.0, took
    assert stack.ready() == 200

    stack.kill("w-b")
    killed = time.monotonic()
    while stack.ready() != 503:
        assert time.monotonic() - killed < 1.0, "readiness still 200 a second after the last worker died"
        time.sleep(0.05)
    r, took = timed_chat(stack)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_worker" and "retry-after" in r.headers
    assert took < 1.0, took


async def read_stream(client: httpx.AsyncClient, body: dict) -> tuple[str, list[dict], float]:
    """(worker, events, when it ended) of one streamed chat; an error event is kept as {"error": ...}."""
    events: list[dict] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        worker = r.headers["x-ember-worker"]
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                events.append({"done": True})
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return worker, events, time.monotonic()


def test_a_frozen_worker_fails_its_streams_cleanly_and_gets_no_new_requests(stack: FaultStack) -> None:
    stack.start_worker("w-a")
    stack.start_worker("w-b")
    stack.wait_workers(2)

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            streams = [
                asyncio.create_task(read_stream(client, stack.chat_body(400, stream=True, content=f"s{i}")))
                for i in range(6)
            ]
            await asyncio.sleep(0.5)
            stack.freeze("w-a")
            frozen = time.monotonic()
            # New requests meanwhile: none may wait on the frozen worker for long.
            fresh = []
            for _ in range(6):
                started = time.monotonic()
                r = await client.post("/v1/chat/completions", json=stack.chat_body(4))
                fresh.append((r, time.monotonic() - started))
            results = await asyncio.gather(*streams)
            stack.thaw("w-a")
            on_a = [events for worker, events, _ in results if worker == "w-a"]
            on_b = [events for worker, events, _ in results if worker == "w-b"]
            assert on_a and on_b, "the router should have spread six streams over two workers"
            for events in on_a:
                # An error event, then [DONE]: the client is told, not left waiting.
                assert "error" in events[-2] and events[-2]["error"]["code"] in ("worker_lost", "worker_stalled")
                assert events[-1] == {"done": True}
            for events in on_b:
                assert "error" not in json.dumps(events) and events[-1] == {"done": True}
            for worker, _, ended in results:
                if worker == "w-a":  # told within a few probe periods, not after a 30 s timeout
                    assert ended - frozen < 6.0, ended - frozen
            assert all(r.status_code == 200 for r, _ in fresh), [r.text for r, _ in fresh]
            assert all(r.headers["x-ember-worker"] == "w-b" for r, _ in fresh[1:])
            # At most one request tried the frozen worker first (then it is suspect): about two probe periods.
            assert max(took for _, took in fresh) < 4.0, [took for _, took in fresh]

    asyncio.run(scenario())
