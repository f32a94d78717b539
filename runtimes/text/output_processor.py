"""From sampled token ids to what a client reads: text, logprobs, the grammar's advance, stops and finish reasons.

The engine hands each request's sampled tokens to ``accept`` (one, or with speculative decoding up to k + 1),
which appends them to the request in order and says whether the request is finished (EOS, a stop string, the
grammar's end, max_tokens, the context); tokens after the one that finishes it are dropped. Text is buffered per
request and sent once per step (``flush``) as one StepOutput; the last one (``finish``) carries the usage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ember.bus.messages import ErrorInfo, JobStatus, TokenLogprob, Usage
from ember.runtimes.text.call_gate import NameWatch
from ember.runtimes.text.detokenizer import IncrementalDetokenizer
from ember.runtimes.text.request import Request
from ember.runtimes.text.sampling import SampleOutput, SequenceSampling
from ember.runtimes.text.tokenizer import TextTokenizer


@dataclass
class StepOutput:
    """What one step produced for one request."""

    text: str
    token_ids: list[int]
    status: JobStatus
    logprobs: list[TokenLogprob] | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    # Under tool_choice auto, a reply that began with a call: how sure the model was of its function's name so far
    # (call_gate.NameWatch); None for other replies.
    call_confidence: float | None = None


@dataclass
class OutputState:
    """One request's output side: its detokenizer, where its outputs go, and this step's pending output."""

    detok: IncrementalDetokenizer
    emit: Callable[[StepOutput | None], None]  # None: the request was withdrawn
    # Made on the engine thread when the request first samples (see the NOTE on threads in TextEngine).
    sampling: SequenceSampling | None = None
    pending_text: list[str] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    # Kept by the engine for a reply that began with a call, under auto (call_gate.py); None otherwise.
    name_watch: NameWatch | None = None


class GrammarViolation(RuntimeError):
    """The matcher refused a token its own mask allowed: a bug, which fails that request alone."""


class OutputProcessor:
    def __init__(self, tokenizer: TextTokenizer, max_context: int) -> None:
        self.tokenizer = tokenizer
        self.max_context = max_context
        self._eos = frozenset(tokenizer.eos_token_ids)

    def accept(self, req: Request, state: OutputState, sampled: SampleOutput) -> JobStatus | None:
        """Append ``sampled``'s tokens (all of them one request's) to ``req`` in order until one ends it; the
        finished status if one did, else None.

        Raises GrammarViolation when the request's matcher refuses a token.
        """
        for i in range(len(sampled.token_ids)):
            status = self._accept_one(req, state, sampled, i)
            if status is not None:
                return status
        return None

    def _accept_one(self, req: Request, state: OutputState, sampled: SampleOutput, i: int) -> JobStatus | None:
        token = sampled.token_ids[i]
        req.token_ids.append(token)
        state.pending_ids.append(token)
        params = req.params
        if params.sampling.logprobs and sampled.logprobs is not None:
            top = sampled.top_logprobs[i] if sampled.top_logprobs else []
            state.pending_logprobs.append(self._logprob(token, sampled.logprobs[i], top))
        matcher = params.matcher
        if matcher is not None and not matcher.consume_token(token):
            raise GrammarViolation(f"the grammar rejected token {token}: {matcher.get_error()}")
        if token in self._eos and (not params.sampling.ignore_eos or matcher is not None):
            return JobStatus.FINISHED_STOPPED
        state.pending_text.append(state.detok.add(token))
        if state.detok.stopped or (matcher is not None and matcher.is_stopped()):
            return JobStatus.FINISHED_STOPPED
        if req.num_output_tokens >= params.max_tokens or req.num_tokens >= self.max_context:
            return JobStatus.FINISHED_LENGTH
        return None

    def flush(self, state: OutputState) -> None:
        """Send what the step produced for a running request, as one message."""
        if state.pending_ids or state.pending_text:
            state.emit(self._drain(state, JobStatus.RUNNING, None, None))

    def finish(self, req: Request, state: OutputState, status: JobStatus, error: ErrorInfo | None = None) -> None:
        """Send the request's last message: the rest of its text, its status and its usage."""
        if status in (JobStatus.FINISHED_STOPPED, JobStatus.FINISHED_LENGTH) and not state.detok.stopped:
            state.pending_text.append(state.detok.flush())
        usage = Usage(
            prompt_tokens=req.num_prompt_tokens,
            completion_tokens=req.num_output_tokens,
            cached_tokens=req.num_cached_tokens,
        )
        state.emit(self._drain(state, status, usage, error))

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

    @staticmethod
    def _drain(state: OutputState, status: JobStatus, usage: Usage | None, error: ErrorInfo | None) -> StepOutput:
        out = StepOutput(
            text="".join(state.pending_text),
            token_ids=state.pending_ids,
            status=status,
            logprobs=state.pending_logprobs or None,
            usage=usage,
            error=error,
            call_confidence=None if state.name_watch is None else state.name_watch.confidence,
        )
        state.pending_text, state.pending_ids, state.pending_logprobs = [], [], []
        return out
