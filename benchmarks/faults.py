"""Faults at length: workers killed and frozen under streams, nats-server restarted for 10 s and for 150 s under
load, /readyz sampled around worker deaths, and async jobs across kills (benchmarks/faults_async.py).

    python benchmarks/faults.py [--streams 16] [--long-outage 150] [--skip-async]

Real processes on loopback (tests.helpers.fault_stack: a nats-server, the gateway, `ember worker` processes on a
tiny model). Every request is one of:
- ok: the whole answer (every token asked for, ``[DONE]`` on a stream);
- error: a clean, OpenAI-shaped error (a status with an error body, or an SSE error event then ``[DONE]``);
- lost: anything else (a stream cut without ``[DONE]``, a connection reset, a 500);
- hung: no end within ``HUNG_S`` of its start.
The table: scenario, N, ok, errors, lost, hung, p99 seconds from the fault to a request's error, and usage
records written / expected (one per request, after the bus is back). Exit status 0 only if no request was lost
or hung, every usage record was written once, and every readiness sample after its first second was right.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests` is importable from here


from tests.helpers.fault_stack import FaultStack, usage_records
from tests.helpers.tiny_checkpoint import write_tiny_llama

HUNG_S = 240.0
MAX_TOKENS = 300


@dataclass
class Outcome:
    request_id: str
    kind: str  # ok | error | lost | hung
    code: str | None = None
    ended: float = 0.0
    started: float = 0.0


@dataclass
class Row:
    scenario: str
    outcomes: list[Outcome] = field(default_factory=list)
    fault_at: float = 0.0
    usage: tuple[int, int] | None = None  # (written once, expected)
    extra: str = ""

    def count(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind)

    def p99_to_error(self) -> str:
        """Seconds from the fault (or from the request, for one sent after it) to the request's error."""
        waits = sorted(o.ended - max(o.started, self.fault_at) for o in self.outcomes if o.kind == "error")
        if not waits:
            return "-"
        return f"{waits[min(len(waits) - 1, int(0.99 * len(waits)))]:.2f}"

    def cells(self) -> list[str]:
        usage = "-" if self.usage is None else f"{self.usage[0]}/{self.usage[1]}"
        return [
            self.scenario,
            str(len(self.outcomes)),
            str(self.count("ok")),
            str(self.count("error")),
            str(self.count("lost")),
            str(self.count("hung")),
            self.p99_to_error(),
            usage,
            self.extra,
        ]

    @property
    def good(self) -> bool:
        usage_ok = self.usage is None or self.usage[0] == self.usage[1]
        return self.count("lost") == 0 and self.count("hung") == 0 and usage_ok


async def one_request(client: httpx.AsyncClient, stack: FaultStack, *, stream: bool, tag: str) -> Outcome:
    """One chat, streamed or not, judged as ok / error / lost; hung is the caller's timeout."""
    rid = f"rq-{tag}-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    body = stack.chat_body(MAX_TOKENS, stream=stream, content=f"{tag} {rid}")
    headers = {"x-request-id": rid}
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            now = time.monotonic()
            if r.status_code == 200:
                ok = r.json()["usage"]["completion_tokens"] == MAX_TOKENS
                return Outcome(rid, "ok" if ok else "lost", None, now, t0)
            error = (
                r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
            )
            clean = r.status_code in (400, 429, 503, 504) and bool(error.get("code"))
            return Outcome(rid, "error" if clean else "lost", error.get("code") or str(r.status_code), now, t0)
        body["stream_options"] = {"include_usage": True}
        events: list[dict] = []
        done = False
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                error = r.json().get("error", {})
                clean = r.status_code in (429, 503, 504) and bool(error.get("code"))
                return Outcome(rid, "error" if clean else "lost", error.get("code"), time.monotonic(), t0)
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        now = time.monotonic()
        errors = [e["error"] for e in events if "error" in e]
        if errors and done:
            return Outcome(rid, "error", errors[0].get("code"), now, t0)
        usage = next((e["usage"] for e in events if e.get("usage")), None)
        if done and usage is not None and usage["completion_tokens"] == MAX_TOKENS:
            return Outcome(rid, "ok", None, now, t0)
        return Outcome(rid, "lost", "truncated", now, t0)
    except httpx.HTTPError as e:
        return Outcome(rid, "lost", type(e).__name__, time.monotonic(), t0)


