"""Workers that follow the queue: start a model's workers under load, stop them when idle, between its
``min_workers`` and ``max_workers`` (``ember serve`` and ``ember scale``).

The scaler listens where the gateways do: every worker's announcement (each second: running and waiting jobs, the
p90 of its recent time to first token) and the gateways' demand for a model that has no worker at all. Each tick
it reduces one model's announcements to ``Signals`` and asks the pure ``decide`` what to do::

    below min_workers                       start the missing ones at once (a crash the Supervisor gave up on)
    no worker, and a request waiting         start one at once: scale from zero (the request waits for it)
    waiting per live worker > waiting_per_worker, or the slowest worker's TTFT p90 > ttft_p90_s,
    without a break for sustain_s            start one (never above max_workers)
    no job running or waiting for idle_s     stop the workers above min_workers (SIGTERM: each drains)

Hysteresis: pressure must last ``sustain_s`` before a start, and while a started worker has not announced itself
yet no pressure is counted at all, so the load that asked for one worker never asks for a second; the next start
needs ``sustain_s`` of pressure that the new worker did not relieve. Scale-down needs ``idle_s`` of no work at all,
far longer than a start takes, so the two never chase each other.

Counts are over the whole bus (workers on other machines count toward min and max); a scaler starts and stops
only its own processes, which it names (``--worker-id``) so that it knows them in the announcements. Two scalers
for one model (two machines running ``ember scale``) decide each on its own and may both start a worker for the
same pressure: give each machine's scaler its own models, or accept up to one extra start per scaler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ember.bus import subjects
from ember.bus.messages import TTFT_WINDOW_S, WireVersionError, WorkerInfo, decode_demand, decode_worker_info
from ember.bus.registry import WorkerRegistry
from ember.config import ModelSpec

log = logging.getLogger("ember.scaler")

# How often the scaler looks at its models: well under a second, so that sustain_s and idle_s are kept to about
# the announcements' own resolution (one second).
TICK_S = 0.5


@dataclass(frozen=True)
class Policy:
    """One model's bounds and thresholds (``ModelSpec.min_workers`` / ``max_workers`` / ``autoscale``)."""

    min_workers: int
    max_workers: int
    waiting_per_worker: float = 1.0
    # 0: latency is not a signal.
    ttft_p90_s: float = 2.0
    sustain_s: float = 3.0
    idle_s: float = 60.0
    # The span of the workers' TTFT windows (``ember.runtimes.serving.LatencyWindow``): for this long after a
    # worker joins, the TTFT they report still holds the waits from before it, and says nothing of whether it
    # relieved them, so it is not pressure (waiting jobs still are).
    latency_window_s: float = TTFT_WINDOW_S

    @classmethod
    def of(cls, spec: ModelSpec) -> Policy:
        low, high = spec.worker_range
        a = spec.autoscale
        return cls(low, high, a.waiting_per_worker, a.ttft_p90_s, a.sustain_s, a.idle_s)


@dataclass(frozen=True)
class Signals:
    """One model at one tick, as the announcements show it."""

    # Workers announcing themselves (on every machine), less those this scaler is stopping.
    live: int
    # Workers this scaler started that have not announced themselves yet (loading their model).
    starting: int = 0
    # Jobs running and waiting (beyond their batches) on the live workers, summed.
    running: int = 0
    waiting: int = 0
    # The highest TTFT p90 the live workers report (None: none measured lately).
    ttft_p90_s: float | None = None
    # A gateway holds a request for the model and no worker to send it to (since the last tick).
    demand: bool = False


@dataclass
class ScaleState:
    """What ``decide`` remembers of a model between ticks."""

    # Since when (monotonic) the model has been under pressure without a break, with no start in flight.
    pressure_since: float | None = None
    # Since when it has had no job running or waiting.
    idle_since: float | None = None
    # The last tick's count of starting workers, and when the last of a start's workers joined.
    starting: int = 0
    joined_at: float | None = None


@dataclass(frozen=True)
class Decision:
    start: int = 0
    stop: int = 0
    # Why, for the log line (empty when nothing is to be done).
    reason: str = ""


def decide(policy: Policy, signals: Signals, state: ScaleState, now: float) -> Decision:
    """What to do about one model now: start some workers, stop some, or nothing; updates ``state``.

    Invariants: live + starting never goes above max_workers by a start, and never below min_workers by a stop.
    """
    total = signals.live + signals.starting
    if total < policy.min_workers:
        state.pressure_since = state.idle_since = None
        return Decision(start=policy.min_workers - total, reason=f"below min_workers={policy.min_workers}")
    if total == 0 and signals.demand:
        state.pressure_since = state.idle_since = None
        return Decision(start=1, reason="a request waits for a worker (scale from zero)")

    if state.starting and not signals.starting:
        state.joined_at = now
    state.starting = signals.starting
    settled = state.joined_at is None or now - state.joined_at >= policy.latency_window_s
    why = _pressure(policy, signals, latency=settled)
    # NOTE: no pressure is counted while a start is in flight: it is the answer to the pressure there is.
    if why and signals.starting == 0:
        if state.pressure_since is None:
            state.pressure_since = now
    else:
        state.pressure_since = None
    busy = signals.running > 0 or signals.waiting > 0 or signals.demand
    if busy:
        state.idle_since = None
    elif state.idle_since is None:
        state.idle_since = now

    if state.pressure_since is not None and now - state.pressure_since >= policy.sustain_s:
        if total < policy.max_workers:
            state.pressure_since = None
            return Decision(start=1, reason=f"{why} for {policy.sustain_s:g}s")
    if (
        state.idle_since is not None
        and now - state.idle_since >= policy.idle_s
        and signals.starting == 0
        and signals.live > policy.min_workers
    ):
        return Decision(stop=signals.live - policy.min_workers, reason=f"idle for {policy.idle_s:g}s")
    return Decision()


