"""A batch to break: `ember gateway` and `ember worker` processes of our own on a nats-server of our own, which a
test (or benchmarks/batch_serving.py) kills with -9 while a batch runs.

    with BatchStack(tmp) as stack:
        stack.start_gateway(); stack.start_worker("w1")
        batch = stack.submit(lines)
        stack.kill_worker("w1"); stack.kill_gateway(); stack.start_gateway()
        done = stack.wait(batch.id); answers = stack.answers(done)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from ember.bus.connection import connect
from ember.bus.messages import UsageRecord
from ember.bus.nats_server import EmbeddedNats, free_port
from ember.usage import stream as usage_stream
from tests.helpers.cluster import start_worker, stop_process, write_config
from tests.helpers.tiny_checkpoint import write_tiny_llama

MODEL = "tiny-batch"
REPO = Path(__file__).resolve().parents[2]
FINISHED = ("completed", "failed", "expired", "cancelled")


def chat_lines(n: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
                "ignore_eos": True,
            },
        }
        for i in range(n)
    ]


class BatchStack:
    def __init__(
        self, root: Path, *, max_batch: int = 4, ack_wait_s: float = 2.0, weights: dict[str, Any] | None = None
    ) -> None:
        """``weights``: where the model's weights are, as a config entry says it (``{"package": ...}``); a tiny
        random checkpoint by default."""
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        source = weights or {"path": str(write_tiny_llama(root / "model"))}
        self.config = write_config(
            root / "ember.toml",
            {MODEL: {**source, "max_batch": max_batch, "max_waiting": 256}},
            gateway={"idle_probe_s": 0.5},
            auth={"enabled": False},
            functions={"builtins": False},
            batch={"ack_wait_s": ack_wait_s},
        )
        self.nats = EmbeddedNats(data_dir=root / "nats")
        self.gateway: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=30)

    def __enter__(self) -> BatchStack:
        self.nats.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in [*self.workers.values(), *([self.gateway] if self.gateway else [])]:
            stop_process(proc, timeout=5)
        self.nats.stop()

    # --- processes -----------------------------------------------------------------------------------------------

    def start_gateway(self) -> None:
        cmd = [sys.executable, "-m", "ember.cli", "--config", str(self.config), "gateway"]
        cmd += ["--nats", self.nats.url, "--port", str(self.port)]
        with open(self.root / "gateway.log", "ab") as out:
            self.gateway = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.gateway.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the gateway did not come up:\n{(self.root / 'gateway.log').read_text()[-3000:]}")

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.kill()
        self.gateway.wait()

    def start_worker(self, worker_id: str) -> None:
        log = self.root / f"{worker_id}.log"
        self.workers[worker_id] = start_worker(self.config, MODEL, self.nats.url, worker_id=worker_id, log=log)

    def wait_workers(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.url}/readyz", params={"model": MODEL}, timeout=5)
            if r.json()["models"][MODEL]["workers"] >= count:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{count} workers did not come up")

    def kill_worker(self, worker_id: str) -> None:
        proc = self.workers.pop(worker_id)
        proc.kill()
        proc.wait()

    # --- the batch -----------------------------------------------------------------------------------------------

    def submit(self, lines: list[dict[str, Any]]) -> openai.types.Batch:
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        upload = self.client.files.create(file=("lines.jsonl", data), purpose="batch")
        return self.client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    def status(self, batch_id: str) -> openai.types.Batch | None:
        """The batch now, or None while the gateway is down."""
        try:
            return self.client.batches.retrieve(batch_id)
        except (openai.APIConnectionError, openai.APITimeoutError):
            return None

    def running(self, batch_id: str) -> bool:
        """Whether the batch is running and has lines left."""
        batch = self.status(batch_id)
        counts = batch.request_counts if batch is not None else None
        return (
            batch is not None
            and batch.status == "in_progress"
            and counts is not None
            and (counts.completed + counts.failed < counts.total)
        )

    def wait_answered(self, batch_id: str, at_least: int, timeout: float = 120.0) -> None:
        """Until ``at_least`` lines are answered (or the batch ended)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = self.status(batch_id)
            if batch is not None and batch.request_counts is not None:
                if batch.request_counts.completed + batch.request_counts.failed >= at_least:
                    return
                if batch.status in FINISHED:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"fewer than {at_least} lines answered in {timeout:.0f}s")

    def wait(self, batch_id: str, timeout: float = 300.0) -> openai.types.Batch:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = self.status(batch_id)
            if batch is not None and batch.status in FINISHED:
                return batch
            time.sleep(0.2)
        raise TimeoutError(f"batch {batch_id} did not finish in {timeout:.0f}s")

    def answers(self, batch: openai.types.Batch) -> list[dict[str, Any]]:
        """Every line of the batch's output and error files."""
        out: list[dict[str, Any]] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id is not None:
                out += [json.loads(x) for x in self.client.files.content(file_id).text.splitlines()]
        return out

    def usage(self, batch_id: str) -> list[UsageRecord]:
        """The usage records of the batch's lines."""

        async def read() -> list[UsageRecord]:
            nc = await connect(self.nats.url, name="batch-usage")
            try:
                return [rec async for _, rec in usage_stream.read(nc.jetstream()) if rec.batch_id == batch_id]
            finally:
                await nc.close()

        return asyncio.run(read())