async def time_to_answer(client: httpx.AsyncClient, stack: FaultStack, tag: str) -> tuple[float, int]:
    """(seconds to the status line, status) of a streamed chat, which is then dropped (and cancelled)."""
    started = time.monotonic()
    body = stack.chat_body(MAX_TOKENS, stream=True, content=tag)
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        return time.monotonic() - started, r.status_code


async def bounded(make: Callable[[], Awaitable[Outcome]]) -> Outcome:
    started = time.monotonic()
    try:
        return await asyncio.wait_for(make(), HUNG_S)
    except TimeoutError:
        return Outcome("?", "hung", None, time.monotonic(), started)


async def usage_once(nats_url: str, request_ids: list[str], within_s: float = 60.0) -> tuple[int, int]:
    """(request ids with exactly one usage record, request ids), waiting for the backlog to be written."""
    deadline = time.monotonic() + within_s
    while True:
        found = await usage_records(nats_url, request_ids)
        once = sum(1 for recs in found.values() if len(recs) == 1)
        if once == len(request_ids) or time.monotonic() > deadline:
            return once, len(request_ids)
        await asyncio.sleep(1.0)


def started_stack(root: Path, model: Path, workers: list[str]) -> FaultStack:
    root.mkdir(parents=True, exist_ok=True)
    stack = FaultStack(root, model_path=model).__enter__()
    for w in workers:
        stack.start_worker(w)
    stack.wait_workers(len(workers))
    return stack


def load(client: httpx.AsyncClient, stack: FaultStack, count: int, tag: str) -> list[asyncio.Task[Outcome]]:
    """``count`` requests at once, every other one streamed."""

    def request(i: int) -> Callable[[], Awaitable[Outcome]]:
        return lambda: one_request(client, stack, stream=i % 2 == 0, tag=f"{tag}{i}")

    return [asyncio.create_task(bounded(request(i))) for i in range(count)]


async def worker_fault(stack: FaultStack, what: str, streams: int) -> Row:
    """``streams`` streams (and as many plain requests) over two workers; one is killed or frozen mid-way."""
    row = Row(f"worker {what} under {streams} streams + {streams} plain")
    async with httpx.AsyncClient(base_url=stack.url, timeout=None) as client:
        tasks = load(client, stack, 2 * streams, "w")
        await asyncio.sleep(0.8)
        row.fault_at = time.monotonic()
        if what == "kill -9":
            stack.kill("w-a")
        else:
            stack.freeze("w-a")
        # Requests right after the fault are accepted by the survivor at once (or get a 503), never after a 30 s
        # wait: the time to the response's status line, which comes once a worker has accepted the job.
        after = [await time_to_answer(client, stack, f"after{i}") for i in range(5)]
        row.outcomes += await asyncio.gather(*tasks)
        if what != "kill -9":
            stack.thaw("w-a")
        codes = sorted({code for _, code in after})
        row.extra = f"5 requests right after: answered in max {max(t for t, _ in after):.2f} s ({codes})"
    row.usage = await usage_once(stack.nats.url, [o.request_id for o in row.outcomes if o.request_id != "?"])
    return row


