"""Which workers are alive, from their announcements; the gateway routes jobs by it and reads it for
/v1/models and /readyz."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ember.bus.messages import Modality, WorkerInfo

# A worker silent for this many announcement intervals is taken for gone (a beat may be late; three are not).
MISSED_ANNOUNCEMENTS = 2.5


@dataclass
class WorkerRegistry:
    # worker id -> (its last announcement, when it came)
    _workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)

    def update(self, info: WorkerInfo, now: float | None = None) -> None:
        if info.leaving:
            self._workers.pop(info.worker_id, None)
        else:
            self._workers[info.worker_id] = (info, time.monotonic() if now is None else now)

    def forget(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    def forget_model(self, model: str) -> None:
        """NATS said nobody serves ``model``: whatever announced it before is gone."""
        for wid, (info, _) in list(self._workers.items()):
            if info.model == model:
                del self._workers[wid]

    def seen(self, worker_id: str) -> float | None:
        """When the worker last announced itself (monotonic), or None if it is not (or no longer) known."""
        entry = self._workers.get(worker_id)
        return None if entry is None else entry[1]

    def alive(self, now: float | None = None) -> list[WorkerInfo]:
        now = time.monotonic() if now is None else now
        live = []
        for wid, (info, seen) in list(self._workers.items()):
            if now - seen > MISSED_ANNOUNCEMENTS * info.interval_s:
                del self._workers[wid]
            else:
                live.append(info)
        return live

    def serving(self, modality: Modality, model: str) -> list[WorkerInfo]:
        """The live workers of one model."""
        return [w for w in self.alive() if w.modality == modality and w.model == model]

    def models(self) -> dict[str, list[WorkerInfo]]:
        """Live model workers grouped by model id (functions are not models: see ``functions``)."""
        return self._grouped(lambda info: info.modality != Modality.FUNCTION)

    def functions(self) -> dict[str, list[WorkerInfo]]:
        """Live function workers grouped by function name."""
        return self._grouped(lambda info: info.modality == Modality.FUNCTION)

    def _grouped(self, keep: Callable[[WorkerInfo], bool]) -> dict[str, list[WorkerInfo]]:
        out: dict[str, list[WorkerInfo]] = {}
        for info in self.alive():
            if keep(info):
                out.setdefault(info.model, []).append(info)
        return out
