"""Metrics across processes: each worker's page, and the gateway's gathering of every worker's into its own.

A worker answers a request on ``subjects.METRICS`` with its Prometheus text page (its process, its engine's
step histograms, its job handler's families). The gateway publishes one such request, takes every answer that
arrives within a short window, and merges them into its own page: each worker's series get ``worker``, ``model``
and ``modality`` labels (from the registry of announcements), and families of one name become one family.
So one scrape of one gateway shows the whole deployment; workers need no port of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY, Collector

from ember.bus import subjects
from ember.bus.registry import WorkerRegistry

# A `_created` series beside every counter and histogram doubles the page and says nothing a scrape needs.
disable_created_metrics()

# How long a gathering waits for the workers it does not know of (it stops early once every known one answered).
GATHER_WINDOW_S = 0.5


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def render(families: Iterable[Metric]) -> bytes:
    """The Prometheus text page of these families."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def worker_metrics_page(families: Iterable[Metric]) -> bytes:
    """A worker's page: its process's default registry (process and GC metrics) and ``families``, its job
    handler's (running and waiting jobs, the engine's step histograms and counters)."""
    return render([*REGISTRY.collect(), *families])


async def gather(nc: NATS, registry: WorkerRegistry, window_s: float = GATHER_WINDOW_S) -> list[Metric]:
    """Every worker's families, each sample labelled with its worker, model and modality; families of one name
    merged. A worker that does not answer within the window is left out of this scrape."""
    expected = {w.worker_id for workers in registry.models().values() for w in workers}
    pages: dict[str, bytes] = {}
    done = asyncio.Event()

    async def on_page(msg: Msg) -> None:
        worker = (msg.headers or {}).get(subjects.WORKER_HEADER)
        if worker:
            pages[worker] = msg.data
            if expected and expected <= pages.keys():
                done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_page)
    try:
        await nc.publish(subjects.METRICS, b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), window_s)
    finally:
        await sub.unsubscribe()
    # Read again for the labels: a worker that announced itself while the pages came in is labelled too.
    where = {w.worker_id: w for workers in registry.models().values() for w in workers}
    merged: dict[str, Metric] = {}
    for worker_id, page in sorted(pages.items()):
        info = where.get(worker_id)
        labels = {"worker": worker_id, "model": info.model if info else "", "modality": info.modality if info else ""}
        for family in text_string_to_metric_families(page.decode()):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            if into.type != family.type:
                continue  # two Embers of different versions disagreeing on a family: keep the first
            for sample in family.samples:
                into.samples.append(sample._replace(labels={**sample.labels, **labels}))
    return list(merged.values())
