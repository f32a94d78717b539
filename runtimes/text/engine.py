"""Continuous batching: requests join and leave the running batch at step boundaries.

The engine owns one thread that runs the model; the asyncio side only queues requests and reads outputs.
Each step::

    admit      waiting requests take free KV slots: highest priority first, then the key served least
               (start-time fair queuing, fair_queue.py), then the oldest
    prefill    admitted prompts run in chunks of at most ``prefill_chunk`` tokens per step, so one long
               prompt delays the running decodes by a bounded amount; a finished prefill samples token 1
    decode     every running sequence advances one token in ONE batched forward; rows with a grammar get their
               token mask on the logits, then the whole batch is sampled at once
    emit       per sequence, the step's tokens become one StepOutput (the worker sends it as one message)

A failing step fails only the sequences in it; the engine keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import llguidance
import torch

from ember.bus.messages import ErrorInfo, JobStatus, SamplingParams, TokenLogprob, Usage
from ember.runtimes.fair_queue import FairQueue
from ember.runtimes.text.detokenizer import IncrementalDetokenizer
from ember.runtimes.text.grammar import TokenMasks
from ember.runtimes.text.runner import ModelRunner
from ember.runtimes.text.sampling import SampleOutput, Sampler, SequenceSampling
from ember.runtimes.text.tokenizer import TextTokenizer

log = logging.getLogger("ember.text.engine")


class EngineOverloaded(Exception):
    """The waiting queue is full; the caller should answer 503 and let the client retry."""


@dataclass(frozen=True)
class EngineConfig:
    # Sequences decoded together (= KV cache slots).
    max_batch: int = 8
    # Requests queued beyond the batch before new ones are refused.
    max_waiting: int = 256
    # Prompt tokens prefilled per step.
    prefill_chunk: int = 256


@dataclass
class GenerateRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    # Already resolved against the context: prompt + max_tokens <= max_context.
    max_tokens: int
    priority: int = 0
    # Whose request it is (an API key id); fairness in the queue is per key.
    key: str = ""
    # Constrained decoding: every token is picked among those this matcher allows, and fed back to it
    # (ember.runtimes.text.grammar). Compiled by the caller, off the engine thread.
    matcher: llguidance.LLMatcher | None = None


@dataclass
class StepOutput:
    """What one step produced for one request."""

    text: str
    token_ids: list[int]
    status: JobStatus
    logprobs: list[TokenLogprob] | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None


@dataclass
class _Sequence:
    req: GenerateRequest
    detok: IncrementalDetokenizer
    emit: Callable[[StepOutput], None]
    # Made on the engine thread when the sequence is admitted (see the NOTE on threads in TextEngine).
    sampling: SequenceSampling | None = None
    slot: int = -1
    num_prefilled: int = 0
    output_ids: list[int] = field(default_factory=list)
    status: JobStatus = JobStatus.QUEUED
    # This step's output, flushed as one StepOutput at the end of the step.
    pending_text: list[str] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def prefilled(self) -> bool:
        return self.num_prefilled == len(self.req.prompt_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.req.prompt_ids) + len(self.output_ids)


class OutputStream:
    """One request's outputs, until the finished one. ``aclose()`` before the end aborts the request."""

    def __init__(self, engine: TextEngine, request_id: str, queue: asyncio.Queue[StepOutput]) -> None:
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
        self.finished = out.status.finished
        return out

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self._engine.abort(self.request_id)


