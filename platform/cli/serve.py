"""``ember serve``: one process tree with NATS (embedded unless --nats), the gateway, and a worker per model.

Workers are child processes, not threads: a model step holds the CPU for tens of milliseconds and must not
stall the gateway's event loop; and a crashed worker is restarted without taking the gateway down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ember.bus.nats_server import EmbeddedNats
from ember.cli.runners import FUNCTIONS_WORKER, WORKER_RUNNERS
from ember.config import ConfigError, Settings
from ember.config.weights import resolve_weights

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

log = logging.getLogger("ember.serve")

# A worker that crashes more often than this is left down (its model then answers 503).
MAX_RESTARTS = 5


@dataclass
class WorkerProcess:
    modality: str
    model: str
    cmd: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    def start(self) -> None:
        # Own process group: Ctrl-C goes to `ember serve`, which then stops workers in order.
        self.proc = subprocess.Popen(self.cmd, start_new_session=True)
        self.started_at = time.monotonic()

    def stop(self, grace_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Supervisor:
    workers: list[WorkerProcess] = field(default_factory=list)
    stopping: bool = False

    async def watch(self) -> None:
        """Restart workers that die, a bounded number of times."""
        while not self.stopping:
            await asyncio.sleep(1.0)
            for w in self.workers:
                if self.stopping or w.proc is None or w.proc.poll() is None:
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

    def stop(self, grace_s: float = 15.0) -> None:
        self.stopping = True
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            w.stop(grace_s)


def worker_commands(
    settings: Settings, nats_url: str, only: list[str] | None, config_path: Path | None
) -> list[WorkerProcess]:
    chosen = only or sorted(settings.models)
    out = []
    for model_id in chosen:
        spec = settings.model(model_id)
        if spec.modality.value not in WORKER_RUNNERS:
            raise ConfigError(f"model {model_id!r}: the {spec.modality.value} runtime is not available in this build")
        resolve_weights(spec)  # fail now, with the reason, rather than in N child processes
        cmd = [sys.executable, "-m", "ember.cli"]
        if config_path is not None:
            cmd += ["--config", str(config_path)]
        cmd += [
            "--log-level",
            settings.log_level,
            "worker",
            spec.modality.value,
            "--model",
            model_id,
            "--nats",
            nats_url,
        ]
        out += [WorkerProcess(spec.modality.value, model_id, cmd) for _ in range(spec.workers)]
    functions = functions_command(settings, nats_url, config_path)
    return out + ([functions] if functions is not None else [])


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
    cmd = [sys.executable, "-m", "ember.cli"]
    if config_path is not None:
        cmd += ["--config", str(config_path)]
    cmd += ["--log-level", settings.log_level, "worker", FUNCTIONS_WORKER, "--nats", nats_url]
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
    supervisor = Supervisor()
    try:
        supervisor.workers = worker_commands(settings, nats_url, only, config_path)
        for w in supervisor.workers:
            w.start()
        asyncio.run(_run(settings, nats_url, supervisor))
    finally:
        supervisor.stop()
        if embedded is not None:
            embedded.stop()
        print("ember: stopped", flush=True)
    return 0


async def _run(settings: Settings, nats_url: str, supervisor: Supervisor) -> None:
    import uvicorn

    from ember.gateway.app import create_app
    from ember.gateway.server import uvicorn_config

    app = create_app(settings, nats_url)
    server = uvicorn.Server(uvicorn_config(settings, app))
    tasks = [asyncio.create_task(supervisor.watch()), asyncio.create_task(_report_ready(server, app, supervisor))]
    try:
        await server.serve()  # returns on SIGINT / SIGTERM (uvicorn installs the handlers)
    finally:
        supervisor.stopping = True
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def _report_ready(server: uvicorn.Server, app: Starlette, supervisor: Supervisor) -> None:
    """Print where the gateway listens, then each model as its workers come up."""
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.05)
    print(f"ember: gateway listening on http://{server.config.host}:{server.config.port}/v1", flush=True)
    # Keyed by (is a function, name): a function and a model may share a name.
    expected: dict[tuple[bool, str], int] = {}
    for w in supervisor.workers:
        key = (w.modality == FUNCTIONS_WORKER, w.model)
        expected[key] = expected.get(key, 0) + 1
    started = time.monotonic()
    pending = set(expected)
    registry = app.state.bus.registry
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
