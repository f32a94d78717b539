"""A stand-in gateway process for the multi-process limit tests: its own NATS connection and its own clock.

``hammer``: wait for "go" on NATS, then admit ``--count`` requests for one key spread evenly over
``--duration`` seconds, each in its own task (as a gateway serves concurrent requests), and print one JSON
line per decision, in the order they completed.
``hold``: take ``--count`` concurrency slots, print "held", and wait to be killed (a gateway that crashes).

``--skew-s`` moves this process's wall clock (time.time, time.time_ns); ``--clock wall`` makes the limiter
use that wall clock instead of the NATS server's, to show what a skewed gateway would do without one source.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


class WallClock:
    """The local wall clock: what a limiter without a single time source would use."""

    async def now_ns(self) -> int:
        return time.time_ns()


async def main(args: argparse.Namespace) -> None:
    from ember.bus.connection import connect
    from ember.limits.headers import RateLimitExceeded, rate_limit_headers
    from ember.limits.interface import Cost
    from ember.limits.nats_kv import NatsRateLimiter
    from ember.limits.tiers import Tier

    tier = Tier.model_validate(json.loads(args.tier))
    nc = await connect(args.nats, name=f"gateway-{args.index}")
    limiter = await NatsRateLimiter.open(
        nc, bucket=args.bucket, lease_ttl_s=args.lease_ttl_s, clock=WallClock() if args.clock == "wall" else None
    )
    await limiter.clock.now_ns()  # the first sync is not part of the measurement

    if args.mode == "hold":
        for _ in range(args.count):
            assert await limiter.acquire_slot(args.key, tier) is not None
        print("held", flush=True)
        await asyncio.sleep(3600)
        return

    go = asyncio.Event()

    async def on_go(msg: object) -> None:
        go.set()

    await nc.subscribe(args.go, cb=on_go)
    await nc.flush()
    await nc.publish(args.ready, str(args.index).encode())
    await asyncio.wait_for(go.wait(), 30)

    lines: list[str] = []
    start = time.monotonic()

    async def one(i: int) -> None:
        # Interleave the processes: process p sends at (i + p / n) * step.
        at = start + args.delay_s + (i + args.index / args.processes) * args.step_s
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        sent = time.monotonic()
        decision = await limiter.admit(args.key, tier, Cost())
        received = time.monotonic()
        if decision.allowed:
            status, headers, body = 200, rate_limit_headers(decision), None
        else:
            error = RateLimitExceeded.from_decision(decision)
            status, headers, body = error.status, error.headers, error.body()
        record = {"sent": sent, "received": received, "status": status, "headers": headers, "body": body}
        lines.append(json.dumps(record))

    await asyncio.gather(*(one(i) for i in range(args.count)))
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    await limiter.close()
    await nc.close()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["hammer", "hold"])
    p.add_argument("--nats", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--tier", required=True, help="the Tier as JSON")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--step-s", type=float, default=0.0, help="time between this process's requests")
    p.add_argument("--delay-s", type=float, default=0.0, help="when this process's first request goes, after go")
    p.add_argument("--ready", default="test.ready")
    p.add_argument("--go", default="test.go")
    p.add_argument("--skew-s", type=float, default=0.0)
    p.add_argument("--clock", choices=["server", "wall"], default="server")
    p.add_argument("--lease-ttl-s", type=float, default=30.0)
    return p.parse_args()


if __name__ == "__main__":
    args = parse()
    if args.skew_s:
        real_time, real_time_ns, skew_ns = time.time, time.time_ns, int(args.skew_s * 1e9)
        time.time = lambda: real_time() + args.skew_s
        time.time_ns = lambda: real_time_ns() + skew_ns
    asyncio.run(main(args))