class TextEngine:
    """Runs a ModelRunner over many concurrent requests; ``generate`` is the asyncio entry point.

    NOTE: one thread owns every torch call of a worker process: it loads the model and then runs this loop.
    A parallel torch op on any other thread starts a second OpenMP team, and the two teams then share the cores
    so badly that decoding runs at half speed (measured: 42 -> 21 tok/s on SmolLM2-135M, 2 cores). Hence the
    asyncio side never touches torch, and sampling state is made here on admission.
    """

    def __init__(self, runner: ModelRunner, tokenizer: TextTokenizer, config: EngineConfig) -> None:
        if config.max_batch > runner.max_slots:
            raise ValueError(f"max_batch={config.max_batch} exceeds the runner's {runner.max_slots} KV slots")
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.sampler = Sampler()
        self.masks = TokenMasks(runner.vocab_size)
        self._eos = frozenset(tokenizer.eos_token_ids)
        self._lock = threading.Condition()
        self._arrivals: list[_Sequence] = []
        self._aborts: set[str] = set()
        self._waiting: FairQueue[_Sequence] = FairQueue()
        self._running: list[_Sequence] = []
        self._by_id: dict[str, _Sequence] = {}
        self._free_slots = list(range(config.max_batch - 1, -1, -1))
        self._stop = False
        self._thread: threading.Thread | None = None
        self.steps = 0

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
            return len(self._running), len(self._waiting) + len(self._arrivals)

    def generate(self, req: GenerateRequest) -> OutputStream:
        """Queue a request at once (raises EngineOverloaded when full); iterate the result for its outputs."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[StepOutput] = asyncio.Queue()
        seq = _Sequence(
            req=req,
            detok=IncrementalDetokenizer(self.tokenizer, req.prompt_ids, stop=req.sampling.stop),
            emit=lambda out: loop.call_soon_threadsafe(queue.put_nowait, out),
        )
        self.submit(seq)
        return OutputStream(self, req.request_id, queue)

    def submit(self, seq: _Sequence) -> None:
        with self._lock:
            if seq.req.request_id in self._by_id:
                raise ValueError(f"request id {seq.req.request_id!r} is already running")
            # _by_id holds every unfinished request (queued or running) and changes only under the lock.
            if len(self._by_id) >= self.config.max_batch + self.config.max_waiting:
                raise EngineOverloaded(f"{self.config.max_waiting} requests are already waiting")
            self._by_id[seq.req.request_id] = seq
            self._arrivals.append(seq)
            self._lock.notify()

    def abort(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._by_id:
                self._aborts.add(request_id)
                self._lock.notify()

    # ---- engine thread ------------------------------------------------------------------------------------

    def run(self) -> None:
        """The engine loop; blocks until ``stop``."""
        self._thread = threading.current_thread()
        torch.set_grad_enabled(False)
        while True:
            with self._lock:
                while not (self._stop or self._arrivals or self._aborts or self._running or self._waiting):
                    self._lock.wait()
                if self._stop:
                    break
                arrivals, self._arrivals = self._arrivals, []
                aborts, self._aborts = self._aborts, set()
            for seq in arrivals:
                r = seq.req
                self._waiting.push(seq, request_id=r.request_id, key=r.key, priority=r.priority)
            self._apply_aborts(aborts)
            self._admit()
            if self._running:
                self._step()
        for seq in [*self._running, *self._waiting]:
            self._finish(seq, JobStatus.FINISHED_ABORTED)
        self._flush()

    def _apply_aborts(self, aborts: set[str]) -> None:
        if not aborts:
            return
        for seq in self._waiting.remove(aborts):
            self._finish(seq, JobStatus.FINISHED_ABORTED)
        for seq in list(self._running):
            if seq.req.request_id in aborts:
                self._finish(seq, JobStatus.FINISHED_ABORTED)
        self._flush()

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            seq = self._waiting.pop()
            seq.slot = self._free_slots.pop()
            seq.status = JobStatus.RUNNING
            seq.sampling = SequenceSampling.create(seq.req.sampling, self.runner.vocab_size, self.runner.device)
            self._running.append(seq)

    def _step(self) -> None:
        self.steps += 1
        prefilling = [s for s in self._running if not s.prefilled]
        decoding = [s for s in self._running if s.prefilled]
        try:
            self._prefill(prefilling)
        except Exception as e:
            log.exception("prefill failed")
            self._fail([s for s in prefilling if not s.status.finished], e)
        try:
            if decoding:
                self._decode(decoding)
        except Exception as e:
            log.exception("decode step failed")
            self._fail([s for s in decoding if not s.status.finished], e)
        self._flush()

    def _prefill(self, seqs: Sequence[_Sequence]) -> None:
        budget = self.config.prefill_chunk
        for seq in seqs:
            if budget <= 0:
                break
            start = seq.num_prefilled
            n = min(len(seq.req.prompt_ids) - start, budget)
            logits = self.runner.prefill(seq.slot, seq.req.prompt_ids[start : start + n], start_pos=start)
            seq.num_prefilled += n
            budget -= n
            if seq.prefilled:
                # logits: [V] of the last prompt position -> the first generated token
                assert seq.sampling is not None  # set on admission
                logits = logits[None]  # [1, V]
                self.masks.apply(logits, [seq.req.matcher])
                self._accept(seq, self.sampler.sample(logits, [seq.sampling]), 0)

    def _decode(self, seqs: Sequence[_Sequence]) -> None:
        logits = self.runner.decode(
            [s.slot for s in seqs], [s.output_ids[-1] for s in seqs], [s.num_tokens - 1 for s in seqs]
        )  # [B, V]
        self.masks.apply(logits, [s.req.matcher for s in seqs])
        sampled = self.sampler.sample(logits, [s.sampling for s in seqs if s.sampling is not None])
        for i, seq in enumerate(seqs):
            self._accept(seq, sampled, i)

    def _accept(self, seq: _Sequence, sampled: SampleOutput, i: int) -> None:
        """Append one sampled token to ``seq`` and decide whether it is finished."""
        token = sampled.token_ids[i]
        seq.output_ids.append(token)
        seq.pending_ids.append(token)
        if seq.req.sampling.logprobs and sampled.logprobs is not None:
            top = sampled.top_logprobs[i] if sampled.top_logprobs else []
            seq.pending_logprobs.append(self._logprob(token, sampled.logprobs[i], top))
        matcher = seq.req.matcher
        if matcher is not None and not matcher.consume_token(token):
            # The mask allowed only tokens the matcher accepts: a bug, which fails this sequence alone.
            self._fail([seq], RuntimeError(f"the grammar rejected token {token}: {matcher.get_error()}"))
            return
        if token in self._eos and (not seq.req.sampling.ignore_eos or matcher is not None):
            self._finish(seq, JobStatus.FINISHED_STOPPED)
            return
        seq.pending_text.append(seq.detok.add(token))
        if seq.detok.stopped or (matcher is not None and matcher.is_stopped()):
            self._finish(seq, JobStatus.FINISHED_STOPPED)
        elif len(seq.output_ids) >= seq.req.max_tokens or seq.num_tokens >= self.runner.max_context:
            self._finish(seq, JobStatus.FINISHED_LENGTH)

    def _logprob(self, token: int, logprob: float, top: Sequence[tuple[int, float]]) -> TokenLogprob:
        def entry(t: int, lp: float) -> dict[str, object]:
            raw = self.tokenizer.token_bytes(t)
            return {"token": raw.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(raw)}

        raw = self.tokenizer.token_bytes(token)
        return TokenLogprob(
            token=raw.decode("utf-8", errors="replace"),
            logprob=logprob,
            bytes=list(raw),
            top_logprobs=[entry(t, lp) for t, lp in top],
        )

    def _finish(self, seq: _Sequence, status: JobStatus, error: ErrorInfo | None = None) -> None:
        if seq.status.finished:
            return
        if status in (JobStatus.FINISHED_STOPPED, JobStatus.FINISHED_LENGTH) and not seq.detok.stopped:
            seq.pending_text.append(seq.detok.flush())
        seq.status = status
        if seq in self._running:
            self._running.remove(seq)
            self._free_slots.append(seq.slot)
        seq.slot = -1
        with self._lock:
            self._by_id.pop(seq.req.request_id, None)
        usage = Usage(prompt_tokens=len(seq.req.prompt_ids), completion_tokens=len(seq.output_ids))
        seq.emit(self._drain(seq, status, usage, error))

    def _fail(self, seqs: Sequence[_Sequence], e: Exception) -> None:
        error = ErrorInfo(status=500, type="server_error", code="engine_error", message=f"generation failed: {e}")
        for seq in seqs:
            self._finish(seq, JobStatus.FINISHED_ERROR, error)

    def _flush(self) -> None:
        """Send each running sequence's output of this step as one message."""
        for seq in self._running:
            if seq.pending_ids or seq.pending_text:
                seq.emit(self._drain(seq, JobStatus.RUNNING, None, None))

    @staticmethod
    def _drain(seq: _Sequence, status: JobStatus, usage: Usage | None, error: ErrorInfo | None) -> StepOutput:
        out = StepOutput(
            text="".join(seq.pending_text),
            token_ids=seq.pending_ids,
            status=status,
            logprobs=seq.pending_logprobs or None,
            usage=usage,
            error=error,
        )
        seq.pending_text, seq.pending_ids, seq.pending_logprobs = [], [], []
        return out
