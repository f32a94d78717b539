"""The batch share across gateways, over a real nats-server: two gateways' runners together hold no more lines
of a model than its share, once each has heard the other."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from ember.batches.share import BatchShare
from ember.bus.connection import connect

KEY = f"text:share-{uuid.uuid4().hex[:6]}"


async def test_two_gateways_share_one_models_batch_slots(nats_url: str) -> None:
    a_nc, b_nc = await connect(nats_url, name="gw-a"), await connect(nats_url, name="gw-b")
    a = BatchShare(lambda key: 3, "gw-a", a_nc)
    b = BatchShare(lambda key: 3, "gw-b", b_nc)
    await a.start()
    await b.start()
    try:
        for _ in range(3):
            await asyncio.wait_for(a.acquire(KEY), 1)
        await asyncio.sleep(1.5)  # a's count reaches b
        assert b.elsewhere(KEY) == 3
        waiting = asyncio.create_task(b.acquire(KEY))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # the share is a's
        a.release(KEY)
        await asyncio.wait_for(waiting, 3)  # a's next count frees a place for b
        assert b.elsewhere(KEY) == 2
        # a, in turn, waits for b's line to end.
        await asyncio.sleep(1.2)
        assert a.elsewhere(KEY) == 1
        more = asyncio.create_task(a.acquire(KEY))
        await asyncio.sleep(0.5)
        assert not more.done()
        more.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await more
    finally:
        await a.stop()
        await b.stop()
        await a_nc.close()
        await b_nc.close()
