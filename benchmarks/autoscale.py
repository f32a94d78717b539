"""Autoscaling under a step load: `ember serve` with a text model between --min-workers and --max-workers.

    python benchmarks/autoscale.py                                  # SmolLM2-135M, 1 -> 16 streams for 60 s, max 3
    python benchmarks/autoscale.py --model qwen2.5-coder-1.5b-instruct --idle-s 30

The load: --base-streams streamed chats for --warm-s, then --streams of them for --load-s, then none until the
model is back at --min-workers (or --tail-s). Every stream sends requests back to back (greedy, ignore_eos,
--max-tokens out). The timeline, one row every --every seconds: the streams, each live worker's running / waiting
jobs (from its announcements on NATS), the highest TTFT p90 they announce, and the requests each worker completed
in that interval; then the scaler's own lines, with when they were printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats

from ember.bus import children, subjects
from ember.bus.messages import WorkerInfo, decode_worker_info
from ember.bus.nats_server import free_port
from ember.config.settings import SMOLLM2_MODEL, default_models


@dataclass
class Observed:
    started: float = field(default_factory=time.monotonic)
    # worker id -> its last announcement and when it came
    workers: dict[str, tuple[WorkerInfo, float]] = field(default_factory=dict)
    completed: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    streams: int = 0
    events: list[tuple[float, str]] = field(default_factory=list)

    def t(self) -> float:
        return time.monotonic() - self.started

    def live(self) -> list[WorkerInfo]:
        now = time.monotonic()
        return sorted(
            (info for info, seen in self.workers.values() if now - seen < 2.5 * info.interval_s and not info.leaving),
            key=lambda w: w.worker_id,
        )


def write_config(path: Path, args: argparse.Namespace, port: int) -> None:
    others = "\n".join(f'[models."{m}"]\nenabled = false\n' for m in default_models() if m != args.model)
    path.write_text(f"""
