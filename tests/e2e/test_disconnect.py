"""A client that goes away, mid-stream or waiting for a whole response, makes the gateway stop the job."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import httpx
import nats

from ember.bus import subjects
from ember.bus.messages import decode_cancel, decode_worker_info
from tests.conftest import TINY


async def test_disconnect_cancels_the_job_and_frees_the_worker(tiny_worker: str, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    cancels: asyncio.Queue[str] = asyncio.Queue()
    loads: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    async def on_cancel(msg) -> None:  # type: ignore[no-untyped-def]
        await cancels.put(decode_cancel(msg.data).request_id)

    async def on_announce(msg) -> None:  # type: ignore[no-untyped-def]
        info = decode_worker_info(msg.data)
        await loads.put((info.worker_id, info.running))

    await nc.subscribe(f"{subjects.PREFIX}.worker.*.cancel", cb=on_cancel)
    await nc.subscribe(subjects.WORKERS_ANNOUNCE, cb=on_announce)
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": "go on forever"}],
        "max_tokens": 480,
        "ignore_eos": True,
        "stream": True,
    }
    try:
        async with httpx.AsyncClient(base_url=tiny_worker, timeout=30) as client:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                worker = r.headers["x-ember-worker"]
                request_id = r.headers["x-request-id"]
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        break  # hang up after the first event
        cancelled = await asyncio.wait_for(cancels.get(), 10)
        assert cancelled.startswith(request_id)

        # Ask for a fresh announcement until the worker reports nothing running.
        async def idle() -> None:
            while True:
                await nc.publish(subjects.WORKERS_DISCOVER, b"")
                wid, running = await loads.get()
                if wid == worker and running == 0:
                    return
                await asyncio.sleep(0.05)

        await asyncio.wait_for(idle(), 10)
    finally:
        await nc.close()


async def test_a_non_streamed_request_whose_client_hangs_up_is_cancelled(tiny_worker: str, nats_url: str) -> None:
    """Without a stream, the gateway only learns of the hang-up by watching the connection; it must still stop
    the job at once (and bill what was generated), not run it to the end."""
    nc = await nats.connect(nats_url)
    cancels: asyncio.Queue[str] = asyncio.Queue()

    async def on_cancel(msg) -> None:  # type: ignore[no-untyped-def]
        await cancels.put(decode_cancel(msg.data).request_id)

    await nc.subscribe(f"{subjects.PREFIX}.worker.*.cancel", cb=on_cancel)
    request_id = f"req-hangup-{uuid.uuid4().hex[:8]}"
    body = {
        "model": TINY,
        "messages": [{"role": "user", "content": "go on forever"}],
        "max_tokens": 480,
        "ignore_eos": True,
    }
    try:
        async with httpx.AsyncClient(base_url=tiny_worker, timeout=30) as client:
            post = asyncio.create_task(
                client.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
            )
            await asyncio.sleep(0.3)
            assert not post.done(), "the job ended before the client hung up: the test proves nothing"
            post.cancel()  # httpx closes the connection
            hung_up = asyncio.get_running_loop().time()
            with contextlib.suppress(asyncio.CancelledError):
                await post
        cancelled = await asyncio.wait_for(cancels.get(), 5)
        assert cancelled.startswith(request_id)
        assert asyncio.get_running_loop().time() - hung_up < 1.0
    finally:
        await nc.close()
