"""`ember serve` as a user runs it: one command starts NATS, the gateway and a worker; Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import openai

from ember.bus.nats_server import free_port
from tests.helpers.cluster import wait_for_model, write_config
from tests.helpers.serve_process import ServeProcess, is_gone


def test_serve_runs_everything_and_stops_everything(tiny_model: Path, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "ember.toml",
        {"tiny": {"path": str(tiny_model), "max_batch": 2}},
        gateway={"port": port},
        nats={"port": 0, "data_dir": str(tmp_path / "nats-data")},
    )
    serve = ServeProcess(config)
    closing: list[openai.OpenAI] = []
    try:
        serve.wait_for_line("all models ready", timeout=90)
        printed = serve.output()
        assert "embedded NATS with JetStream" in printed
        assert "DEV MODE" in printed
        assert f"listening on http://127.0.0.1:{port}/v1" in printed
        assert "model 'tiny' ready" in printed
        assert "functions ready" in printed
        children = serve.children()
        assert len(children) == 3  # nats-server, the text worker and the functions worker (built-ins)

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        closing.append(client)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.usage is not None and r.usage.completion_tokens >= 1
        assert (tmp_path / "nats-data" / "jetstream").is_dir()

        # A worker that crashes is restarted by `ember serve`, and the model serves again.
        worker = next(pid for pid in children if "\0worker\0text\0" in Path(f"/proc/{pid}/cmdline").read_text())
        os.kill(worker, signal.SIGKILL)
        serve.wait_for_line("restarting (1/5)", timeout=30)
        # Until the new worker is up the model answers 503 (never a hang), and the SDK's retries ride it out.
        patient = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=10)
        closing.append(patient)
        r = patient.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.choices[0].finish_reason in ("length", "stop")
        wait_for_model(f"http://127.0.0.1:{port}", "tiny", timeout=5)
        children = serve.children()
    finally:
        for c in closing:
            c.close()
        code = serve.interrupt()
    assert code == 0
    assert all(is_gone(child) for child in children)
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        raise AssertionError("the gateway still answers after Ctrl-C")
    except httpx.ConnectError:
        pass


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path / "bad.toml", {"m": {"path": "/nowhere", "max_batch": 0}})
    out = subprocess.run(
        [sys.executable, "-m", "ember.cli", "--config", str(config), "models"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "models.m.max_batch" in out.stderr and "greater than or equal to 1" in out.stderr
    config = write_config(tmp_path / "missing.toml", {"m": {"path": "/nowhere"}})
    out = subprocess.run(
        [sys.executable, "-m", "ember.cli", "--config", str(config), "serve", "--nats", "nats://127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "/nowhere does not exist" in out.stderr
