"""What running a function costs on top of the function itself, at 1 and 16 concurrent callers, one run.

    healthz          GET /healthz: the gateway's HTTP floor (no bus)
    bus              a FunctionJob over NATS straight to the worker (JobClient; no HTTP, no schema check)
    invoke           POST /v1/functions/{name}/invoke: HTTP + schema check + quota + bus
    invoke async     POST ...?async=true, then GET /v1/jobs/{id} until done (job state in JetStream KV)

Everything is real and on this machine: an embedded nats-server, a functions worker process serving
tests/helpers/user_functions.py, and the gateway (dev mode, so no rate-limit round trips) in a thread. The
function is ``user_functions.add`` (async, returns at once), so the numbers are the platform's own overhead.

    python benchmarks/function_calls.py
    python benchmarks/function_calls.py --concurrency 1 16 64 --calls 400
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus.client import JobClient
from ember.bus.connection import connect
from ember.bus.messages import FunctionJob, FunctionResult
from ember.bus.nats_server import EmbeddedNats
from ember.config import load_settings
from tests.functions.cluster import USER_MODULE, start_functions_worker, wait_for_functions
from tests.helpers.cluster import GatewayThread, stop_process, write_config

NAME = "user_functions.add"


async def measure(call: Callable[[], Awaitable[None]], calls: int, concurrency: int) -> tuple[float, float, float]:
    """(calls per second, p50 ms, p99 ms) of ``calls`` calls, ``concurrency`` at a time."""
    latencies: list[float] = []
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            t = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    latencies.sort()
    return calls / wall, statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))]


async def run(url: str, nats_url: str, calls: int, levels: list[int]) -> None:
    nc = await connect(nats_url, name="bench-functions")
    bus = JobClient(nc)
    await bus.start()
    limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def healthz() -> None:
            (await http.get("/healthz")).raise_for_status()

        async def over_bus() -> None:
            job = FunctionJob(request_id=uuid.uuid4().hex, model=NAME, input={"a": 1, "b": 2})
            stream = await bus.submit(job, FunctionResult)
            await stream.wait_accepted(30)
            async for reply in stream:
                assert reply.output == 3

        async def invoke() -> None:
            r = await http.post(f"/v1/functions/{NAME}/invoke", json={"input": {"a": 1, "b": 2}})
            assert r.json()["output"] == 3, r.text

        async def invoke_async() -> None:
            r = await http.post(f"/v1/functions/{NAME}/invoke?async=true", json={"input": {"a": 1, "b": 2}})
            job_id = r.json()["id"]
            # Polling is the API: there is no event to wait on.
            while (job := (await http.get(f"/v1/jobs/{job_id}")).json())["status"] not in ("succeeded", "failed"):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            assert job["output"] == 3, job

        paths = {"healthz": healthz, "bus": over_bus, "invoke": invoke, "invoke async": invoke_async}
        for fn in paths.values():  # warm up connections and caches
            await measure(fn, 20, 4)
        print(f"{'path':<14}{'callers':>8}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
        for level in levels:
            for label, fn in paths.items():
                rate, p50, p99 = await measure(fn, calls, level)
                print(f"{label:<14}{level:>8}{rate:>10.0f}{p50:>9.2f}{p99:>9.2f}")
    await bus.stop()
    await nc.drain()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--calls", type=int, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as server:
        config = write_config(Path(tmp) / "ember.toml", {}, auth={"enabled": False})
        worker = start_functions_worker(config, server.url, [USER_MODULE], log=Path(tmp) / "worker.log")
        gateway = GatewayThread(load_settings(config), server.url).start()
        try:
            wait_for_functions(gateway.url, [NAME])
            asyncio.run(run(gateway.url, server.url, args.calls, args.concurrency))
        finally:
            gateway.stop()
            stop_process(worker)


if __name__ == "__main__":
    main()
