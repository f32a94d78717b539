"""cancel_and_wait ends a task without swallowing a cancellation meant for its caller."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ember.bus.tasks import RECANCEL_S, cancel_and_wait


async def _slow_to_end(ended: asyncio.Event) -> None:
    """A task whose cancellation takes a while to finish (a clean-up round trip)."""
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.shield(asyncio.sleep(0.2))
        ended.set()


async def test_it_waits_for_the_task_to_end() -> None:
    ended = asyncio.Event()
    task = asyncio.create_task(_slow_to_end(ended))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled() and ended.is_set()


async def test_a_caller_cancelled_while_it_waits_is_cancelled_too() -> None:
    ended = asyncio.Event()
    reached_the_end = False

    async def owner() -> None:
        nonlocal reached_the_end
        task = asyncio.create_task(_slow_to_end(ended))
        await asyncio.sleep(0)
        await cancel_and_wait(task)
        reached_the_end = True  # what a swallowed cancellation would let it do

    caller = asyncio.create_task(owner())
    await asyncio.sleep(0.05)  # the owner now waits on the task's slow clean-up
    caller.cancel()
    await asyncio.wait([caller], timeout=5)
    assert caller.cancelled()
    assert not reached_the_end


async def test_a_task_that_lost_its_cancel_is_cancelled_again() -> None:
    """As when Python 3.11's wait_for returns a reply that came in the same loop turn as the cancel."""
    lost = asyncio.Event()

    async def loses_the_first_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            lost.set()
        await asyncio.Event().wait()  # and goes on, like a request loop whose reply won the race

    task = asyncio.create_task(loses_the_first_cancel())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 5 * RECANCEL_S)
    assert lost.is_set() and task.cancelled()


async def test_an_error_on_the_way_out_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("clean-up failed") from None

    task = asyncio.create_task(fails_when_cancelled(), name="fragile")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="ember.bus"):
        await cancel_and_wait(task)
    assert "fragile" in caplog.text and "clean-up failed" in caplog.text


async def test_none_and_finished_tasks_are_fine() -> None:
    await cancel_and_wait(None)
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await cancel_and_wait(done)
    assert done.done() and not done.cancelled()
