"""The functions worker in-process on a real nats-server: concurrency, cancellation, refusals, the call context."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import ember
from ember._functions import function_def
from ember.bus.client import JobClient, JobRefused
from ember.bus.connection import connect
from ember.bus.messages import FunctionJob, FunctionResult, JobStatus
from ember.bus.worker import WorkerHost
from ember.config import Settings
from ember.functions import context
from ember.functions.worker import FunctionHandler, FunctionRuntime

inside: list[str] = []
both_inside = asyncio.Event()
cancelled: list[str] = []


@ember.function(name="t.rendezvous")
async def rendezvous(tag: str) -> str:
    """Returns only once two calls are running at the same time (a serial worker would never return)."""
    inside.append(tag)
    if len(inside) >= 2:
        both_inside.set()
    await asyncio.wait_for(both_inside.wait(), 20)
    return tag


@ember.function(name="t.forever")
async def forever(tag: str) -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.append(tag)
        raise
    return tag


@ember.function(name="t.whoami")
def whoami() -> dict[str, str | None]:
    """Reads the call context from the worker's thread pool."""
    ctx = context.current()
    return {"request_id": ctx.request_id, "key_id": ctx.key_id}


@pytest.fixture(scope="module")
async def client(nats_url: str) -> AsyncIterator[JobClient]:
    settings = Settings(functions={"max_concurrent": 4})
    nc = await connect(nats_url, name="test-functions-worker")
    runtime = FunctionRuntime(settings, bus=None, blobs=None)
    hosts = []
    for fn in (rendezvous, forever, whoami):
        d = function_def(fn)
        assert d is not None
        hosts.append(WorkerHost(nc, FunctionHandler(d, runtime)))
    for h in hosts:
        await h.start()
    gw = await connect(nats_url, name="test-functions-client")
    bus = JobClient(gw)
    await bus.start()
    yield bus
    await bus.stop()
    await gw.drain()
    for h in hosts:
        await h.stop(grace_s=1)
    await nc.drain()


async def call(bus: JobClient, name: str, rid: str, **value: object) -> FunctionResult:
    stream = await bus.submit(FunctionJob(request_id=rid, model=name, input=value, key_id="key_t"), FunctionResult)
    await stream.wait_accepted(10)
    replies = [r async for r in stream]
    assert len(replies) == 1
    return replies[0]


async def test_calls_of_one_function_run_concurrently(client: JobClient) -> None:
    a, b = await asyncio.gather(
        call(client, "t.rendezvous", "r1", tag="a"), call(client, "t.rendezvous", "r2", tag="b")
    )
    assert (a.output, b.output) == ("a", "b")
    assert a.status == JobStatus.FINISHED_STOPPED


async def test_a_cancelled_call_stops_the_function(client: JobClient) -> None:
    stream = await client.submit(FunctionJob(request_id="c1", model="t.forever", input={"tag": "c1"}), FunctionResult)
    accepted = await stream.wait_accepted(10)
    await client.send_cancel(accepted.worker_id, "c1")
    replies = [r async for r in stream]
    assert replies[-1].status == JobStatus.FINISHED_ABORTED
    assert cancelled == ["c1"]


async def test_input_that_does_not_fit_is_refused_before_acceptance(client: JobClient) -> None:
    stream = await client.submit(FunctionJob(request_id="bad1", model="t.rendezvous", input={"tag": 5}), FunctionResult)
    with pytest.raises(JobRefused) as e:
        await stream.wait_accepted(10)
    assert e.value.failed.error.code == "invalid_function_input"
    assert e.value.failed.error.param == "input.tag"


async def test_plain_functions_see_their_call_context(client: JobClient) -> None:
    r = await call(client, "t.whoami", "ctx-1")
    assert r.output == {"request_id": "ctx-1", "key_id": "key_t"}
    assert (await call(client, "t.whoami", "ctx-2")).output["request_id"] == "ctx-2"
