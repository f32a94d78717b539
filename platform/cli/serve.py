"""``ember serve``: one process tree with NATS (embedded unless --nats), the gateway, and a worker per model.

Workers are child processes, not threads: a model step holds the CPU for tens of milliseconds and must not
stall the gateway's event loop; and a crashed worker is restarted without taking the gateway down. A model with
``max_workers`` set starts with its ``min_workers``, and a scaler (``ember.cli.scaler``) starts and stops more as
its queue grows and empties; ``ember scale`` is the same Supervisor and scaler without NATS and the gateway.

SIGTERM or SIGINT stops it all at once: the gateway stops accepting and waits for its requests in flight (up to
gateway.shutdown_timeout_s) while every worker drains its jobs (up to worker.drain_timeout_s, then aborts the rest
with a clean error that reaches the waiting client); then NATS stops. So it exits within the larger of the two
timeouts, plus a second. Every child dies with it even when it is killed with -9 (``ember.bus.children``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from ember.bus import children
from ember.bus.connection import connect
from ember.bus.nats_server import EmbeddedNats
from ember.bus.tasks import cancel_and_wait
from ember.cli.runners import DEVICE_GROUP, FUNCTIONS_WORKER, WORKER_RUNNERS
from ember.cli.scaler import Scaler
from ember.config import ConfigError, Settings
from ember.config.weights import resolve_weights

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.applications import Starlette

log = logging.getLogger("ember.serve")

# A worker that crashes more often than this is left down (its model then answers 503).
MAX_RESTARTS = 5
# After its drain a worker aborts what is left and closes its connection; past this more it is killed.
EXIT_GRACE_S = 1.0
# nats-server exits at once on SIGTERM; past this it is killed.
NATS_STOP_S = 2.0


@dataclass
class WorkerProcess:
    modality: str
    model: str
    cmd: list[str]
    # The models it serves: its model, or a device group's (`ember worker gpu`).
    serves: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    # The id it announces itself under (its cmd passes it), so that a scaler knows it; None: the worker's own.
    worker_id: str | None = None
    # Stopped by the scaler (it drains): not restarted, and dropped once it has exited.
    retiring: bool = False

    def start(self) -> None:
        # Own session: Ctrl-C goes to `ember serve`, which then stops workers in order; and it dies with us.
        self.proc = children.spawn(self.cmd)
        self.started_at = time.monotonic()

    def terminate(self) -> None:
        """SIGTERM: the worker leaves its queue group and drains."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def gave_up(self) -> bool:
        """It crashed more than MAX_RESTARTS times and is left down."""
        return self.proc is None and self.restarts >= MAX_RESTARTS

    def retire(self) -> None:
        """Stop it for good (scale-down): it drains, and the Supervisor lets it go."""
        self.retiring = True
        self.terminate()

    def wait_or_kill(self, deadline: float) -> None:
        """Wait for the worker to exit until ``deadline`` (monotonic), then kill it with its process group."""
        if self.proc is None:
            return
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker for %s did not exit after its drain; killing it", self.model)
        children.kill_group(self.proc)


@dataclass
class Supervisor:
    workers: list[WorkerProcess] = field(default_factory=list)
    # worker.drain_timeout_s: how long a worker may take to exit after SIGTERM (plus EXIT_GRACE_S).
    drain_timeout_s: float = 10.0
    stopping: bool = False
    # When the workers' drain is over (monotonic); set by the first begin_stop().
    deadline: float | None = None

    async def watch(self) -> None:
        """Restart workers that die, a bounded number of times; let go of those the scaler stopped."""
        while not self.stopping:
            await asyncio.sleep(1.0)
            for w in list(self.workers):
                if self.stopping or w.proc is None or w.proc.poll() is None:
                    continue
                if w.retiring:
                    log.info("worker %s of %s stopped (scaled down)", w.worker_id, w.model)
                    children.kill_group(w.proc)  # reaps it, and whatever it started
                    self.workers.remove(w)
                    continue
                code = w.proc.returncode
                if w.restarts >= MAX_RESTARTS:
                    if w.proc is not None:
                        log.error(
                            "worker for %s exited with %s; restarted %d times, giving up", w.model, code, w.restarts
                        )
                        w.proc = None
                    continue
                w.restarts += 1
                log.warning("worker for %s exited with %s; restarting (%d/%d)", w.model, code, w.restarts, MAX_RESTARTS)
                w.start()

    def begin_stop(self) -> None:
        """SIGTERM every worker at once, so that they drain while the gateway does; later calls do nothing."""
        if self.deadline is not None:
            return
        self.stopping = True
        self.deadline = time.monotonic() + self.drain_timeout_s + EXIT_GRACE_S
        for w in self.workers:
            w.terminate()

    def stop(self) -> None:
        """``begin_stop``, then wait for the workers until their drain is over and kill whatever is left."""
        self.begin_stop()
        assert self.deadline is not None
        for w in self.workers:
            w.wait_or_kill(self.deadline)


