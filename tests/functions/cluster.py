"""A real `ember worker functions` process for tests, and a wait until the gateway lists its functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.cluster import start_worker, stop_process, wait_for_model
from tests.helpers.tiny_checkpoint import write_tiny_llama

USER_MODULE = "tests.helpers.user_functions"
# The orchestration tests' text model: the tiny random llama with room for tool prompts and a few turns.
TOOL_MODEL = "tiny-tools"


def write_tool_model(path: Path, context: int = 2048) -> Path:
    """The tiny random llama (tests.helpers.tiny_checkpoint) with a ``context``-token window instead of 512."""
    write_tiny_llama(path)
    for name, key in (("config.json", "max_position_embeddings"), ("tokenizer_config.json", "model_max_length")):
        data = json.loads((path / name).read_text())
        data[key] = context
        (path / name).write_text(json.dumps(data, indent=2))
    return path


@contextmanager
def text_worker(config: Path, model: str, nats_url: str, base_url: str, log: Path) -> Iterator[None]:
    proc = start_worker(config, model, nats_url, log=log)
    try:
        wait_for_model(base_url, model)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"text worker did not come up:\n{log.read_text()[-4000:]}") from None
    try:
        yield
    finally:
        stop_process(proc)


def start_functions_worker(
    config: Path, nats_url: str, modules: list[str], *, log: Path, worker_id: str | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "ember.cli", "--config", str(config), "worker", "functions", "--nats", nats_url]
    for m in modules:
        cmd += ["--module", m]
    if worker_id:
        cmd += ["--worker-id", worker_id]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parents[2])


def wait_for_functions(base_url: str, names: list[str], timeout: float = 60.0, headers: Any = None) -> None:
    """Until GET /v1/functions lists every one of ``names``."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            seen = httpx.get(f"{base_url}/v1/functions", timeout=5, headers=headers).json()
            if set(names) <= {f["name"] for f in seen["data"]}:
                return
        except httpx.HTTPError as e:
            seen = e
        time.sleep(0.1)
    raise TimeoutError(f"functions {names} not listed within {timeout}s; last: {seen}")


@contextmanager
def functions_worker(
    config: Path, nats_url: str, base_url: str, modules: list[str], names: list[str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_functions_worker(config, nats_url, modules, log=log)
    try:
        wait_for_functions(base_url, names)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"functions worker did not come up:\n{log.read_text()[-4000:]}") from None
    try:
        yield proc
    finally:
        stop_process(proc)