def _pressure(policy: Policy, signals: Signals, *, latency: bool = True) -> str:
    """Why the model's live workers are under pressure, or "" when they are not (``latency``: whether their TTFT
    counts)."""
    if signals.live == 0:
        return ""  # nothing to relieve: a model with no worker starts one on demand (or to reach min_workers)
    per_worker = signals.waiting / signals.live
    if per_worker > policy.waiting_per_worker:
        return f"{per_worker:.1f} jobs waiting per worker (over {policy.waiting_per_worker:g})"
    ttft = signals.ttft_p90_s
    if latency and policy.ttft_p90_s > 0 and ttft is not None and ttft > policy.ttft_p90_s:
        return f"TTFT p90 {ttft:.2f}s (over {policy.ttft_p90_s:g}s)"
    return ""


class ScaledProcess(Protocol):
    """What the scaler needs of a worker process it runs (``ember.cli.serve.WorkerProcess`` is one)."""

    model: str
    # The id it announces itself under (``ember worker --worker-id``).
    worker_id: str | None
    # Stopped by the scaler: draining, and not to be restarted.
    retiring: bool

    def alive(self) -> bool: ...

    def retire(self) -> None: ...


@dataclass
class Scaler:
    """The loop around ``decide`` for the autoscaled models of one machine.

    ``processes()`` is this machine's worker processes now (the Supervisor's), ``launch(model_id)`` starts one
    more worker of a model among them (False: it would not, e.g. the model's workers keep crashing); a stopped
    worker is ``retire()``d (SIGTERM, drain) and the Supervisor drops it once it has exited.
    """

    nc: NATS
    models: dict[str, ModelSpec]
    processes: Callable[[], Sequence[ScaledProcess]]
    launch: Callable[[str], bool]
    tick_s: float = TICK_S
    clock: Callable[[], float] = time.monotonic
    registry: WorkerRegistry = field(default_factory=WorkerRegistry)
    _states: dict[str, ScaleState] = field(default_factory=dict, init=False)
    _demand: set[str] = field(default_factory=set, init=False)
    _subs: list[Subscription] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.models = {m: spec for m, spec in self.models.items() if spec.autoscaled}
        self._states = {m: ScaleState() for m in self.models}

    async def start(self) -> None:
        self._subs = [
            await self.nc.subscribe(subjects.WORKERS_ANNOUNCE, cb=self._on_announce),
            await self.nc.subscribe(subjects.DEMAND_ALL, cb=self._on_demand),
        ]
        await self.nc.publish(subjects.WORKERS_DISCOVER, b"")  # the workers already up announce themselves now

    async def close(self) -> None:
        """Stop listening and close the connection."""
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._subs.clear()
        with contextlib.suppress(nats.errors.Error):
            await self.nc.close()

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Tick until ``stopping()``."""
        while not stopping():
            self.tick()
            await asyncio.sleep(self.tick_s)

    async def _on_announce(self, msg: Msg) -> None:
        try:
            self.registry.update(decode_worker_info(msg.data))
        except (ValueError, WireVersionError) as e:
            log.warning("ignoring a bad worker announcement: %s", e)

    async def _on_demand(self, msg: Msg) -> None:
        try:
            demand = decode_demand(msg.data)
        except (ValueError, WireVersionError) as e:
            log.warning("ignoring a bad demand: %s", e)
            return
        if demand.model in self.models:
            self._demand.add(demand.model)

    def tick(self) -> None:
        now = self.clock()
        demand, self._demand = self._demand, set()
        for model_id, spec in self.models.items():
            mine = [p for p in self.processes() if p.model == model_id]
            retiring = {p.worker_id for p in mine if p.retiring}
            live = [w for w in self.registry.serving(spec.modality, model_id) if w.worker_id not in retiring]
            live_ids = {w.worker_id for w in live}
            starting = sum(1 for p in mine if not p.retiring and p.alive() and p.worker_id not in live_ids)
            ttfts = [w.ttft_p90_s for w in live if w.ttft_p90_s is not None]
            signals = Signals(
                live=len(live),
                starting=starting,
                running=sum(w.running for w in live),
                waiting=sum(w.waiting for w in live),
                ttft_p90_s=max(ttfts, default=None),
                demand=model_id in demand,
            )
            decision = decide(Policy.of(spec), signals, self._states[model_id], now)
            if decision.start:
                self._start(model_id, decision, signals)
            if decision.stop:
                self._stop(model_id, decision, signals, live, mine)

    def _start(self, model_id: str, decision: Decision, signals: Signals) -> None:
        launched = sum(self.launch(model_id) for _ in range(decision.start))
        if launched:
            want = signals.live + signals.starting + launched
            _say(f"scaling model {model_id!r} up to {want} worker(s): {decision.reason}")

    def _stop(
        self, model_id: str, decision: Decision, signals: Signals, live: list[WorkerInfo], mine: list[ScaledProcess]
    ) -> None:
        # Only this machine's own workers, the least loaded first (idle ones have nothing to drain).
        load = {w.worker_id: w.running + w.waiting for w in live}
        own = sorted((p for p in mine if not p.retiring and p.worker_id in load), key=lambda p: load[p.worker_id or ""])
        chosen = own[: decision.stop]
        if not chosen:
            return
        _say(f"scaling model {model_id!r} down to {signals.live - len(chosen)} worker(s): {decision.reason}")
        for p in chosen:
            p.retire()


def _say(line: str) -> None:
    """A scaling decision: on the terminal of `ember serve` / `ember scale`, as their other news is."""
    log.debug("%s", line)
    print(f"ember: {line}", flush=True)
