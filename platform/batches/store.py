"""Where batches live: their records and their lines' results, in JetStream KV on disk.

    ember_batches          batch id -> BatchRecord; every change a compare-and-set on the entry's revision, so
                           a client cancelling and a runner finishing cannot overwrite each other
    ember_batch_results    "<batch id>.<line>" -> LineResult, created once: a line answered twice (its gateway
                           died after the answer and before it could say so) keeps its first answer

Results are read back by the runner that resumes a batch, and deleted once the batch's files are written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from ember.batches.schemas import BatchRecord, LineResult
from ember.bus.kv_listing import read_entries
from ember.bus.kv_records import MISSING, KvRecords, open_bucket

BATCHES = "ember_batches"
RESULTS = "ember_batch_results"
# Finished batches stay listed this long after their last change (OpenAI keeps them; a KV entry needs a bound).
BATCH_TTL_S = 30 * 24 * 3600.0


@dataclass
class BatchStore:
    kv: KeyValue

    @classmethod
    async def open(cls, js: JetStreamContext) -> BatchStore:
        return cls(await open_bucket(js, BATCHES, BATCH_TTL_S))

    async def create(self, record: BatchRecord) -> None:
        await self.kv.create(record.id, record.model_dump_json().encode())

    async def get(self, batch_id: str) -> BatchRecord | None:
        return await KvRecords(self.kv, BatchRecord).get(batch_id)

    async def list(self) -> list[BatchRecord]:
        """Every batch, oldest first."""
        return sorted(await KvRecords(self.kv, BatchRecord).all(), key=lambda r: (r.created_ns, r.id))

    async def change(self, batch_id: str, edit: Callable[[BatchRecord], BatchRecord | None]) -> BatchRecord | None:
        """Apply ``edit`` to the stored record by compare-and-set (``KvRecords.change``); None if there is none."""
        return await KvRecords(self.kv, BatchRecord).change(batch_id, edit)


@dataclass
class ResultStore:
    kv: KeyValue

    @classmethod
    async def open(cls, js: JetStreamContext) -> ResultStore:
        return cls(await open_bucket(js, RESULTS))

    async def record(self, batch_id: str, result: LineResult) -> bool:
        """Keep a line's result unless it has one already; True if this one was kept."""
        try:
            await self.kv.create(f"{batch_id}.{result.index}", result.model_dump_json().encode())
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            return False

    async def all(self, batch_id: str, count: int) -> dict[int, LineResult]:
        """The results the batch's ``count`` lines have so far, by line index.

        Read key by key, not with a KV watch: nats-py's watcher ends its initial values on the consumer's
        ``num_pending`` reading 0 before its callback has counted a delivery, so when the results are already
        on their way to the client it can end before yielding any, and a batch would be finalized as if none
        of its lines had run (seen in tests/faults/test_batch_faults.py, about one run in eight).
        """
        entries = await read_entries(self.kv, [f"{batch_id}.{i}" for i in range(count)])
        results = (LineResult.model_validate_json(e.value) for e in entries if e.value)
        return {r.index: r for r in results}

    async def drop(self, batch_id: str, indices: list[int]) -> None:
        for i in indices:
            try:
                await self.kv.purge(f"{batch_id}.{i}")
            except MISSING:
                pass
