"""A real Ember on loopback for tests: nats-server, worker processes and a gateway, started and stopped by us."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ember.bus import children
from ember.bus.nats_server import free_port
from ember.config import Settings
from ember.config.settings import default_models
from ember.gateway.app import create_app
from ember.gateway.server import uvicorn_config


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, dict):  # an inline table, e.g. a model's autoscale = { idle_s = 2.0 }
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):  # e.g. a split model's parts
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def only_models(models: dict[str, Any]) -> dict[str, Any]:
    """``models`` plus ``enabled = false`` for every default model they do not name: these models and no others."""
    return {**models, **{m: {"enabled": False} for m in default_models() if m not in models}}


def write_config(path: Path, models: dict[str, dict[str, Any]], **sections: dict[str, Any]) -> Path:
    """An ember.toml with these models (model id -> ModelSpec fields), and no others, and top-level sections."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for model_id, spec in only_models(models).items():
        lines.append(f'[models."{model_id}"]')
        lines += [f"{k} = {toml_value(v)}" for k, v in spec.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_worker(
    config: Path,
    model: str,
    nats_url: str,
    *,
    log: Path | None = None,
    worker_id: str | None = None,
    modality: str = "text",
) -> subprocess.Popen[bytes]:
    """A real `ember worker <modality>` process, which dies with this one (ember.bus.children)."""
    extra = ["--worker-id", worker_id] if worker_id else []
    return _spawn_worker(config, [modality, "--model", model, "--nats", nats_url, *extra], log)


def start_group(config: Path, models: list[str], nats_url: str, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A real `ember worker gpu` process serving ``models`` on their shared device (ember.runtimes.device_group)."""
    return _spawn_worker(config, ["gpu", *(arg for m in models for arg in ("--model", m)), "--nats", nats_url], log)


def _spawn_worker(config: Path, args: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    """`ember --config CONFIG worker ARGS`, its output appended to ``log`` (or dropped), dying with this process."""
    cmd = [sys.executable, "-m", "ember.cli", "--config", str(config), "worker", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if log is None:
        return children.spawn(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return children.spawn(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


@contextlib.contextmanager
def running_worker(
    config: Path,
    model: str,
    nats_url: str,
    gateway_url: str,
    *,
    log: Path,
    timeout: float = 600.0,
    modality: str = "text",
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker of ``model`` (``start_worker``) that the gateway lists, stopped when the block ends; if it does not
    come up within ``timeout``, the error is the tail of its log."""
    proc = start_worker(config, model, nats_url, log=log, modality=modality)
    try:
        try:
            wait_for_model(gateway_url, model, timeout=timeout)
        except TimeoutError:
            raise RuntimeError(f"{model} worker did not come up:\n{log.read_text()[-4000:]}") from None
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, up to ``timeout`` to exit, then SIGKILL to its process group (``ember.bus.children.stop``)."""
    children.stop(proc, timeout)


def wait_for_model(base_url: str, model: str, workers: int = 1, timeout: float = 120.0) -> None:
    """Until GET /v1/models lists ``model`` with at least ``workers`` live workers."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            seen = httpx.get(f"{base_url}/v1/models", timeout=5).json()
            for m in seen["data"]:
                if m["id"] == model and m["workers"] >= workers:
                    return
        except httpx.HTTPError as e:
            seen = e
        time.sleep(0.1)
    raise TimeoutError(f"model {model!r} did not get {workers} worker(s) within {timeout}s; last: {seen}")


def wait_ready(base_url: str, timeout: float = 120.0, model: str | None = None) -> None:
    """Until the gateway's /readyz (for ``model``, else every configured one) says it can serve (no API key)."""
    deadline = time.monotonic() + timeout
    params = {"model": model} if model is not None else {}
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/readyz", params=params, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"gateway {base_url} was not ready within {timeout}s")


def wait_for_workers_gone(base_url: str, model: str, workers: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = httpx.get(f"{base_url}/v1/models", timeout=5).json()["data"]
        count = next((m["workers"] for m in data if m["id"] == model), 0)
        if count <= workers:
            return
        time.sleep(0.1)
    raise TimeoutError(f"model {model!r} still has more than {workers} worker(s)")


class GatewayThread:
    """The real gateway app under uvicorn on a free loopback port, in its own thread and event loop.

    Its own loop (not the tests') so that sync clients, like the official openai client, can call it.
    """

    def __init__(self, settings: Settings, nats_url: str) -> None:
        port = free_port()
        self.settings = settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"port": port})})
        self.app = create_app(self.settings, nats_url)
        self.server = uvicorn.Server(uvicorn_config(self.settings, self.app))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> GatewayThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
