"""``ember worker gpu``: several models' runtimes served from one process on the device they share.

Loading is one model at a time, text models last, and no runtime serves until every one has loaded:
- one at a time, so that what each load takes is measured alone (``RuntimeSlot.loaded``), and so that two loads
  never peak together;
- text last, so that a KV cache sized as a fraction of the free memory (``kv_cache_fraction``) is sized from what
  the other models left, less what they set aside for their work (``memory_budget_bytes``);
- serving after all loads, so that no request's memory is counted in a later model's load or taken from the KV
  cache's share before it is sized.

Then each runtime serves as its own worker would (own bus connection, queue group, engine thread and worker id),
until SIGINT/SIGTERM or ``stop``; a runtime that fails stops the group, since a supervisor restarting the process
restores every model at once, where a group missing one would serve on without it unnoticed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ember.bus.worker import stop_event
from ember.config import ConfigError, Settings
from ember.runtimes.device_group.ledger import DeviceLedger
from ember.runtimes.device_group.slot import RuntimeSlot, current_slot
from ember.runtimes.devices import DeviceError, resolve_device

log = logging.getLogger("ember.device_group")

# A runtime's worker entry point (ember.cli.runners.WORKER_RUNNERS).
RunWorker = Callable[..., Coroutine[Any, Any, None]]


class MemberFailed(Exception):
    """A model of the group failed (to load, or while serving); the group has stopped."""

    def __init__(self, model_id: str, error: BaseException) -> None:
        super().__init__(f"model {model_id!r} failed: {error}")
        self.model_id = model_id
        self.error = error


@dataclass(frozen=True)
class Member:
    model_id: str
    modality: str
    run: RunWorker


def plan_group(settings: Settings, members: Sequence[Member]) -> tuple[torch.device, list[Member]]:
    """The group's device and its members in load order (text last); ConfigError for a group that cannot be."""
    if not members:
        raise ConfigError("a device group needs at least one --model")
    ids = [m.model_id for m in members]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"a device group serves each model once: {', '.join(ids)}")
    devices: dict[str, torch.device] = {}
    for m in members:
        spec = settings.model(m.model_id)
        try:
            devices[m.model_id] = resolve_device(spec.device)
        except DeviceError as e:
            raise ConfigError(f"model {m.model_id!r}: {e}") from None
    distinct = set(devices.values())
    if len(distinct) != 1:
        where = ", ".join(f"{model} on {device}" for model, device in devices.items())
        raise ConfigError(f"a device group's models share one device: {where}")
    ordered = sorted(members, key=lambda m: m.modality == "text")  # stable: the others keep their order
    return distinct.pop(), ordered


async def run_device_group(
    settings: Settings, members: Sequence[Member], nats_url: str, *, stop: asyncio.Event | None = None
) -> DeviceLedger:
    """Serve ``members`` from this process until ``stop`` is set (or SIGINT/SIGTERM); returns the group's ledger.
    Raises MemberFailed, after stopping the others, when a member fails (its load included)."""
    device, ordered = plan_group(settings, members)
    stop = stop_event(stop)
    ledger = DeviceLedger(device)
    for m in ordered:
        spec = settings.model(m.model_id)
        ledger.add(RuntimeSlot(m.model_id, m.modality, device, spec.memory_budget_bytes, spec.threads))
    tasks: list[asyncio.Task[None]] = []
    failed: str | None = None  # the member whose error the group raises
    try:
        for m, slot in zip(ordered, ledger.slots, strict=True):
            context = contextvars.copy_context()
            context.run(current_slot.set, slot)
            task = asyncio.create_task(m.run(settings, m.model_id, nats_url, stop=stop), context=context)
            tasks.append(task)
            failed = m.model_id  # until its load has ended well
            await _loaded(slot, task, stop)
            failed = None
            if stop.is_set():
                return ledger
            log.info(
                "%s loaded on %s: %.0f MiB, KV cache %.0f MiB",
                m.model_id,
                device,
                slot.load_bytes / 2**20,
                slot.kv_cache_bytes / 2**20,
            )
        ledger.all_loaded.set()
        names = ", ".join(m.model_id for m in ordered)
        print(f"ember worker gpu: {len(ordered)} models on {device}: {names}", flush=True)
        stopped = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        for m, task in zip(ordered, tasks, strict=True):
            if task in done and not task.cancelled() and (error := task.exception()) is not None:
                failed = m.model_id
                raise MemberFailed(m.model_id, error) from error
        return ledger
    finally:
        stop.set()
        # Members still waiting for the others' loads never started serving: cancelling them stops their engines.
        if not ledger.all_loaded.is_set():
            for task in tasks:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for m, result in zip(ordered, results, strict=False):
            if m.model_id == failed:
                continue
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("%s stopped with an error: %r", m.model_id, result)


async def _loaded(slot: RuntimeSlot, task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Until ``slot``'s load has ended (or ``stop``); raises MemberFailed if the member failed before or during it."""
    waits = [asyncio.create_task(slot.load_done.wait()), asyncio.create_task(stop.wait())]
    try:
        await asyncio.wait([task, *waits], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    if task.done() or (slot.load_done.is_set() and not slot.load_ok):
        try:
            await task  # a failed load's error reaches the task right after load_done
        except Exception as e:
            raise MemberFailed(slot.model_id, e) from e
        raise MemberFailed(slot.model_id, RuntimeError("stopped while loading"))
