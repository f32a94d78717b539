"""Shutdown of `ember serve`: SIGTERM ends it within its timeouts and requests in flight end cleanly; kill -9
leaves no child behind (nats-server and every worker die with it, and their ports are free)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ember.bus.nats_server import free_port
from tests.helpers.cluster import write_config
from tests.helpers.serve_process import ServeProcess, is_gone

DRAIN_S = 1.0  # worker.drain_timeout_s
SHUTDOWN_S = 3.0  # gateway.shutdown_timeout_s
# Past the larger timeout: a worker's abort and exit, NATS's stop, the interpreter's exit.
SLACK_S = 2.0
# Long enough to be running when the signal comes: most of the tiny model's context of 512, every token kept.
LONG = {"model": "tiny", "max_tokens": 400, "ignore_eos": True, "messages": [{"role": "user", "content": "hi"}]}


def serve(tmp_path: Path, tiny_model: Path, *, functions: bool) -> tuple[ServeProcess, int, int]:
    port, nats_port = free_port(), free_port()
    config = write_config(
        tmp_path / "ember.toml",
        {"tiny": {"path": str(tiny_model), "max_batch": 4}},
        gateway={"port": port, "shutdown_timeout_s": SHUTDOWN_S},
        worker={"drain_timeout_s": DRAIN_S},
        nats={"port": nats_port, "data_dir": str(tmp_path / "nats")},
        functions={"builtins": functions},
    )
    return ServeProcess(config), port, nats_port


def listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_stream(url: str, started: threading.Event, out: dict[str, Any]) -> None:
    """POST a streamed chat; ``out`` gets the status, every data payload, or the transport error."""
    try:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**LONG, "stream": True}, timeout=30) as r:
            out["status"] = r.status_code
            out["events"] = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    out["events"].append(line.removeprefix("data: "))
                    started.set()
    except httpx.HTTPError as e:
        out["transport_error"] = repr(e)
    finally:
        started.set()


def post(url: str, out: dict[str, Any]) -> None:
    try:
        r = httpx.post(f"{url}/v1/chat/completions", json=LONG, timeout=30)
        out["status"], out["body"] = r.status_code, r.json()
    except (httpx.HTTPError, ValueError) as e:
        out["transport_error"] = repr(e)


def test_sigterm_ends_requests_in_flight_cleanly_and_exits_within_the_timeouts(
    tiny_model: Path, tmp_path: Path
) -> None:
    proc, port, nats_port = serve(tmp_path, tiny_model, functions=False)
    url = f"http://127.0.0.1:{port}"
    try:
        proc.wait_for_line("all models ready", timeout=90)
        children = proc.children()
        assert len(children) == 2  # nats-server and the text worker
        streamed: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        started = threading.Event()
        clients = [
            threading.Thread(target=read_stream, args=(url, started, streamed)),
            threading.Thread(target=post, args=(url, plain)),
        ]
        clients[0].start()
        assert started.wait(30)
        clients[1].start()
        time.sleep(0.3)  # the plain request reaches the worker
        assert streamed.get("events") and streamed["events"][-1] != "[DONE]", f"ended before the signal: {streamed}"
        sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=max(DRAIN_S, SHUTDOWN_S) + 30)
        took = time.monotonic() - sent
        for c in clients:
            c.join(timeout=10)
    finally:
        proc.close()
    assert code == 0, proc.output()
    assert took < max(DRAIN_S, SHUTDOWN_S) + SLACK_S, f"exited {took:.1f}s after SIGTERM"

    # The stream ended with [DONE], after its last tokens or a clean error event; never a cut connection.
    assert "transport_error" not in streamed and streamed["status"] == 200, streamed
    assert streamed["events"][-1] == "[DONE]", streamed["events"][-3:]
    last = json.loads(streamed["events"][-2])
    assert "error" in last or last["choices"][0]["finish_reason"] == "length", last
    if "error" in last:
        assert {"message", "type", "code"} <= set(last["error"]), last
    # The plain request got its answer, or an OpenAI-shaped error.
    assert "transport_error" not in plain, plain
    if plain["status"] == 200:
        assert plain["body"]["choices"][0]["finish_reason"] == "length"
    else:
        assert plain["status"] >= 500 and {"message", "type", "code"} <= set(plain["body"]["error"]), plain

    assert all(is_gone(pid) for pid in children)
    assert not listens(port) and not listens(nats_port)


def test_kill_9_takes_nats_and_every_worker_with_it(tiny_model: Path, tmp_path: Path) -> None:
    proc, port, nats_port = serve(tmp_path, tiny_model, functions=True)
    try:
        proc.wait_for_line("all models ready", timeout=90)
        children = proc.children()
        assert len(children) == 3  # nats-server, the text worker and the functions worker
        assert listens(nats_port)
        proc.proc.kill()
        proc.proc.wait()
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not all(is_gone(pid) for pid in children):
            time.sleep(0.05)
        left = [pid for pid in children if not is_gone(pid)]
    finally:
        proc.close()
    assert not left, f"still running 2 s after kill -9 of `ember serve`: {left}"
    assert not listens(nats_port) and not listens(port)