async def nats_restart(stack: FaultStack, outage_s: float, streams: int) -> Row:
    """Requests in flight when nats-server is killed, and requests arriving while it is down."""
    row = Row(f"NATS down {outage_s:.0f} s under {2 * streams} requests")
    async with httpx.AsyncClient(base_url=stack.url, timeout=None) as client:
        tasks = load(client, stack, 2 * streams, "n")
        await asyncio.sleep(0.5)
        row.fault_at = time.monotonic()
        stack.kill_nats()
        during = []
        while time.monotonic() - row.fault_at < outage_s:
            during.append(asyncio.create_task(bounded(lambda: one_request(client, stack, stream=False, tag="down"))))
            await asyncio.sleep(min(5.0, outage_s / 5))
        stack.restart_nats()  # from this thread: the server dies with the thread that started it
        back = time.monotonic()
        while await asyncio.to_thread(stack.ready) != 200:  # noqa: ASYNC110 (polling an HTTP endpoint)
            await asyncio.sleep(0.1)
        recovered = time.monotonic() - back
        row.outcomes += await asyncio.gather(*tasks, *during)
        again = await one_request(client, stack, stream=False, tag="again")
        row.outcomes.append(again)
        row.extra = f"ready {recovered:.1f} s after NATS is back; the next request: {again.kind}"
    row.usage = await usage_once(stack.nats.url, [o.request_id for o in row.outcomes if o.request_id != "?"])
    return row


def readiness(stack: FaultStack, what: str) -> Row:
    """/readyz for the model sampled every 50 ms for 3 s after its last worker is killed or frozen."""
    row = Row(f"/readyz after the last worker's {what}")
    row.fault_at = time.monotonic()
    if what == "kill -9":
        stack.kill("w-a")
    else:
        stack.freeze("w-a")
    samples: list[tuple[float, int]] = []
    while time.monotonic() - row.fault_at < 3.0:
        code = stack.ready()
        samples.append((time.monotonic() - row.fault_at, code))  # when the answer came
        time.sleep(0.05)
    if what != "kill -9":
        stack.thaw("w-a")
    first_503 = next((t for t, code in samples if code == 503), None)
    late = [code for t, code in samples if t >= 1.0]
    wrong = sum(1 for code in late if code != 503)
    row.extra = f"503 after {first_503:.2f} s; {len(late) - wrong}/{len(late)} samples right after 1 s"
    row.outcomes = [Outcome("readyz", "ok" if wrong == 0 and first_503 is not None else "lost")]
    return row


async def main_async(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ember-faults-") as tmp:
        root = Path(tmp)
        model = write_tiny_llama(root / "model")
        for what in ("kill -9", "SIGSTOP"):
            stack = started_stack(root / f"w-{what[:4]}", model, ["w-a", "w-b"])
            try:
                rows.append(await worker_fault(stack, what, args.streams))
            finally:
                stack.__exit__(None, None, None)
            print(" | ".join(rows[-1].cells()), flush=True)
        for what in ("kill -9", "SIGSTOP"):
            stack = started_stack(root / f"r-{what[:4]}", model, ["w-a"])
            try:
                rows.append(readiness(stack, what))
            finally:
                stack.__exit__(None, None, None)
            print(" | ".join(rows[-1].cells()), flush=True)
        for outage in (10.0, args.long_outage):
            stack = started_stack(root / f"n-{outage:.0f}", model, ["w-a", "w-b"])
            try:
                rows.append(await nats_restart(stack, outage, args.streams // 2))
            finally:
                stack.__exit__(None, None, None)
            print(" | ".join(rows[-1].cells()), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--long-outage", type=float, default=150.0)
    p.add_argument("--skip-async", action="store_true", help="leave out benchmarks/faults_async.py's scenario")
    args = p.parse_args()
    header = ["scenario", "N", "ok", "errors", "lost", "hung", "p99 s to error", "usage once", "notes"]
    print(" | ".join(header), flush=True)
    rows = asyncio.run(main_async(args))
    good = all(r.good for r in rows)
    if not args.skip_async:
        import faults_async

        t = faults_async.run()
        print(
            f"{faults_async.SCENARIO} | {t.n} | {t.completed} | {t.failed} | {t.lost} | 0 | - | "
            f"{t.usage_records - t.duplicated}/{t.n} | duplicated {t.duplicated}, re-runs {t.reruns}"
        )
        good = good and (t.completed, t.lost, t.duplicated, t.usage_records) == (t.n, 0, 0, t.n)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r.cells()) + " |")
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
