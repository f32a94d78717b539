"""Several gateway processes share one NATS: a key's limits hold across all of them, whatever their clocks say.

Each process (``gateway_proc.py``) has its own NATS connection and its own wall clock, some of them skewed by
half a minute. The overshoot is measured against GCRA's exact bound: a full bucket (the limit plus the burst)
plus the refill over the measured time the requests took, from the first sent to the last answered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ember.bus.connection import connect
from ember.limits.nats_kv import NatsRateLimiter
from ember.limits.tiers import Tier

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
RPM, BURST = 60, 0.1
CAPACITY = 66  # the limit plus the burst: 60 * (1 + 0.1)
TIER = {
    "requests_per_minute": RPM,
    "burst_fraction": BURST,
    "prompt_tokens_per_minute": None,
    "completion_tokens_per_minute": None,
    "images_per_minute": None,
    "audio_seconds_per_hour": None,
    "speech_characters_per_minute": None,
    "concurrent_requests": 2,
}
DURATION = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


@dataclass
class Run:
    per_process: list[list[dict[str, Any]]]
    span_s: float

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for rs in self.per_process for r in rs]

    @property
    def allowed(self) -> int:
        return sum(r["status"] == 200 for r in self.records)

    @property
    def bound(self) -> int:
        """GCRA's exact bound: a full bucket, plus one request per second of refill over the run."""
        return CAPACITY + int(self.span_s * RPM / 60)

    @property
    def overshoot(self) -> int:
        return max(0, self.allowed - self.bound)

    def report(self, label: str) -> str:
        return (
            f"{label}: {len(self.records)} requests from {len(self.per_process)} processes in about 1 s, the allowed "
            f"ones within {self.span_s:.3f}s; "
            f"allowed {self.allowed} (per process {[sum(r['status'] == 200 for r in rs) for rs in self.per_process]}), "
            f"limit + burst {CAPACITY}, exact bound with refill {self.bound}, overshoot {self.overshoot}"
        )


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "gateway_proc.py"),
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def hammer(
    nc: NATS, nats_url: str, *, skews: list[float], clock: str, total: int = 200, delays: list[float] | None = None
) -> Run:
    """``total`` admissions for one fresh key over about a second, split across one process per skew."""
    delays = delays or [0.0] * len(skews)
    bucket, run_id = f"limits_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex[:10]
    await NatsRateLimiter.open(nc, bucket=bucket)  # created once, before the processes race to
    ready: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe(f"test.ready.{run_id}", cb=ready.put)
    n = len(skews)
    counts = [total // n + (i < total % n) for i in range(n)]
    procs = [
        await _spawn(
            "hammer",
            *("--nats", nats_url, "--bucket", bucket, "--key", "k-shared", "--tier", json.dumps(TIER)),
            *("--count", str(counts[i]), "--index", str(i), "--processes", str(n)),
            *("--step-s", str(1.0 / counts[i]), "--delay-s", str(delays[i]), "--skew-s", str(skew), "--clock", clock),
            *("--ready", f"test.ready.{run_id}", "--go", f"test.go.{run_id}"),
        )
        for i, skew in enumerate(skews)
    ]
    try:
        for _ in procs:
            await asyncio.wait_for(ready.get(), 60)
        await nc.publish(f"test.go.{run_id}", b"")
        outputs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    finally:
        await sub.unsubscribe()
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    per_process = [[json.loads(line) for line in out.decode().splitlines() if line] for out, _ in outputs]
    records = [r for rs in per_process for r in rs]
    allowed = [r for r in records if r["status"] == 200]
    span = max(r["received"] for r in allowed) - min(r["sent"] for r in records)
    return Run(per_process, span)


async def test_three_gateways_with_skewed_clocks_never_overshoot_a_60_rpm_key(nats_url: str) -> None:
    nc = await connect(nats_url, name="limits-hammer")
    try:
        run = await hammer(nc, nats_url, skews=[0.0, 30.0, -30.0], clock="server")
    finally:
        await nc.close()
    print(run.report("server clock, wall clocks skewed 0 / +30 s / -30 s"))
    assert run.overshoot == 0, run.report("overshoot")
    assert run.allowed >= CAPACITY, run.report("undershoot: the bucket was not even used up")
    assert len(run.records) == 200

    for records in run.per_process:
        remaining = [int(r["headers"]["x-ratelimit-remaining-requests"]) for r in records]
        assert all(a >= b for a, b in itertools.pairwise(remaining)), remaining
        for r in records:
            h = r["headers"]
            assert h["x-ratelimit-limit-requests"] == "60"
            assert DURATION.match(h["x-ratelimit-reset-requests"]), h
            if r["status"] == 200:
                continue
            assert r["status"] == 429
            assert r["body"]["error"]["code"] == "rate_limit_exceeded"
            assert r["body"]["error"]["type"] == "requests"
            assert "Rate limit reached for requests per minute (RPM): limit 60" in r["body"]["error"]["message"]
            assert h["x-ratelimit-remaining-requests"] == "0"
            assert int(h["Retry-After"]) == 1  # one request frees up every second at 60 RPM


async def test_without_one_time_source_a_skewed_gateway_overshoots(nats_url: str) -> None:
    """The control: each process on its own wall clock. Two use up the bucket; a third, 30 s fast, joins late
    and sees 30 s more of refill than there was."""
    nc = await connect(nats_url, name="limits-hammer")
    try:
        run = await hammer(nc, nats_url, skews=[0.0, 0.0, 30.0], clock="wall", delays=[0.0, 0.0, 0.5])
    finally:
        await nc.close()
    print(run.report("wall clocks (control), skewed 0 / 0 / +30 s, the fast one 0.5 s late"))
    assert run.overshoot >= 20, run.report("the control did not overshoot")


async def test_three_gateways_never_overshoot_when_the_fast_one_comes_late(nats_url: str) -> None:
    """The control's schedule on the server's clock: no overshoot."""
    nc = await connect(nats_url, name="limits-hammer")
    try:
        run = await hammer(nc, nats_url, skews=[0.0, 0.0, 30.0], clock="server", delays=[0.0, 0.0, 0.5])
    finally:
        await nc.close()
    print(run.report("server clock, wall clocks skewed 0 / 0 / +30 s, the fast one 0.5 s late"))
    assert run.overshoot == 0 and run.allowed >= CAPACITY, run.report("overshoot")


async def test_a_crashed_gateways_slots_lapse_by_themselves(nats_url: str) -> None:
    ttl = 1.5
    nc = await connect(nats_url, name="limits-survivor")
    bucket = f"limits_{uuid.uuid4().hex[:10]}"
    limiter = await NatsRateLimiter.open(nc, bucket=bucket, lease_ttl_s=ttl)
    tier = Tier.model_validate(TIER)
    holder = await _spawn(
        "hold",
        *("--nats", nats_url, "--bucket", bucket, "--key", "k-crash", "--tier", json.dumps(TIER)),
        *("--count", "2", "--lease-ttl-s", str(ttl)),
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 60)
        assert line.strip() == b"held", (line, await holder.stderr.read() if holder.stderr else b"")
        # The holder renews its leases while it lives...
        await asyncio.sleep(ttl * 1.5)
        assert await limiter.acquire_slot("k-crash", tier) is None
        holder.kill()  # ...and crashes without releasing them.
        await holder.wait()
        killed = time.monotonic()
        assert await limiter.acquire_slot("k-crash", tier) is None
        lease = None
        while lease is None and time.monotonic() - killed < ttl + 2.0:
            await asyncio.sleep(0.05)
            lease = await limiter.acquire_slot("k-crash", tier)
        assert lease is not None, "a dead gateway's slots never came back"
        # The last renewal came before the kill, so the leases lapse at most one TTL after it.
        assert time.monotonic() - killed <= ttl + 0.5
        await limiter.release(lease)
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await limiter.close()
        await nc.close()
