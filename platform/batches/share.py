"""How many batch lines may run at once per model, across every gateway: at most ``batch.max_share`` of the
model's worker slots, so the rest stays free for interactive requests.

Each gateway's runner counts its own lines in flight per model and announces the counts every second on
``ember.v1.batches.load``; it admits a line only while its own count plus the others' latest stays under the
share. Announcements are a second old at worst, so two gateways starting lines in the same second may pass the
share briefly; by the next announcement each sees the other and holds back.

    share = BatchShare(capacity, gateway_id, nc); await share.start()
    await share.acquire("text:smollm2")  ...  share.release("text:smollm2")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ember.bus import subjects

log = logging.getLogger("ember.batches")

SUBJECT = f"{subjects.PREFIX}.batches.load"
ANNOUNCE_EVERY_S = 1.0
# A gateway not heard from for this long holds no lines (it stopped, or died: its lines died with it).
STALE_AFTER_S = 3 * ANNOUNCE_EVERY_S


@dataclass
class BatchShare:
    # Lines the share allows at once for a model key ("<modality>:<model>"), over all gateways.
    capacity: Callable[[str], int]
    gateway_id: str
    nc: NATS | None = None
    _running: dict[str, int] = field(default_factory=dict)
    # Other gateways' counts: gateway id -> (when heard, model key -> lines in flight).
    _peers: dict[str, tuple[float, dict[str, int]]] = field(default_factory=dict)
    _freed: asyncio.Event = field(default_factory=asyncio.Event)
    _sub: Subscription | None = None
    _announce: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.nc is None:
            return
        self._sub = await self.nc.subscribe(SUBJECT, cb=self._on_load)
        self._announce = asyncio.create_task(self._announce_forever())

    async def stop(self) -> None:
        if self._announce is not None:
            self._announce.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def elsewhere(self, key: str) -> int:
        """Lines of ``key`` that the other gateways run, as they last said."""
        now = time.monotonic()
        return sum(counts.get(key, 0) for heard, counts in self._peers.values() if now - heard < STALE_AFTER_S)

    async def acquire(self, key: str) -> None:
        # The slots follow the workers (one starting, one leaving) and the peers' counts come every second: look
        # again at least that often. A model with no worker yet has room for one line, which asks for a worker.
        while self._running.get(key, 0) + self.elsewhere(key) >= max(1, self.capacity(key)):
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), ANNOUNCE_EVERY_S)
        self._running[key] = self._running.get(key, 0) + 1

    def release(self, key: str) -> None:
        self._running[key] -= 1
        self._freed.set()

    async def _announce_forever(self) -> None:
        assert self.nc is not None
        while True:
            await asyncio.sleep(ANNOUNCE_EVERY_S)
            counts = {k: n for k, n in self._running.items() if n}
            if not counts and not self._running:
                continue  # nothing ran here lately: silence says "none"
            with contextlib.suppress(Exception):  # a reconnect: the next second will do
                await self.nc.publish(SUBJECT, json.dumps({"gateway": self.gateway_id, "running": counts}).encode())
            self._running = {k: n for k, n in self._running.items() if n}

    async def _on_load(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
            gateway, counts = str(data["gateway"]), {str(k): int(v) for k, v in data["running"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.debug("ignoring a bad batch load message: %s", e)
            return
        if gateway != self.gateway_id:
            self._peers[gateway] = (time.monotonic(), counts)
            self._freed.set()  # a peer's lines ended: look again
