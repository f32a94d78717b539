"""The scaler's loop around ``decide``: which workers it counts as live or starting, and which it stops."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ember.bus.messages import Modality, WorkerInfo
from ember.cli.scaler import Scaler
from ember.config.settings import AutoscaleSettings, ModelSpec

SPEC = ModelSpec(
    path="/m", min_workers=1, max_workers=3, autoscale=AutoscaleSettings(sustain_s=1.0, idle_s=5.0, ttft_p90_s=0)
)


@dataclass
class FakeProcess:
    model: str
    worker_id: str | None
    retiring: bool = False
    running: bool = True

    def alive(self) -> bool:
        return self.running

    def retire(self) -> None:
        self.retiring = True


@dataclass
class Machine:
    """The processes of one scaler, and a clock it can be handed (fake, ahead of the announcements' real one)."""

    now: float = field(default_factory=time.monotonic)
    processes: list[FakeProcess] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)

    def launch(self, model: str) -> bool:
        self.launched.append(model)
        self.processes.append(FakeProcess(model, f"new-{len(self.launched)}"))
        return True


def scaler(machine: Machine) -> Scaler:
    fixed = ModelSpec(path="/f", workers=2)  # a fixed count: not the scaler's
    return Scaler(
        nc=None,  # type: ignore[arg-type]  # tick() never touches NATS
        models={"m": SPEC, "fixed": fixed},
        processes=lambda: machine.processes,
        launch=machine.launch,
        clock=lambda: machine.now,
    )


IDS = {"modality": Modality.TEXT, "model": "m", "max_batch": 4}


def run(s: Scaler, machine: Machine, seconds: float, live: dict[str, tuple[int, int]]) -> None:
    """Tick every half second (of the fake clock) for ``seconds``; the ``live`` workers announce (running,
    waiting) at each tick, in real time, so that the registry finds them fresh."""
    for _ in range(int(seconds / 0.5)):
        machine.now += 0.5
        for p in machine.processes:
            if not p.retiring and p.worker_id in live:
                running, waiting = live[p.worker_id]
                s.registry.update(WorkerInfo(**IDS, worker_id=p.worker_id, running=running, waiting=waiting))
        s.tick()


def test_only_autoscaled_models_are_the_scalers() -> None:
    assert set(scaler(Machine()).models) == {"m"}


def test_a_start_in_flight_counts_and_a_retiring_worker_does_not() -> None:
    machine = Machine(processes=[FakeProcess("m", "a")])
    s = scaler(machine)
    run(s, machine, 2.0, live={"a": (4, 6)})
    assert machine.launched == ["m"]  # pressure for sustain_s: one more
    run(s, machine, 8.0, live={"a": (4, 6)})
    assert machine.launched == ["m"]  # new-1 loads (not announced yet): no second start for the same pressure
    run(s, machine, 1.0, live={"a": (4, 0), "new-1": (2, 0)})
    assert machine.launched == ["m"]
    # Idle: the scaler stops one of its two, and does not count it once it is retiring.
    run(s, machine, 6.0, live={"a": (0, 0), "new-1": (0, 0)})
    retired = [p.worker_id for p in machine.processes if p.retiring]
    assert len(retired) == 1
    run(s, machine, 20.0, live={"a": (0, 0), "new-1": (0, 0)})
    assert [p.worker_id for p in machine.processes if p.retiring] == retired  # never below min_workers