def worker_commands(
    settings: Settings, nats_url: str, only: list[str] | None, config_path: Path | None, *, functions: bool = True
) -> list[WorkerProcess]:
    """The worker processes to start: each model's fixed count, or its min_workers when it is autoscaled."""
    chosen = only or sorted(settings.models)
    out = []
    groups: dict[str, list[str]] = {}
    for model_id in chosen:
        spec = settings.model(model_id)
        if spec.modality.value not in WORKER_RUNNERS:
            raise ConfigError(f"model {model_id!r}: the {spec.modality.value} runtime is not available in this build")
        # Fail now, with the reason, rather than in N child processes (and join a split model once, here).
        resolve_weights(spec, settings.cache_dir)
        if spec.device_group is not None:
            groups.setdefault(spec.device_group, []).append(model_id)
            continue
        out += [model_process(settings, model_id, nats_url, config_path) for _ in range(spec.worker_range[0])]
    out += [group_process(settings, name, models, nats_url, config_path) for name, models in sorted(groups.items())]
    fn = functions_command(settings, nats_url, config_path) if functions else None
    return out + ([fn] if fn is not None else [])


def group_process(
    settings: Settings, name: str, models: list[str], nats_url: str, config_path: Path | None
) -> WorkerProcess:
    """The `ember worker gpu` process of a device group: its models in one process on their shared device."""
    cmd = [*_cli(settings, config_path), "worker", DEVICE_GROUP, "--nats", nats_url]
    cmd += [arg for model_id in models for arg in ("--model", model_id)]
    return WorkerProcess(DEVICE_GROUP, f"device group {name!r}", cmd, serves=tuple(models))


def _cli(settings: Settings, config_path: Path | None) -> list[str]:
    """`ember` as a child process runs it, with this serve's config and log level."""
    cmd = [sys.executable, "-m", "ember.cli"]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    return [*cmd, "--log-level", settings.log_level]


def model_process(settings: Settings, model_id: str, nats_url: str, config_path: Path | None) -> WorkerProcess:
    """One (not yet started) worker of a model; an autoscaled model's is named, for its scaler."""
    spec = settings.model(model_id)
    cmd = [*_cli(settings, config_path), "worker", spec.modality.value, "--model", model_id, "--nats", nats_url]
    worker_id = f"w-{uuid.uuid4().hex[:12]}" if spec.autoscaled else None
    if worker_id is not None:
        cmd += ["--worker-id", worker_id]
    return WorkerProcess(spec.modality.value, model_id, cmd, serves=(model_id,), worker_id=worker_id)


def functions_command(settings: Settings, nats_url: str, config_path: Path | None) -> WorkerProcess | None:
    """One functions worker: the built-ins and the config's functions.modules (none when there is nothing)."""
    from ember.functions.loader import FunctionModuleError, load_modules

    fs = settings.functions
    try:  # fail now, with the reason, rather than in a restarting child; also names what to wait for
        names = (["generate_image"] if fs.builtins else []) + [d.name for d in load_modules(fs.modules)]
    except FunctionModuleError as e:
        raise ConfigError(str(e)) from None
    if not names:
        return None
    cmd = [*_cli(settings, config_path), "worker", FUNCTIONS_WORKER, "--nats", nats_url]
    return WorkerProcess(FUNCTIONS_WORKER, names[0], cmd)


def serve(settings: Settings, *, nats_url: str | None, only: list[str] | None, config_path: Path | None) -> int:
    nats_url = nats_url or settings.nats.url
    embedded: EmbeddedNats | None = None
    if nats_url is None:
        embedded = EmbeddedNats(port=settings.nats.port, data_dir=settings.nats.data_dir)
        try:
            nats_url = embedded.start()
        except Exception as e:
            raise ConfigError(
                f"could not start the embedded NATS on port {settings.nats.port}: {e}\n"
                "  (is another NATS running? join it with --nats URL, or set nats.port = 0 for any free port)"
            ) from e
        print(f"ember: embedded NATS with JetStream at {nats_url} (data in {settings.nats.data_dir})", flush=True)
    else:
        print(f"ember: joining NATS at {nats_url}", flush=True)
    if not settings.auth.enabled:
        print(
            "ember: WARNING: DEV MODE: API keys and rate limits are off; anyone who can reach the gateway "
            "can use it. Never expose this.",
            flush=True,
        )
    else:
        print(f"ember: API keys required; create one with: ember keys create --tier developer --nats {nats_url}")
    supervisor = Supervisor(drain_timeout_s=settings.worker.drain_timeout_s)
    try:
        supervisor.workers = worker_commands(settings, nats_url, only, config_path)
        for w in supervisor.workers:
            w.start()
        asyncio.run(_run(settings, nats_url, supervisor, only, config_path))
    finally:
        supervisor.stop()
        if embedded is not None:
            embedded.stop(NATS_STOP_S)
        print("ember: stopped", flush=True)
    return 0


