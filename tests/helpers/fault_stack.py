"""An Ember of our own to break: a nats-server we can kill and restart on the same port, an in-process gateway,
and `ember worker` processes we can kill -9, SIGSTOP and SIGCONT. The fault tests and benchmarks/faults.py use it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client as NATS

from ember.bus.messages import UsageRecord
from ember.bus.nats_server import EmbeddedNats
from ember.config import load_settings
from ember.usage import stream as usage_stream
from tests.helpers.cluster import GatewayThread, start_worker, stop_process, write_config
from tests.helpers.tiny_checkpoint import write_tiny_llama

MODEL = "tiny-faults"


async def usage_records(nats_url: str, request_ids: list[str]) -> dict[str, list[UsageRecord]]:
    """The usage records of each request id (a record's id starts with its request's: choices add a suffix)."""
    nc = NATS()
    await nc.connect(nats_url)
    found: dict[str, list[UsageRecord]] = {rid: [] for rid in request_ids}
    try:
        async for _, rec in usage_stream.read(nc.jetstream()):
            for rid in request_ids:
                if rec.request_id.startswith(rid):
                    found[rid].append(rec)
        return found
    finally:
        await nc.close()


class FaultStack:
    def __init__(self, root: Path, *, model_path: Path | None = None, gateway: dict[str, Any] | None = None) -> None:
        self.root = root
        self.model = MODEL
        path = model_path or write_tiny_llama(root / "model")
        self.config = write_config(
            root / "ember.toml",
            {MODEL: {"path": str(path), "max_batch": 8, "max_waiting": 64}},
            gateway={"idle_probe_s": 0.5, **(gateway or {})},
            auth={"enabled": False},
        )
        self.nats = EmbeddedNats(data_dir=root / "nats")
        self.gateway: GatewayThread | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> FaultStack:
        self.nats.start()
        self.gateway = GatewayThread(load_settings(self.config), self.nats.url).start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
            stop_process(proc, timeout=5)
        if self.gateway is not None:
            self.gateway.stop()
        self.nats.stop()

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def start_worker(self, worker_id: str) -> subprocess.Popen[bytes]:
        proc = start_worker(
            self.config, self.model, self.nats.url, worker_id=worker_id, log=self.root / f"{worker_id}.log"
        )
        self.workers[worker_id] = proc
        return proc

    def wait_workers(self, count: int, timeout: float = 120.0) -> None:
        """Until /readyz for the model counts ``count`` workers that answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for wid, proc in self.workers.items():
                if proc.poll() is not None:
                    log = (self.root / f"{wid}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"worker {wid} exited with {proc.returncode}:\n{log}")
            r = httpx.get(f"{self.url}/readyz", params={"model": self.model}, timeout=5)
            if r.json()["models"][self.model]["workers"] >= count:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{count} workers of {self.model} did not come up within {timeout:.0f}s")

    def kill(self, worker_id: str) -> None:
        proc = self.workers[worker_id]
        proc.kill()
        proc.wait()

    def freeze(self, worker_id: str) -> None:
        os.kill(self.workers[worker_id].pid, signal.SIGSTOP)

    def thaw(self, worker_id: str) -> None:
        os.kill(self.workers[worker_id].pid, signal.SIGCONT)

    def kill_nats(self) -> None:
        proc = self.nats.process
        assert proc is not None
        proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        self.nats.process = None

    def restart_nats(self) -> None:
        self.nats.start()  # the same port and data folder: JetStream keeps its streams

    def ready(self) -> int:
        return httpx.get(f"{self.url}/readyz", params={"model": self.model}, timeout=5).status_code

    def chat_body(self, max_tokens: int, *, stream: bool = False, content: str = "tell me") -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0,
            "stream": stream,
        }
