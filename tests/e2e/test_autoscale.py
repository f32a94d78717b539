"""Workers that follow the queue: `ember serve` starts a second worker under load and stops it when idle; a model
that scales to zero answers its first request after a cold start (`ember scale` beside a gateway)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from ember.bus import children
from ember.bus.nats_server import EmbeddedNats, free_port
from ember.config import load_settings
from tests.helpers.cluster import GatewayThread, wait_for_model, wait_for_workers_gone, write_config
from tests.helpers.serve_process import ServeProcess

# Short thresholds so that a test takes seconds: any waiting job is pressure, one second of it starts a worker.
FAST = {"waiting_per_worker": 0.5, "ttft_p90_s": 0.0, "sustain_s": 1.0, "idle_s": 4.0, "cold_start_timeout_s": 90.0}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 48, "ignore_eos": True}


class Load:
    """Clients sending requests back to back, each on its own thread, counting the worker that served each."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.served: Counter[str] = Counter()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def end(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.served)

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self.stop.is_set():
                r = client.post("/v1/chat/completions", json=CHAT)
                with self.lock:
                    if r.status_code == 200:
                        self.served[r.headers["x-ember-worker"]] += 1
                    else:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")


def test_serve_scales_up_under_load_and_back_down_when_idle(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "ember.toml",
        # One sequence at a time: four clients keep three jobs waiting on one worker.
        {"tiny": {"path": str(tiny_model), "max_batch": 1, "min_workers": 1, "max_workers": 2, "autoscale": FAST}},
        gateway={"port": port},
        nats={"port": 0, "data_dir": str(tmp_path / "nats-data")},
        functions={"builtins": False},
    )
    serve = ServeProcess(config)
    url = f"http://127.0.0.1:{port}"
    load = Load(url, clients=4)
    try:
        serve.wait_for_line("all models ready", timeout=90)
        assert "model 'tiny' scales between 1 and 2 worker(s)" in serve.output()
        assert len(serve.children()) == 2  # nats-server and one worker: min_workers
        load.start()
        serve.wait_for_line("scaling model 'tiny' up to 2 worker(s)", timeout=30)
        wait_for_model(url, "tiny", workers=2, timeout=60)
        # The new worker takes its share of the jobs: both serve from now on.
        before = load.counts()
        deadline = time.monotonic() + 30
        since = load.counts() - before
        while time.monotonic() < deadline and not (len(since) == 2 and min(since.values()) >= 2):
            time.sleep(0.2)
            since = load.counts() - before
        assert len(since) == 2 and min(since.values()) >= 2, f"jobs per worker since the second came: {since}"
        assert len(serve.children()) == 3
    finally:
        load.end()
    try:
        assert not load.errors, load.errors[:3]
        # Idle: back to min_workers after idle_s, the extra worker drained and gone.
        serve.wait_for_line("scaling model 'tiny' down to 1 worker(s): idle for 4s", timeout=30)
        wait_for_workers_gone(url, "tiny", workers=1, timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(serve.children()) > 2:
            time.sleep(0.2)
        assert len(serve.children()) == 2
        # Never below min (the policy's own tests idle it for longer): the last worker still answers.
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
        assert r.status_code == 200
    finally:
        serve.proc.send_signal(signal.SIGINT)
        try:
            assert serve.proc.wait(timeout=30) == 0
        finally:
            serve.close()


def test_scale_from_zero_first_request_waits_for_a_cold_start(tiny_model: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "ember.toml",
        {"tiny": {"path": str(tiny_model), "max_batch": 2, "min_workers": 0, "max_workers": 1, "autoscale": FAST}},
        auth={"enabled": False},
    )
    settings = load_settings(config)
    with EmbeddedNats(port=0, data_dir=tmp_path / "nats") as nats:
        gateway = GatewayThread(settings, nats.url).start()
        log = tmp_path / "scale.log"
        with log.open("wb") as out:  # a file, not a pipe: its workers write their logs there too
            scaler = children.spawn(
                [sys.executable, "-m", "ember.cli", "--config", str(config), "scale", "--nats", nats.url],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # Nothing runs, and the model still counts as ready: a request for it waits for a worker.
            ready = httpx.get(f"{gateway.url}/readyz", timeout=5)
            assert ready.status_code == 200 and ready.json()["models"]["tiny"] == {"workers": 0, "ready": True}
            started = time.monotonic()
            r = httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "max_tokens": 3}, timeout=120)
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == 3
            assert time.monotonic() - started > 0.5  # it did wait for the worker to load
            # Idle for idle_s: back to zero; the next request waits again and is answered again.
            wait_for_workers_gone(gateway.url, "tiny", workers=0, timeout=30)
            r = httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "max_tokens": 3}, timeout=120)
            assert r.status_code == 200, r.text
        finally:
            gateway.stop()
            children.stop(scaler, timeout=30)
    out = log.read_text()
    assert scaler.returncode == 0, out[-4000:]
    assert out.count("scaling model 'tiny' up to 1 worker(s): a request waits for a worker (scale from zero)") == 2
    assert "scaling model 'tiny' down to 0 worker(s): idle for 4s" in out