async def _run(
    settings: Settings, nats_url: str, supervisor: Supervisor, only: list[str] | None, config_path: Path | None
) -> None:
    from ember.gateway.app import create_app
    from ember.gateway.server import uvicorn_config

    # /readyz waits for the models this serve runs, not every configured one.
    app = create_app(settings, nats_url, ready_models=only)
    server = _Gateway(uvicorn_config(settings, app), supervisor)
    tasks = [asyncio.create_task(supervisor.watch()), asyncio.create_task(_report_ready(server, app, supervisor))]
    scaler = await start_scaler(settings, nats_url, supervisor, only, config_path)
    if scaler is not None:
        tasks.append(asyncio.create_task(scaler.run(lambda: supervisor.stopping)))
    try:
        await server.serve()  # returns on SIGINT / SIGTERM, once requests in flight are done or shutdown_timeout_s
    finally:
        supervisor.begin_stop()
        for t in tasks:
            await cancel_and_wait(t)
        if scaler is not None:
            await scaler.close()


async def start_scaler(
    settings: Settings, nats_url: str, supervisor: Supervisor, only: list[str] | None, config_path: Path | None
) -> Scaler | None:
    """A scaler for the autoscaled models among those served (None when there are none), listening already; it
    starts its workers as the Supervisor's, which restarts them when they crash like any other."""
    models = {m: settings.model(m) for m in only or sorted(settings.models)}
    if not any(spec.autoscaled for spec in models.values()):
        return None

    def launch(model_id: str) -> bool:
        # A model whose worker crashed past its restarts gets no fresh ones either: they would crash the same way.
        if supervisor.stopping or any(w.model == model_id and w.gave_up for w in supervisor.workers):
            return False
        w = model_process(settings, model_id, nats_url, config_path)
        supervisor.workers.append(w)
        w.start()
        return True

    scaler = Scaler(await connect(nats_url, name="ember-scaler"), models, lambda: supervisor.workers, launch)
    await scaler.start()
    for model_id, spec in sorted(scaler.models.items()):
        low, high = spec.worker_range
        print(f"ember: model {model_id!r} scales between {low} and {high} worker(s)", flush=True)
    return scaler


def scale(settings: Settings, *, nats_url: str, only: list[str] | None, config_path: Path | None) -> int:
    """``ember scale``: this machine's workers of the configured models (or ``only``) on an existing NATS, the
    autoscaled ones started and stopped by the scaler; SIGTERM / SIGINT drains them all and exits."""
    supervisor = Supervisor(drain_timeout_s=settings.worker.drain_timeout_s)
    try:
        supervisor.workers = worker_commands(settings, nats_url, only, config_path, functions=False)
        for w in supervisor.workers:
            w.start()
        asyncio.run(_scale(settings, nats_url, supervisor, only, config_path))
    finally:
        supervisor.stop()
        print("ember: stopped", flush=True)
    return 0


async def _scale(
    settings: Settings, nats_url: str, supervisor: Supervisor, only: list[str] | None, config_path: Path | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scaler = await start_scaler(settings, nats_url, supervisor, only, config_path)
    tasks = [asyncio.create_task(supervisor.watch())]
    if scaler is not None:
        tasks.append(asyncio.create_task(scaler.run(lambda: supervisor.stopping)))
    print(f"ember: scaling workers on NATS at {nats_url}; Ctrl-C to stop", flush=True)
    try:
        await stop.wait()
    finally:
        supervisor.begin_stop()
        for t in tasks:
            await cancel_and_wait(t)
        if scaler is not None:
            await scaler.close()


class _Gateway(uvicorn.Server):
    """uvicorn's server, whose SIGINT / SIGTERM also start the workers' drain.

    uvicorn's own handlers raise the signal again once the server has stopped, to end the process: a SIGTERM would
    then kill `ember serve` before it stops its workers and NATS. These handlers do not.
    """

    def __init__(self, config: uvicorn.Config, supervisor: Supervisor) -> None:
        super().__init__(config)
        self.supervisor = supervisor

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def on_signal(self, sig: int) -> None:
        self.handle_exit(sig, None)  # a second SIGINT: stop waiting for requests in flight
        self.supervisor.begin_stop()


async def _report_ready(server: uvicorn.Server, app: Starlette, supervisor: Supervisor) -> None:
    """Print where the gateway listens, then each model as its workers come up."""
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.05)
    print(f"ember: gateway listening on http://{server.config.host}:{server.config.port}/v1", flush=True)
    # Keyed by (is a function, name): a function and a model may share a name.
    expected: dict[tuple[bool, str], int] = {}
    for w in supervisor.workers:
        for name in w.serves or (w.model,):
            key = (w.modality == FUNCTIONS_WORKER, name)
            expected[key] = expected.get(key, 0) + 1
    started = time.monotonic()
    pending = set(expected)
    from ember.gateway.state import GatewayState, gateway_state

    registry = GatewayState.running(gateway_state(app).bus, "the job bus").registry
    while pending:
        await asyncio.sleep(0.2)
        live = {False: registry.models(), True: registry.functions()}
        for is_function, name in sorted(pending):
            want = expected[(is_function, name)]
            if len(live[is_function].get(name, ())) >= want:
                pending.discard((is_function, name))
                took = time.monotonic() - started
                what = "functions" if is_function else f"model {name!r}"
                print(f"ember: {what} ready ({want} worker(s), {took:.1f}s)", flush=True)
    print("ember: all models ready; Ctrl-C to stop", flush=True)
