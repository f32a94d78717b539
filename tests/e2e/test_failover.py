"""Two worker processes in one queue group: they share the load, and killing one mid-stream is handled cleanly."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.cluster import GatewayThread, start_worker, stop_process, wait_for_model, wait_for_workers_gone

MODEL = "tiny-failover"


@pytest.fixture
def two_workers(cluster_config: Path, nats_url: str, gateway: GatewayThread, tmp_path: Path) -> Iterator[dict]:
    procs = {
        f"failover-{i}": start_worker(
            cluster_config, MODEL, nats_url, log=tmp_path / f"w{i}.log", worker_id=f"failover-{i}"
        )
        for i in range(2)
    }
    wait_for_model(gateway.url, MODEL, workers=2)
    yield {"url": gateway.url, "procs": procs}
    for p in procs.values():
        stop_process(p)
    wait_for_workers_gone(gateway.url, MODEL, workers=0)


def chat(url: str, max_tokens: int = 4) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_two_workers_share_the_load(two_workers: dict) -> None:
    served = Counter(chat(two_workers["url"]).headers["x-ember-worker"] for _ in range(30))
    assert len(served) == 2, served
    assert min(served.values()) >= 3, served


def test_killing_a_worker_mid_stream_ends_the_stream_cleanly(two_workers: dict) -> None:
    url = two_workers["url"]
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 480,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        victim = r.headers["x-ember-worker"]
        events = []
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 3:
                    proc = two_workers["procs"][victim]
                    proc.send_signal(signal.SIGKILL)  # no clean shutdown: the connection just drops
                    proc.wait()
                    break
        events += [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["code"] == "worker_lost", error
    assert error["error"]["type"] == "server_error"
    # Fewer tokens than asked: the stream really was cut, not finished.
    contents = [json.loads(e) for e in events[:-2]]
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in contents)

    # The next requests all go to the survivor.
    wait_for_workers_gone(url, MODEL, workers=1)
    for _ in range(5):
        r = chat(url)
        assert r.status_code == 200, r.text
        assert r.headers["x-ember-worker"] != victim