[gateway]
port = {port}
[nats]
port = 0
data_dir = "{path.parent / "nats"}"
[functions]
builtins = false
[models."{args.model}"]
min_workers = {args.min_workers}
max_workers = {args.max_workers}
max_batch = {args.max_batch}
autoscale = {{ waiting_per_worker = {args.waiting_per_worker}, ttft_p90_s = {args.ttft_p90_s}, \
sustain_s = {args.sustain_s}, idle_s = {args.idle_s} }}
{others}
""")


class Serve:
    """`ember serve --dev` as a child; its lines land in a queue, with the time they came."""

    def __init__(self, config: Path, seen: Observed) -> None:
        self.seen = seen
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = children.spawn(
            [sys.executable, "-m", "ember.cli", "--config", str(config), "--log-level", "warning", "serve", "--dev"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
            if "scaling model" in line:
                self.seen.events.append((self.seen.t(), line.strip().removeprefix("ember: ")))

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=0.5)
                if needle in line:
                    return line
        raise TimeoutError(f"{needle!r} not printed within {timeout}s")


async def stream_forever(client: httpx.AsyncClient, model: str, max_tokens: int, seen: Observed, i: int) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write a short story about robot number {i}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    while True:
        try:
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for _ in r.aiter_lines():
                    pass
                if r.status_code == 200:
                    seen.completed[r.headers.get("x-ember-worker", "?")] += 1
                else:
                    seen.errors[str(r.status_code)] += 1
        except httpx.HTTPError as e:
            seen.errors[type(e).__name__] += 1
            await asyncio.sleep(0.5)


async def drive(args: argparse.Namespace, url: str, nats_url: str, seen: Observed) -> list[str]:
    nc = await nats.connect(nats_url)

    async def on_announce(msg: nats.aio.msg.Msg) -> None:
        info = decode_worker_info(msg.data)
        if info.leaving:
            seen.workers.pop(info.worker_id, None)
        else:
            seen.workers[info.worker_id] = (info, time.monotonic())

    await nc.subscribe(subjects.WORKERS_ANNOUNCE, cb=on_announce)
    await nc.publish(subjects.WORKERS_DISCOVER, b"")
    rows: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    limits = httpx.Limits(max_connections=args.streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        def set_streams(n: int) -> None:
            while len(tasks) < n:
                tasks.append(asyncio.create_task(stream_forever(client, args.model, args.max_tokens, seen, len(tasks))))
            while len(tasks) > n:
                tasks.pop().cancel()
            seen.streams = n

        last = Counter[str]()
        seen.started = time.monotonic()
        set_streams(args.base_streams)
        phase_end = args.warm_s + args.load_s
        while True:
            await asyncio.sleep(args.every)
            t = seen.t()
            if args.warm_s <= t < phase_end and seen.streams != args.streams:
                set_streams(args.streams)
            elif t >= phase_end and seen.streams:
                set_streams(0)
            live = seen.live()
            done = seen.completed - last
            last = Counter(seen.completed)
            ttfts = [w.ttft_p90_s for w in live if w.ttft_p90_s is not None]
            per_worker = "  ".join(f"{w.worker_id[-4:]}:{w.running}/{w.waiting}/{done[w.worker_id]}" for w in live)
            ttft = f"{max(ttfts):5.2f}" if ttfts else "    -"
            rows.append(f"{t:6.1f}  {seen.streams:7d}  {len(live):7d}  {ttft}  {per_worker}")
            print(rows[-1], flush=True)
            if t >= phase_end and (len(live) <= args.min_workers or t >= phase_end + args.tail_s):
                break
    await nc.close()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=SMOLLM2_MODEL, help="a default text model's id")
    p.add_argument("--min-workers", type=int, default=1)
    p.add_argument("--max-workers", type=int, default=3)
    p.add_argument("--max-batch", type=int, default=8, help="sequences a worker runs at once; more wait")
    p.add_argument("--waiting-per-worker", type=float, default=1.0)
    p.add_argument("--ttft-p90-s", type=float, default=2.0)
    p.add_argument("--sustain-s", type=float, default=3.0)
    p.add_argument("--idle-s", type=float, default=20.0)
    p.add_argument("--base-streams", type=int, default=1)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--warm-s", type=float, default=10.0, help="seconds of --base-streams before the step")
    p.add_argument("--load-s", type=float, default=60.0, help="seconds of --streams")
    p.add_argument("--tail-s", type=float, default=90.0, help="the longest wait for the scale-down after the load")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--every", type=float, default=2.0, help="seconds between timeline rows")
    args = p.parse_args()

    seen = Observed()
    with tempfile.TemporaryDirectory(prefix="ember-autoscale-") as tmp:
        config, port = Path(tmp) / "ember.toml", free_port()
        write_config(config, args, port)
        serve = Serve(config, seen)
        try:
            nats_line = serve.wait_for("embedded NATS with JetStream at ", 60)
            nats_url = nats_line.split(" at ", 1)[1].split()[0]
            serve.wait_for("all models ready", 600)
            print(
                f"model {args.model}: workers {args.min_workers}..{args.max_workers}, max_batch {args.max_batch}; "
                f"{args.base_streams} stream(s) for {args.warm_s:g}s, {args.streams} for {args.load_s:g}s, then 0\n"
                f"thresholds: waiting/worker > {args.waiting_per_worker:g} or TTFT p90 > {args.ttft_p90_s:g}s "
                f"for {args.sustain_s:g}s; idle {args.idle_s:g}s\n"
                "     t  streams  workers  ttft90  per worker (id:running/waiting/completed in the row)",
                flush=True,
            )
            asyncio.run(drive(args, f"http://127.0.0.1:{port}", nats_url, seen))
        finally:
            children.stop(serve.proc, 30)
    print("\nscaler:")
    for t, line in seen.events:
        print(f"{t:6.1f}  {line}")
    total = seen.completed.total()
    print(f"\ncompleted {total} requests: " + ", ".join(f"{w[-4:]} {n}" for w, n in sorted(seen.completed.items())))
    if seen.errors:
        print(f"errors: {dict(seen.errors)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
