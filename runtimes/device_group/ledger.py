"""What a device group knows of its runtimes: their budgets, what each holds, and the device's totals.

Read by metrics scrapes (any thread) while the engines run; every number is a plain attribute written once or read
from torch's allocator, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from ember.runtimes.device_group.slot import RuntimeSlot
from ember.runtimes.devices import free_memory

log = logging.getLogger("ember.device_group")

# How long a runtime that ran out of memory waits for one KV pool to shrink (a step of the text engine, at most).
RECLAIM_TIMEOUT_S = 30.0


@dataclass
class DeviceLedger:
    device: torch.device
    slots: list[RuntimeSlot] = field(default_factory=list)
    # Set once every runtime has loaded: none serves before (host.py says why).
    all_loaded: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, slot: RuntimeSlot) -> None:
        if slot.device != self.device:
            raise ValueError(f"{slot.model_id} runs on {slot.device}, not on the group's {self.device}")
        self.slots.append(slot)
        slot.ledger = self
        for s in self.slots:
            s.reserved_for_others = self.reserved_for(s)

    def reserved_for(self, slot: RuntimeSlot) -> int:
        """What the other runtimes have set aside for their work: a KV cache sized now must leave it free."""
        return sum(s.budget_bytes or 0 for s in self.slots if s is not slot)

    def reclaim(self, requester: RuntimeSlot, nbytes: int, timeout: float = RECLAIM_TIMEOUT_S) -> int:
        """Take ``nbytes`` of device memory back for ``requester`` from the other runtimes' KV pools, largest
        first, each shrinking at its next step boundary (its running requests preempted, recomputed later);
        returns the bytes freed (which torch's allocator hands to the requester's next allocation). Called on the
        requester's engine thread, which waits."""
        freed = 0
        holders = [s for s in self.slots if s is not requester and s.kv_pool is not None]
        for slot in sorted(holders, key=lambda s: s.kv_cache_bytes, reverse=True):
            if freed >= nbytes:
                break
            try:
                got = slot.give_back(nbytes - freed, timeout)
            except Exception as e:  # a pool that could not shrink in time: the next one may
                log.warning("%s could not give back KV memory: %r", slot.model_id, e)
                continue
            freed += got
            slot.reclaimed_bytes += got
        requester.reclaims += 1
        log.info("%s took back %.0f MiB of KV cache (asked %.0f)", requester.model_id, freed / 2**20, nbytes / 2**20)
        return freed

    def metrics(self, slot: RuntimeSlot) -> Iterator[Metric]:
        """The families of ``slot``'s worker page: what this runtime holds and its budget; the group's first
        runtime also reports the device as a whole (once, so that sums over workers do not count it twice)."""
        device = str(self.device)
        held = GaugeMetricFamily(
            "ember_runtime_memory_bytes",
            "Device memory this runtime holds, by part: what its load took (weights), its KV cache (text).",
            labels=["device", "part"],
        )
        held.add_metric([device, "load"], slot.load_bytes)
        held.add_metric([device, "kv_cache"], slot.kv_cache_bytes)
        yield held
        yield _single(
            CounterMetricFamily,
            "ember_runtime_kv_reclaimed_bytes",
            "KV cache memory this runtime gave back to others of its group that ran out of memory.",
            device,
            slot.reclaimed_bytes,
        )
        yield _single(
            CounterMetricFamily,
            "ember_runtime_memory_reclaims",
            "Times this runtime ran out of device memory and took KV cache memory back from its group.",
            device,
            slot.reclaims,
        )
        if slot.budget_bytes is not None:
            yield _single(
                GaugeMetricFamily,
                "ember_runtime_memory_budget_bytes",
                "Device memory set aside for this runtime's work beyond its weights (memory_budget_bytes).",
                device,
                slot.budget_bytes,
            )
        if self.slots and slot is self.slots[0]:
            yield from self.device_metrics()

    def device_metrics(self) -> Iterable[Metric]:
        device = str(self.device)
        family = GaugeMetricFamily(
            "ember_device_memory_bytes",
            "The shared device's memory: free on it, and (GPU) what torch's allocator holds for the group.",
            labels=["device", "kind"],
        )
        family.add_metric([device, "free"], free_memory(self.device))
        if self.device.type == "cuda":
            stats = torch.cuda.memory_stats(self.device)
            family.add_metric([device, "total"], torch.cuda.get_device_properties(self.device).total_memory)
            family.add_metric([device, "allocated"], stats.get("allocated_bytes.all.current", 0))
            family.add_metric([device, "reserved"], stats.get("reserved_bytes.all.current", 0))
            family.add_metric([device, "peak_reserved"], stats.get("reserved_bytes.all.peak", 0))
        yield family


def _single(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, doc: str, device: str, value: float
) -> Metric:
    """A family of one sample, labelled with the device."""
    family = kind(name, doc, labels=["device"])
    family.add_metric([device], value)
    return family
