"""What API keys + rate limits add to a request: two gateways on one NATS and one worker, one with keys and limits,
one in dev mode, sent the same small request alternately so that both see the same noise.

    python benchmarks/auth_overhead.py [--requests 300]

The model is a tiny random checkpoint (written by the test helper) so the model's time does not drown the
difference; the gateway's work per request is the same for any model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.helpers

from ember.bus import children
from ember.bus.nats_server import EmbeddedNats, free_port
from tests.helpers.cluster import wait_ready, write_config
from tests.helpers.tiny_checkpoint import write_tiny_llama

ADMIN = "bench-admin-key-0123456789"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(data_dir=Path(tmp) / "nats") as nats:
        model = write_tiny_llama(Path(tmp) / "tiny")
        config = write_config(
            Path(tmp) / "ember.toml",
            {"tiny": {"path": str(model), "max_batch": 4}},
            auth={"enabled": True, "admin_key": ADMIN},
        )
        cli = [sys.executable, "-m", "ember.cli", "--config", str(config), "--log-level", "warning"]
        on_port, off_port = free_port(), free_port()
        procs = [
            children.spawn([*cli, "worker", "text", "--model", "tiny", "--nats", nats.url]),
            children.spawn([*cli, "gateway", "--nats", nats.url, "--port", str(on_port)], stdout=subprocess.DEVNULL),
            children.spawn(
                [*cli, "gateway", "--nats", nats.url, "--port", str(off_port)],
                stdout=subprocess.DEVNULL,
                env={**os.environ, "EMBER_AUTH__ENABLED": "0"},
            ),
        ]
        on, off = f"http://127.0.0.1:{on_port}", f"http://127.0.0.1:{off_port}"
        try:
            wait_ready(on)
            wait_ready(off)
            created = httpx.post(
                f"{on}/v1/admin/keys", json={"tier": "enterprise"}, headers={"authorization": f"Bearer {ADMIN}"}
            )
            created.raise_for_status()
            key = created.json()["secret"]
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            times: dict[str, list[float]] = {"keys + limits": [], "dev mode": []}
            with httpx.Client(timeout=30) as client:
                for i in range(args.requests + 20):
                    for name, url, headers in (
                        ("keys + limits", on, {"authorization": f"Bearer {key}"}),
                        ("dev mode", off, {}),
                    ):
                        start = time.perf_counter()
                        r = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
                        elapsed = 1000 * (time.perf_counter() - start)
                        r.raise_for_status()
                        if i >= 20:  # warm-up
                            times[name].append(elapsed)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)

    print(f"\n{args.requests} non-streamed 1-token chat requests per gateway, alternating, tiny model, 2 CPU cores\n")
    print("| gateway | p50 (ms) | p99 (ms) |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {pct(values, 0.99):.2f} |")
    on_t, off_t = times["keys + limits"], times["dev mode"]
    print(
        f"| added by keys + limits | {statistics.median(on_t) - statistics.median(off_t):.2f} | "
        f"{pct(on_t, 0.99) - pct(off_t, 0.99):.2f} |"
    )


if __name__ == "__main__":
    main()
