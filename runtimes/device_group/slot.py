"""One runtime's place in a device group: its device, its budget, its CUDA stream, and what it was measured to hold.

A slot reaches a runtime's code through a context variable, so that the five runtimes' workers run unchanged in a
group and alone: the group sets ``current_slot`` before it runs a runtime's ``run_<modality>_worker``;
``engine_thread.start_engine_thread`` carries it onto the runtime's engine thread, enters ``engine_context`` there
for the thread's whole life and reports the load it measured (``loaded``); the text worker sizes its KV cache with
``kv_memory`` and reports it (``add_kv_cache``); ``serving.run_worker`` puts the ledger's families for this slot on
the worker's metrics page.

Why a stream per runtime: on the default stream a diffusion step's kernels and a decode step's would run one after
the other; on streams of their own the GPU overlaps them. All runtimes allocate from torch's one caching allocator
(not a private pool each): a block one frees is cached for its stream, and when another's allocation finds no room
the allocator frees such cached blocks and retries, so memory moves between runtimes without a fixed split. The
one large holding that never frees itself, a text runtime's KV cache, shrinks when another runtime of the group
runs out (``with_reclaim``, ``DeviceLedger.reclaim``) and grows back when the device has room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch

from ember.runtimes.devices import free_memory

log = logging.getLogger("ember.device_group")

T = TypeVar("T")

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ember.runtimes.device_group.ledger import DeviceLedger


def device_allocated(device: torch.device) -> int:
    """Bytes the process holds on ``device`` right now: torch's allocated bytes on a GPU, the resident set on the
    CPU (where torch keeps no count)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class RuntimeSlot:
    """What a device group knows of one runtime. Written by the runtime's threads, read by metrics scrapes."""

    model_id: str
    modality: str
    device: torch.device
    # Device memory this runtime's work needs beyond its weights (activations, batches), kept free of the text
    # runtimes' KV caches; None: nothing set aside.
    budget_bytes: int | None = None
    # torch intra-op threads on the engine thread (ModelSpec.threads); None: torch's default.
    threads: int | None = None
    # Measured: what loading took (allocated bytes after minus before: the weights, and on the CPU the tokenizer
    # and libraries too).
    load_bytes: int = 0
    # The runtime's KV caches' sizes now (a text model's, its draft model's), read when asked.
    kv_sources: list[Callable[[], int]] = field(default_factory=list)
    # A text runtime's engine, whose KV pool can give memory back to the others (attach_kv_pool).
    kv_pool: ResizableKV | None = None
    # Counters: KV memory this runtime gave back to others; times it ran out and took some back.
    reclaimed_bytes: int = 0
    reclaims: int = 0
    # The group's other slots' budgets: what the KV cache must leave free (DeviceLedger.reserved_for).
    reserved_for_others: int = 0
    # Set (on the event loop) once the load ends, well or not: the group loads its runtimes one after another.
    load_done: asyncio.Event = field(default_factory=asyncio.Event)
    load_ok: bool = False
    # The group's ledger, once the slot is in one (DeviceLedger.add).
    ledger: DeviceLedger | None = None
    _before_load: int = 0

    @contextlib.contextmanager
    def engine_context(self) -> Iterator[None]:
        """The engine thread's whole life: its device current, its own CUDA stream, its share of the CPU threads."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.device.type != "cuda":
            yield
            return
        torch.cuda.set_device(self.device)
        stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            yield

    def loading(self) -> None:
        """Called on the engine thread before the load: the baseline the load's memory is measured against."""
        self._before_load = device_allocated(self.device)

    def loaded(self) -> None:
        """Called on the engine thread once the model and engine are built (the KV cache included, which
        ``add_kv_cache`` counts apart)."""
        held = device_allocated(self.device) - self._before_load
        if self.device.type == "cuda":
            # Allocated on a GPU at once; on the CPU its pages are touched as blocks are first used, so they are
            # not in the resident set yet.
            held -= self.kv_cache_bytes
        self.load_bytes = max(held, 0)
        self.load_ok = True

    def kv_memory(self, fraction: float) -> int:
        """The KV cache's bytes for ``kv_cache_fraction``: that fraction of what is free on the device now, less
        what the group's other runtimes have set aside for their work."""
        return kv_budget(free_memory(self.device), self.reserved_for_others, fraction)

    @property
    def kv_cache_bytes(self) -> int:
        return sum(source() for source in self.kv_sources)

    def add_kv_cache(self, nbytes: Callable[[], int]) -> None:
        """A KV cache the runtime allocated (a text model's, its draft model's): ``nbytes`` says its size now."""
        self.kv_sources.append(nbytes)

    def attach_kv_pool(self, engine: ResizableKV) -> None:
        """A text engine whose KV pool shrinks when another runtime of the group runs out of memory
        (``DeviceLedger.reclaim``) and grows back, idle, once the device has room again (``may_grow``)."""
        self.kv_pool = engine
        engine.may_grow = self.may_grow

    def may_grow(self, nbytes: int) -> bool:
        """Whether a KV pool may take ``nbytes`` more: free on the device beyond the others' budgets."""
        return free_memory(self.device) - self.reserved_for_others >= nbytes

    def give_back(self, nbytes: int, timeout: float) -> int:
        """Shrink this runtime's KV pool by at least ``nbytes`` (its engine preempts what runs, at its next step
        boundary); the bytes it freed, 0 without a pool or where it is as small as it may be."""
        if self.kv_pool is None:
            return 0
        return max(self.kv_pool.release_kv(nbytes).result(timeout), 0)

    def metrics(self) -> Iterable[Metric]:
        """This runtime's families for its worker's metrics page (DeviceLedger.metrics)."""
        return self.ledger.metrics(self) if self.ledger is not None else ()


class ResizableKV(Protocol):
    """What a slot asks of a text engine (TextEngine)."""

    may_grow: Callable[[int], bool] | None

    def release_kv(self, nbytes: int) -> Future[int]: ...


def with_reclaim(call: Callable[[], T]) -> T:
    """``call()``; where it runs out of device memory inside a device group, the group's KV pools give back what
    the error says was missing (``DeviceLedger.reclaim``) and ``call`` runs once more. What ``call`` did before
    the error must be safe to do again (a denoising step's forward is: it changes nothing until it returns)."""
    try:
        return call()
    except torch.OutOfMemoryError as e:
        slot = current_slot.get()
        if slot is None or slot.ledger is None:
            raise
        if slot.ledger.reclaim(slot, missing_bytes(e)) == 0:
            raise
        log.warning("%s ran out of device memory; KV blocks taken back from the group, trying again", slot.model_id)
        return call()


# CUDA's out-of-memory message: "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ...".
_TRIED = re.compile(r"Tried to allocate ([0-9.]+) (B|KiB|MiB|GiB|TiB)")
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
# Taken back when the message names no size.
DEFAULT_RECLAIM_BYTES = 2**30


def missing_bytes(error: BaseException) -> int:
    """What an out-of-memory error says the allocation wanted (DEFAULT_RECLAIM_BYTES when it does not say)."""
    found = _TRIED.search(str(error))
    if found is None:
        return DEFAULT_RECLAIM_BYTES
    return int(float(found.group(1)) * _UNITS[found.group(2)])


def kv_budget(free: int, reserved: int, fraction: float) -> int:
    """``fraction`` of the memory that is free and not set aside; 0 when nothing is left."""
    return max(int((free - reserved) * fraction), 0)


current_slot: contextvars.ContextVar[RuntimeSlot | None] = contextvars.ContextVar("ember_runtime_slot", default=None)
