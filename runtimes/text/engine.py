"""The text engine: continuous batching over a paged KV cache, one forward per step.

The engine owns one thread that runs the model; the asyncio side only queues requests and reads outputs. Each
step wires four parts, each with one job::

    scheduler.schedule()          which requests run and how many tokens each (decodes, prefill chunks, drafts
                                  to verify), KV blocks allocated, prefix-cache hits taken, preemptions made
    runner.execute(output)        ONE forward over the flattened batch; logits of the rows that sample (runner.py)
    scheduler.update(output)      computed marks move on and full blocks enter the prefix cache
    masks + sampler               grammar masks on those rows, then one sampling call for the batch, which also
                                  accepts or rejects the drafts (sampling.Sampler.verify)
    outputs.accept(...)           tokens become text, stops and finish reasons (output_processor.py)
    scheduler.verified(...)       a draft's accepted tokens' KV is kept, the rejected rest rolled back

A failing step fails only the requests in it; the engine keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Literal

import torch

from ember.bus.messages import ErrorInfo, JobStatus
from ember.runtimes.process_memory import release_freed_memory
from ember.runtimes.serving import EngineOverloaded
from ember.runtimes.step_clock import StepClock
from ember.runtimes.text.block_pool import BlockPool
from ember.runtimes.text.call_gate import CALL_NAME_TOKENS, NameWatch
from ember.runtimes.text.detokenizer import IncrementalDetokenizer
from ember.runtimes.text.grammar import TokenMasks
from ember.runtimes.text.kv_manager import KVCacheManager
from ember.runtimes.text.output_processor import GrammarViolation, OutputProcessor, OutputState, StepOutput
from ember.runtimes.text.request import GenerateRequest, Request
from ember.runtimes.text.runner import ModelRunner
from ember.runtimes.text.sampling import SampleOutput, Sampler, SequenceSampling
from ember.runtimes.text.scheduler import ScheduledChunk, Scheduler, SchedulerConfig, SchedulerOutput
from ember.runtimes.text.spec_decode import Drafter, PromptLookupDrafter, SpecConfig, SpeculativeMode, Speculator
from ember.runtimes.text.tokenizer import TextTokenizer

__all__ = ["EngineConfig", "EngineOverloaded", "GenerateRequest", "OutputStream", "StepOutput", "TextEngine"]

log = logging.getLogger("ember.text.engine")

PrefixCacheMode = Literal["shared", "per_key", "off"]


@dataclass(frozen=True)
class EngineConfig:
    # Requests running at once. Memory is the KV pool's budget, not this: a running request holds only the blocks
    # its tokens fill.
    max_batch: int = 32
    # Requests queued beyond the running ones before new ones are refused.
    max_waiting: int = 256
    # Prompt tokens computed per step (decodes ride along); bounds how long one step delays the decodes.
    max_step_tokens: int = 512
    # "shared": any request may reuse any cached prefix; "per_key": only those of its own API key (no timing side
    # channel between tenants); "off": no prefix caching.
    prefix_cache: PrefixCacheMode = "shared"
    # Speculative decoding (spec_decode/): "auto" drafts where it pays, "always" on every decode (that finds a match,
    # with prompt lookup), "off" never; at most num_speculative_tokens drafts per request and step. The drafters are
    # the engine's (prompt lookup, then a draft model: build_engine), or prompt lookup alone.
    speculative: SpeculativeMode = "auto"
    num_speculative_tokens: int = 4


class OutputStream:
    """One request's outputs, until the finished one. ``aclose()`` before the end aborts the request.

    A request withdrawn before it started (``TextEngine.withdraw``) ends with no output at all.
    """

    def __init__(self, engine: TextEngine, request_id: str, queue: asyncio.Queue[StepOutput | None]) -> None:
        self._engine = engine
        self.request_id = request_id
        self._queue = queue
        self.finished = False

    def __aiter__(self) -> OutputStream:
        return self

    async def __anext__(self) -> StepOutput:
        if self.finished:
            raise StopAsyncIteration
        out = await self._queue.get()
        if out is None:  # withdrawn
            self.finished = True
            raise StopAsyncIteration
        self.finished = out.status.finished
        return out

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)


@dataclass
class _Entry:
    req: Request
    out: OutputState


# An idle engine whose KV pool was shrunk for another runtime grows it back no sooner than this after the shrink
# (and only where there is room): the memory was needed a moment ago, likely again soon.
GROW_BACK_AFTER_S = 30.0


class TextEngine:
    """Runs a ModelRunner over many concurrent requests; ``generate`` is the asyncio entry point.

    NOTE: one thread owns every torch call of a worker process: it loads the model and then runs this loop.
    A parallel torch op on any other thread starts a second OpenMP team, and the two teams then share the cores
    so badly that decoding runs at half speed (measured: 42 -> 21 tok/s on SmolLM2-135M, 2 cores). Hence the
    asyncio side never touches torch, and sampling state is made here.
    """

    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: TextTokenizer,
        config: EngineConfig,
        drafters: Sequence[Drafter] = (),
    ) -> None:
        if config.max_batch > runner.max_batch:
            raise ValueError(f"max_batch={config.max_batch} exceeds the runner's {runner.max_batch} rows")
        # Steps with a prompt chunk run padded: the scheduler fills the padding with prompt tokens that wait.
        scheduling = SchedulerConfig(config.max_batch, config.max_step_tokens, step_rows=runner.step_rows)
        if scheduling.step_capacity > runner.max_step_tokens:
            raise ValueError(
                f"a step of up to {scheduling.step_capacity} tokens exceeds the runner's {runner.max_step_tokens}"
            )
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.max_context = runner.max_context
        self.kv = KVCacheManager(
            BlockPool(runner.cache.num_blocks, runner.block_size), caching=config.prefix_cache != "off"
        )
        self.speculator: Speculator | None = None
        if config.speculative != "off":
            spec = SpecConfig(config.speculative, config.num_speculative_tokens)
            self.speculator = Speculator(spec, drafters or [PromptLookupDrafter()], runner.max_context)
        self.scheduler = Scheduler(scheduling, self.kv, self.speculator)
        self.outputs = OutputProcessor(tokenizer, runner.max_context)
        self.sampler = Sampler()
        self.masks = TokenMasks(runner.vocab_size)
        self._lock = threading.Condition()
        self._arrivals: list[_Entry] = []
        self._aborts: set[str] = set()
        self._stops: set[str] = set()
        # request id -> how to answer its withdraw() (from the engine thread).
        self._withdrawals: dict[str, Callable[[bool], None]] = {}
        # Every unfinished request (arrived, waiting or running); changes only under the lock.
        self._live: dict[str, _Entry] = {}
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        # Counters for metrics (read by the worker when scraped): tokens computed as prompt or as decode (drafts
        # included), and tokens generated.
        self.prefill_tokens = 0
        self.decode_tokens = 0
        self.generated_tokens = 0
        # Probes report a stuck engine from it.
        self.clock = StepClock()
        # KV pool resizes asked for from other threads (resize_kv), applied between steps.
        self._kv_resizes: list[tuple[Callable[[], int], Future[int]]] = []
        # The pool's size as configured, which an idle engine grows back to after a shrink once ``may_grow``
        # (bytes more) says the device has room (a device group sets it: device_group.slot); None: never.
        self.kv_blocks_configured = runner.cache.num_blocks
        self._block_bytes = runner.cache.nbytes // runner.cache.num_blocks
        self.may_grow: Callable[[int], bool] | None = None
        self._shrunk_at = 0.0

    # ---- asyncio side -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the engine loop on a new thread (``run`` it yourself to use a thread that already holds the model)."""
        threading.Thread(target=self.run, name="ember-text-engine", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def load(self) -> tuple[int, int]:
        """(running, waiting) right now."""
        with self._lock:
            running = len(self.scheduler.running)
            return running, len(self._live) - running

    def generate(self, req: GenerateRequest) -> OutputStream:
        """Queue a request at once (raises EngineOverloaded when full); iterate the result for its outputs."""
        if len(req.prompt_ids) + 1 > self.max_context:
            raise ValueError(
                f"a prompt of {len(req.prompt_ids)} tokens leaves no room in max_context={self.max_context}"
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StepOutput | None] = asyncio.Queue()
        state = OutputState(
            detok=IncrementalDetokenizer(self.tokenizer, req.prompt_ids, stop=req.sampling.stop),
            emit=lambda out: loop.call_soon_threadsafe(queue.put_nowait, out),
        )
        self._submit(_Entry(Request(req, cache_salt=self._salt(req)), state))
        return OutputStream(self, req.request_id, queue)

    def _salt(self, req: GenerateRequest) -> str | None:
        mode = self.config.prefix_cache
        if mode == "off":
            return None
        # A NUL keeps a key id from ever equalling the shared salt.
        return "" if mode == "shared" else f"\0{req.key}"

    def _submit(self, entry: _Entry) -> None:
        rid = entry.req.request_id
        with self._lock:
            if rid in self._live:
                raise ValueError(f"request id {rid!r} is already running")
            if len(self._live) >= self.config.max_batch + self.config.max_waiting:
                raise EngineOverloaded(f"{self.config.max_waiting} requests are already waiting")
            self._live[rid] = entry
            self._arrivals.append(entry)
            self._lock.notify()

    def abort(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._live:
                self._aborts.add(request_id)
                self._lock.notify()

    async def withdraw(self, request_id: str) -> bool:
        """Take back a request that has not started (waiting for a place, nothing generated): its output stream
        ends with no output, and its worker hands the job to another. False where it started, ended or is
        unknown. Decided on the engine thread between steps, since the scheduler's queue is that thread's alone."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[bool] = loop.create_future()

        def settle(ok: bool) -> None:
            if not answered.done():
                answered.set_result(ok)

        def answer(ok: bool) -> None:
            loop.call_soon_threadsafe(settle, ok)

        with self._lock:
            entry = self._live.get(request_id)
            if entry is None:
                return False
            if any(e is entry for e in self._arrivals):  # not even in the scheduler yet
                self._arrivals = [e for e in self._arrivals if e is not entry]
                del self._live[request_id]
                entry.out.emit(None)
                return True
            self._withdrawals[request_id] = answer
            self._lock.notify()
        return await answered

    def stop_request(self, request_id: str) -> None:
        """End a request as if it had stopped by itself: its caller has all it wants of the reply (the tool-call
        parser, at a repeated call). Its last output, with its usage, says FINISHED_STOPPED; tokens sampled
        before the engine gets to it are still sent."""
        with self._lock:
            if request_id in self._live:
                self._stops.add(request_id)
                self._lock.notify()

    def resize_kv(self, num_blocks: int) -> Future[int]:
        """Make the KV pool ``num_blocks`` blocks (never fewer than one max_context sequence needs), between two
        steps: every running request goes back to the waiting queue and recomputes its blocks when it runs again
        (its output so far is kept, greedy output unchanged), and the prefix cache is emptied, since the cache's
        memory is given up before the new one is allocated. Thread-safe; the future gives the bytes freed
        (negative when the pool grew). For a device group: another runtime that ran out of memory takes it back."""
        return self._ask_resize(lambda: num_blocks)

    def release_kv(self, nbytes: int) -> Future[int]:
        """Shrink the KV pool by at least ``nbytes`` (``resize_kv``'s way); the future gives the bytes freed."""

        def target() -> int:
            return self.kv.pool.num_blocks - -(-nbytes // self._block_bytes)

        return self._ask_resize(target)

    def _ask_resize(self, target: Callable[[], int]) -> Future[int]:
        done: Future[int] = Future()
        with self._lock:
            self._kv_resizes.append((target, done))
            self._lock.notify()
        return done

    # ---- engine thread ------------------------------------------------------------------------------------

    def run(self) -> None:
        """The engine loop; blocks until ``stop``."""
        self._thread = threading.current_thread()
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not (
                    self._stop
                    or self._arrivals
                    or self._aborts
                    or self._stops
                    or self._withdrawals
                    or self._kv_resizes
                    or len(self.scheduler)
                ):
                    self._lock.wait(timeout=self._idle_wait())
                    if self._grow_back():
                        continue
                if self._stop:
                    break
                resizes, self._kv_resizes = self._kv_resizes, []
                arrivals, self._arrivals = self._arrivals, []
                aborts, self._aborts = self._aborts, set()
                stops, self._stops = self._stops - aborts, set()
                withdrawals, self._withdrawals = self._withdrawals, {}
            for target, done in resizes:
                try:
                    done.set_result(self._resize_kv(target()))
                except Exception as e:  # an allocation that failed: the asker hears of it, the engine serves on
                    log.exception("resizing the KV pool failed")
                    done.set_exception(e)
            for entry in arrivals:
                self.scheduler.add(entry.req)
            for rid, answer in withdrawals.items():
                answer(rid not in aborts and self._withdraw(rid))
            for ended, status in ((aborts, JobStatus.FINISHED_ABORTED), (stops, JobStatus.FINISHED_STOPPED)):
                if ended:
                    for req in self.scheduler.remove(ended):
                        self._finish(req, status)
            with self.clock.step():
                self._step()
            if not len(self.scheduler):
                # Idle: hand the step temporaries' pages back (process_memory.py), off every request's path.
                release_freed_memory()
        for req in [*self.scheduler.running, *self.scheduler.waiting_requests()]:
            self._finish(req, JobStatus.FINISHED_ABORTED)
        with self._lock:
            withdrawals, self._withdrawals = self._withdrawals, {}
        for answer in withdrawals.values():
            answer(False)

    def _resize_kv(self, num_blocks: int) -> int:
        num_blocks = max(num_blocks, self.runner.min_cache_blocks)
        before = self.runner.cache.nbytes
        if num_blocks == self.kv.pool.num_blocks:
            return 0
        preempted = self.scheduler.preempt_all()
        try:
            self.runner.resize_cache(num_blocks)
        finally:  # the cache the runner has now, the asked size or (it failed) the least one
            self.kv.pool = BlockPool(self.runner.cache.num_blocks, self.runner.block_size)
        freed = before - self.runner.cache.nbytes
        if freed > 0:
            self._shrunk_at = time.monotonic()
        log.info(
            "KV pool resized to %d blocks (%+.0f MiB), %d running requests preempted",
            num_blocks,
            -freed / 2**20,
            len(preempted),
        )
        return freed

    def _idle_wait(self) -> float | None:
        """How long an idle engine sleeps before it looks again whether its shrunk KV pool may grow back."""
        shrunk = self.kv.pool.num_blocks < self.kv_blocks_configured
        return GROW_BACK_AFTER_S if shrunk and self.may_grow is not None else None

    def _grow_back(self) -> bool:
        """Called idle, under the lock: grow a shrunk pool back to its configured size once it has been
        ``GROW_BACK_AFTER_S`` since the shrink and ``may_grow`` finds room; True when it did."""
        missing = self.kv_blocks_configured - self.kv.pool.num_blocks
        if missing <= 0 or self.may_grow is None or time.monotonic() - self._shrunk_at < GROW_BACK_AFTER_S:
            return False
        if not self.may_grow(missing * self._block_bytes):
            return False
        try:
            self._resize_kv(self.kv_blocks_configured)
        except Exception:  # the room was gone by the time of the allocation: the pool is as small as it may be now
            log.exception("growing the KV pool back failed; trying again in %.0f s", GROW_BACK_AFTER_S)
            self._shrunk_at = time.monotonic()
        return True

    def _withdraw(self, request_id: str) -> bool:
        req = next((r for r in self.scheduler.waiting_requests() if r.request_id == request_id), None)
        if req is None or req.num_output_tokens:  # running, or preempted after it had sent tokens
            return False
        self.scheduler.remove({request_id})
        with self._lock:
            entry = self._live.pop(request_id)
        entry.out.emit(None)
        return True

    def _step(self) -> None:
        started = time.perf_counter()
        out = self.scheduler.schedule()
        for req in out.preempted:
            log.info("preempted %s at %d tokens (KV pool full)", req.request_id, req.num_tokens)
        if not out:
            return
        self.steps += 1
        self.clock.rows(len(out.chunks))
        for c in out.chunks:
            prompt = max(0, min(c.start + c.num_tokens, c.request.num_prompt_tokens) - c.start)
            self.prefill_tokens += prompt
            self.decode_tokens += c.num_tokens - prompt
        sampling = [c for c in out.chunks if c.samples]
        sampled: list[SampleOutput] = []
        try:
            logits = self.runner.execute(out)  # [S, V]: chunk.num_sampled rows per sampling chunk
            self.scheduler.update(out)
            if sampling:
                entries = [self._live_entry(c.request) for c in sampling]
                for e in entries:
                    if e.out.sampling is None:
                        e.out.sampling = SequenceSampling.create(
                            e.req.params.sampling, self.runner.vocab_size, logits.device
                        )
                # Requests under a grammar never draft (Speculator._length): their rows are single.
                self._gate_calls(logits, sampling)
                confidence = self._call_confidence_before(logits, sampling, entries)
                self.masks.apply(
                    logits,
                    [c.request.params.matcher if i == 0 else None for c in sampling for i in range(c.num_sampled)],
                )
                self._call_confidence_after(logits, confidence)
                seqs = [e.out.sampling for e in entries if e.out.sampling is not None]
                sampled = self.sampler.verify(logits, seqs, [c.draft_ids for c in sampling])
        except Exception as e:
            log.exception("step %d failed", self.steps)
            self._fail(self._step_requests(out), e)
            return
        for chunk, emitted in zip(sampling, sampled, strict=True):
            self.generated_tokens += len(emitted.token_ids)
            req = chunk.request
            entry = self._live_entry(req)
            gate = req.params.call_gate
            if gate is not None and gate.name_threshold > 0 and req.num_output_tokens == 0 and emitted.token_ids:
                # A reply that begins with a call: measure how sure the model is of its function's name.
                entry.out.name_watch = NameWatch() if gate.begins_call(emitted.token_ids[0]) else None
            watch = entry.out.name_watch
            if watch is not None and not watch.done:
                for token in emitted.token_ids:
                    watch.add(self.tokenizer.token_bytes(token))
            try:
                status = self.outputs.accept(req, entry.out, emitted)
            except GrammarViolation as e:
                self._fail([req], e)
                continue
            if status is not None:
                self._finish(req, status)
            if chunk.draft_ids:
                self.scheduler.verified(chunk, len(emitted.token_ids) - 1)
        for req in self.scheduler.running:
            self.outputs.flush(self._live_entry(req).out)
        if self.speculator is not None:
            self.speculator.timed(out.num_tokens, time.perf_counter() - started)

    @staticmethod
    def _gate_calls(logits: torch.Tensor, sampling: list[ScheduledChunk]) -> None:
        """Close the call gate of requests about to sample their first token, where the model is unsure of a call
        (call_gate); before the grammar's mask, which would hide how sure it is."""
        row = 0
        for c in sampling:
            gate = c.request.params.call_gate
            if gate is not None and c.request.num_output_tokens == 0 and not gate.apply(logits[row]):
                log.debug("%s: no call (the model is not sure enough of one)", c.request.request_id)
            row += c.num_sampled

    @staticmethod
    def _call_confidence_before(
        logits: torch.Tensor, sampling: list[ScheduledChunk], entries: list[_Entry]
    ) -> list[tuple[int, NameWatch, torch.Tensor]]:
        """The rows whose next token is part of a call's function name (call_gate.NameWatch), with the log of their
        raw logits' total mass, before the grammar's mask."""
        rows, row = [], 0
        for c, e in zip(sampling, entries, strict=True):
            watch = e.out.name_watch
            if watch is not None and watch.measuring() and c.request.num_output_tokens < CALL_NAME_TOKENS:
                rows.append((row, watch, torch.logsumexp(logits[row].float(), dim=-1)))
            row += c.num_sampled
        return rows

    @staticmethod
    def _call_confidence_after(logits: torch.Tensor, rows: list[tuple[int, NameWatch, torch.Tensor]]) -> None:
        """Multiply in the raw probability of the tokens the grammar allowed: the masked row's mass over the raw one."""
        for row, watch, raw in rows:
            allowed = torch.logsumexp(logits[row].float(), dim=-1)
            watch.confidence *= float(torch.exp(allowed - raw))

    @property
    def spec_drafted_tokens(self) -> int:
        """Draft tokens verified so far (speculative decoding), for metrics."""
        return self.speculator.drafted_tokens if self.speculator else 0

    @property
    def spec_accepted_tokens(self) -> int:
        """Draft tokens accepted so far, for metrics: the acceptance rate is this over ``spec_drafted_tokens``."""
        return self.speculator.accepted_tokens if self.speculator else 0

    def _live_entry(self, req: Request) -> _Entry:
        return self._live[req.request_id]

    @staticmethod
    def _step_requests(out: SchedulerOutput) -> list[Request]:
        return [c.request for c in out.chunks]

    def _finish(self, req: Request, status: JobStatus, error: ErrorInfo | None = None) -> None:
        with self._lock:
            entry = self._live.pop(req.request_id, None)
        if entry is None:
            return  # finished already
        self.scheduler.finish(req)
        req.status = status
        if req.draft.steps:
            log.debug(
                "%s: %d of %d drafted tokens accepted (%.0f%%) in %d steps",
                req.request_id,
                req.draft.accepted,
                req.draft.drafted,
                100 * req.draft.acceptance,
                req.draft.steps,
            )
        self.outputs.finish(req, entry.out, status, error)

    def _fail(self, reqs: list[Request], e: Exception) -> None:
        error = ErrorInfo(status=500, type="server_error", code="engine_error", message=f"generation failed: {e}")
        for req in reqs:
            self._finish(req, JobStatus.FINISHED_ERROR, error)
