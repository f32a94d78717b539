"""Running text jobs for a request: one job per choice (n, or several prompts), started together.

``start`` publishes every job, then waits until each was accepted, so that a refusal (bad prompt, context too
long, no worker) becomes an HTTP error before any response byte is sent, streaming or not. ``merged`` then reads
all choices' chunks as they come; leaving it early cancels every unfinished job on its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from ember.bus.client import JobClient, JobRefused, JobStream
from ember.bus.errors import (
    BusError,
    BusUnavailableError,
)
from ember.bus.messages import JobStatus, TextChunk, TextJob, TokenLogprob, ToolCallDelta
from ember.gateway.errors import GatewayError
from ember.gateway.lifecycle import aborted_error, bus_error, settled, worker_header
from ember.gateway.quota import Quota
from ember.gateway.tool_calls import ToolCall, ToolCallAssembler


async def start(bus: JobClient, jobs: list[TextJob], accept_timeout_s: float) -> list[JobStream[TextChunk]]:
    """Publish all jobs and wait for every one to be accepted; on any refusal, cancel the rest and raise.

    The jobs of one request go to one worker where it can take them: they share their prompt's KV blocks.
    """
    streams: list[JobStream[TextChunk]] = []
    try:
        for job in jobs:
            streams.append(await bus.submit(job, prefer=streams[0].target if streams else None))
    except BusUnavailableError as e:
        for s in streams:
            await s.cancel()
        raise bus_error(e, jobs[0].model) from e
    try:
        results = await asyncio.gather(*(s.wait_accepted(accept_timeout_s) for s in streams), return_exceptions=True)
    except BaseException:  # the client went away while the workers were accepting: take the jobs back
        with anyio.CancelScope(shield=True):
            for s in streams:
                await s.cancel()
        raise
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        for s in streams:
            await s.cancel()
        first = failures[0]
        if not isinstance(first, Exception):
            raise first
        raise bus_error(first, jobs[0].model)
    return streams


async def start_metered(
    bus: JobClient,
    quota: Quota,
    jobs: list[TextJob],
    accept_timeout_s: float,
    count_prompt: Callable[[list[JobStream[TextChunk]]], int],
) -> tuple[list[JobStream[TextChunk]], int]:
    """Start the jobs and admit their tokens; a refusal closes the quota with its error code and is re-raised."""
    try:
        streams = await start(bus, jobs, accept_timeout_s)
        prompt_tokens = count_prompt(streams)
        await admit_tokens(quota, streams, prompt_tokens)
    except GatewayError as e:
        # Nothing was generated: a 503 (no worker, workers full) is the platform's failure, not the key's.
        await quota.close(status=e.code or "error", refund=e.status == 503)
        raise
    except BaseException:
        await settled(quota.close(status="client_closed"))
        raise
    return streams, prompt_tokens


async def collect(streams: list[JobStream[TextChunk]], quota: Quota, prompt_tokens: int) -> list[Choice]:
    """Every choice to the end; the quota is closed with what was generated, whatever happens."""
    choices = [Choice(index=i) for i in range(len(streams))]
    status = "client_closed"  # unless it ends otherwise: a cancel (the client hung up) is a BaseException
    try:
        async with contextlib.aclosing(merged(streams, quota.model)) as parts:
            async for index, chunk in parts:
                choices[index].add(chunk)
        status = "ok"
    except GatewayError as e:
        status = e.code or "error"
        raise
    finally:
        await settled(quota.close(prompt_tokens, sum(len(c.token_ids) for c in choices), status))
    return choices


async def metered(
    streams: list[JobStream[TextChunk]], quota: Quota, prompt_tokens: int
) -> AsyncGenerator[tuple[int, TextChunk], None]:
    """``merged``, closing the quota at the end with what was generated, also when the client goes away."""
    produced, status = 0, "client_closed"
    try:
        # NOTE: closing an async generator does not close the one it iterates; aclosing does, so that the
        # jobs are cancelled and the quota settled the moment the client goes, not when the GC gets to it.
        async with contextlib.aclosing(merged(streams, quota.model)) as parts:
            async for index, chunk in parts:
                produced += len(chunk.token_ids)
                yield index, chunk
        status = "ok"
    except GatewayError as e:
        status = e.code or "error"
        raise
    finally:
        await settled(quota.close(prompt_tokens, produced, status))


async def admit_tokens(quota: Quota, streams: list[JobStream[TextChunk]], prompt_tokens: int) -> None:
    """Admit the accepted jobs' tokens (prompt + each job's max_tokens); over the limit, cancel them all."""
    reserve = sum(s.accepted.max_tokens or 0 for s in streams if s.accepted is not None)
    try:
        await quota.admit_tokens(prompt_tokens, reserve)
    except GatewayError:
        for s in streams:
            await s.cancel()
        raise


@dataclass
class Choice:
    """What one choice has produced so far."""

    index: int
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    status: JobStatus = JobStatus.RUNNING
    completion_tokens: int = 0
    # Prompt tokens the worker took from its prefix cache.
    cached_tokens: int = 0
    worker_ms: float = 0.0
    tool_calls: ToolCallAssembler = field(default_factory=ToolCallAssembler)
    # "tool_calls" when the worker ended the reply with calls.
    finish: str | None = None

    def add(self, chunk: TextChunk) -> None:
        self.text.append(chunk.text)
        if chunk.tool_calls:
            self.tool_calls.add(chunk.tool_calls)
        if chunk.finish_reason is not None:
            self.finish = chunk.finish_reason
        self.token_ids.extend(chunk.token_ids)
        if chunk.logprobs:
            self.logprobs.extend(chunk.logprobs)
        self.status = chunk.status
        if chunk.usage is not None:
            self.completion_tokens = chunk.usage.completion_tokens
            self.cached_tokens = chunk.usage.cached_tokens
        if chunk.worker_ms is not None:
            self.worker_ms = chunk.worker_ms


def response_headers(streams: list[JobStream[TextChunk]], choices: list[Choice]) -> dict[str, str]:
    """``x-ember-worker`` plus the workers' own time (like OpenAI's ``openai-processing-ms``)."""
    return {**worker_header(streams), "x-ember-processing-ms": f"{max(c.worker_ms for c in choices):.1f}"}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens`` are the prompt tokens served from the worker's prefix cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def finish_reason(status: JobStatus, override: str | None = None) -> str:
    """OpenAI's finish_reason: the worker's own (``tool_calls``) when it sent one, else from the status."""
    if override is not None:
        return override
    if status == JobStatus.FINISHED_LENGTH:
        return "length"
    return "stop"


@dataclass
class TurnResult:
    """One finished chat turn (one choice): what the orchestrator and the chat route read back."""

    # The reply's text (tool-call markup never appears here); "" when the model only called tools.
    text: str
    # Complete calls, each already validated against its tool's ``parameters`` schema.
    tool_calls: list[ToolCall]
    # "stop", "length" or "tool_calls".
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens served from the worker's prefix cache (each turn of an orchestrated chat repeats the last).
    cached_tokens: int = 0


async def run_chat_turn(bus: JobClient, quota: Quota, job: TextJob, accept_timeout_s: float) -> TurnResult:
    """Run one TextJob to the end (tools and all) and return the whole turn.

    ``quota`` must be open (``Quota.open``); this admits the job's tokens and closes it with what was used, so
    each turn is charged on its own. Raises a GatewayError (refusal, no worker, over the limits, a bad call).
    """
    streams, prompt_tokens = await start_metered(
        bus, quota, [job], accept_timeout_s, lambda s: s[0].accepted.prompt_tokens if s[0].accepted else 0
    )
    (choice,) = await collect(streams, quota, prompt_tokens)
    reason = finish_reason(choice.status, choice.finish)
    calls = choice.tool_calls.complete(job.tools or (), reason)
    return TurnResult(
        text="".join(choice.text),
        tool_calls=[c for c in calls if not c.cut],  # a call cut by max_tokens cannot be run
        finish_reason=reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=choice.completion_tokens,
        cached_tokens=choice.cached_tokens,
    )


def tool_call_deltas(deltas: list[ToolCallDelta]) -> list[dict[str, object]]:
    """The chunk's tool-call deltas in OpenAI's streaming shape."""
    out: list[dict[str, object]] = []
    for d in deltas:
        entry: dict[str, object] = {"index": d.index}
        function: dict[str, str] = {"arguments": d.arguments}
        if d.id is not None:
            entry["id"], entry["type"] = d.id, "function"
        if d.name is not None:
            function = {"name": d.name, "arguments": d.arguments}
        entry["function"] = function
        out.append(entry)
    return out


async def merged(streams: list[JobStream[TextChunk]], model: str) -> AsyncGenerator[tuple[int, TextChunk], None]:
    """(choice index, chunk) from all streams as they arrive; raises a GatewayError for the first failure."""
    if len(streams) == 1:
        # The common case, without a task per choice.
        try:
            async for chunk in streams[0]:
                if chunk.status == JobStatus.FINISHED_ABORTED:
                    raise aborted_error()
                yield 0, chunk
        except (JobRefused, BusError) as e:
            raise bus_error(e, model) from e
        finally:
            with anyio.CancelScope(shield=True):  # see settled()
                await streams[0].cancel()
        return

    queue: asyncio.Queue[tuple[int, TextChunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: JobStream[TextChunk]) -> None:
        try:
            async for chunk in stream:
                await queue.put((index, chunk))
            await queue.put((index, None))
        except Exception as e:
            await queue.put((index, e))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise bus_error(item, model) from item
            elif isinstance(item, BaseException):
                raise item
            elif item.status == JobStatus.FINISHED_ABORTED:
                raise aborted_error()
            else:
                yield index, item
    finally:
        for t in tasks:
            t.cancel()
        with anyio.CancelScope(shield=True):  # see settled()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            for s in streams:
                await s.cancel()
