"""nats-server killed -9 and restarted under load: requests in flight finish whole, none hangs, usage is kept.

Replies a worker publishes while the gateway is cut off from NATS are lost on the way (core NATS is at most
once); the worker keeps them, and the gateway's probe after the reconnect gets them sent again.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from tests.helpers.fault_stack import FaultStack, usage_records

MAX_TOKENS = 400


def test_requests_in_flight_survive_a_nats_restart(tmp_path: Path) -> None:
    with FaultStack(tmp_path) as stack:
        stack.start_worker("w-a")
        stack.wait_workers(1)

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=stack.url, timeout=120) as client:

                async def plain(i: int) -> httpx.Response:
                    body = stack.chat_body(MAX_TOKENS, content=f"plain {i}")
                    return await client.post(
                        "/v1/chat/completions", json=body, headers={"x-request-id": f"rq-plain-{i}"}
                    )

                async def streamed(i: int) -> list[dict]:
                    body = {**stack.chat_body(MAX_TOKENS, stream=True, content=f"streamed {i}")}
                    body["stream_options"] = {"include_usage": True}
                    events = []
                    headers = {"x-request-id": f"rq-stream-{i}"}
                    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                        assert r.status_code == 200
                        async for line in r.aiter_lines():
                            if line.startswith("data: ") and line != "data: [DONE]":
                                events.append(json.loads(line[6:]))
                            elif line == "data: [DONE]":
                                events.append({"done": True})
                    return events

                tasks = [asyncio.create_task(plain(i)) for i in range(3)]
                tasks += [asyncio.create_task(streamed(i)) for i in range(2)]
                await asyncio.sleep(0.5)
                assert not all(t.done() for t in tasks), "everything ended before the restart: nothing was tested"
                # From this thread, not a worker thread: the server dies with the thread that started it
                # (PR_SET_PDEATHSIG), and asyncio's executor threads end with the loop.
                stack.kill_nats()
                await asyncio.sleep(2.0)
                stack.restart_nats()
                started = time.monotonic()
                done = await asyncio.wait_for(asyncio.gather(*tasks), 60)
                assert time.monotonic() - started < 30
                for r in done[:3]:
                    assert isinstance(r, httpx.Response)
                    assert r.status_code == 200, r.text
                    assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS
                for events in done[3:]:
                    assert isinstance(events, list)
                    assert events[-1] == {"done": True}
                    assert not any("error" in e for e in events), events[-3:]
                    usage = next(e["usage"] for e in events if e.get("usage"))
                    assert usage["completion_tokens"] == MAX_TOKENS
                # The gateway works on after the restart.
                again = await client.post("/v1/chat/completions", json=stack.chat_body(4))
                assert again.status_code == 200, again.text

        asyncio.run(scenario())
        ids = [f"rq-plain-{i}" for i in range(3)] + [f"rq-stream-{i}" for i in range(2)]
        deadline = time.monotonic() + 10
        while not all((found := asyncio.run(usage_records(stack.nats.url, ids))).values()):
            assert time.monotonic() < deadline, f"usage records missing: {[r for r, v in found.items() if not v]}"
            time.sleep(0.2)
        statuses = {rid: [rec.status for rec in recs] for rid, recs in found.items()}
        assert all(s == ["ok"] for s in statuses.values()), statuses
