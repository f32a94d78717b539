"""POST /v1/completions (the legacy text completions API)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.bus.messages import Modality, TextChunk, TextJob, TokenLogprob
from ember.gateway import generation, lifecycle, sse
from ember.gateway.errors import GatewayError
from ember.gateway.quota import Quota
from ember.gateway.routes.common import bus, check_model, now, parse_body, settings
from ember.gateway.schemas import CompletionRequest
from ember.gateway.tool_calls import output_constraint


def legacy_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The completions API's column-wise logprobs; ``offset`` is where this text starts in the choice."""
    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        tokens.append(e.token)
        offset += len(e.token)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e.top_logprobs} for e in entries],
        "text_offset": offsets,
    }


async def create(request: Request) -> Response:
    body = await parse_body(request, CompletionRequest)
    check_model(request, body.model, Modality.TEXT)
    constraint = output_constraint(body.response_format.model_dump()) if body.response_format else None
    quota = await Quota.open(request, body.model)
    request_id: str = request.state.request_id
    prompts = body.prompts()
    max_tokens = await quota.max_tokens(body.requested_max_tokens())
    # Choice index = prompt index * n + sample index, as OpenAI numbers them.
    jobs = [
        TextJob(
            request_id=f"{request_id}-{p}-{i}",
            model=body.model,
            prompt=prompt,
            sampling=body.sampling(i, max_tokens),
            priority=quota.priority,
            key_id=quota.key.id,
            response_format=constraint,
        )
        for p, prompt in enumerate(prompts)
        for i in range(body.n)
    ]
    timeout = settings(request).gateway.accept_timeout_s
    # Each prompt is counted once, however many samples it has.
    streams, prompt_tokens = await generation.start_metered(
        bus(request), quota, jobs, timeout, lambda s: sum(x.accepted.prompt_tokens for x in s[:: body.n] if x.accepted)
    )
    completion_id = f"cmpl-{request_id.removeprefix('req_')}"
    created = now()
    echoes = [prompts[i // body.n] if body.echo else "" for i in range(len(jobs))]
    if body.stream:
        parts = generation.metered(streams, quota, prompt_tokens)
        events = _stream(body, parts, echoes, completion_id, created, prompt_tokens)
        return sse.EventStreamResponse(events, {**lifecycle.worker_header(streams), **quota.headers()})

    choices = await generation.collect(streams, quota, prompt_tokens)
    completion_tokens = sum(c.completion_tokens for c in choices)
    return JSONResponse(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": c.index,
                    "text": echoes[c.index] + "".join(c.text),
                    "logprobs": None if body.logprobs is None else legacy_logprobs(c.logprobs, len(echoes[c.index])),
                    "finish_reason": generation.finish_reason(c.status),
                }
                for c in choices
            ],
            # Each prompt is counted once, by its first choice (as its prompt tokens are).
            "usage": generation.usage(
                prompt_tokens, completion_tokens, sum(c.cached_tokens for c in choices[:: body.n])
            ),
        },
        headers={**generation.response_headers(streams, choices), **quota.headers()},
    )


async def _stream(
    body: CompletionRequest,
    parts: AsyncGenerator[tuple[int, TextChunk], None],
    echoes: list[str],
    completion_id: str,
    created: int,
    prompt_tokens: int,
) -> AsyncGenerator[bytes, None]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    offsets = [len(e) for e in echoes]

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            data["usage"] = usage
        return sse.event(data)

    async with contextlib.aclosing(parts):  # settles the quota at once if the client goes
        for i, echo in enumerate(echoes):
            if echo:
                yield chunk([{"index": i, "text": echo, "logprobs": None, "finish_reason": None}])
        completion_tokens = cached_tokens = 0
        try:
            async for index, part in parts:
                lp = None
                if body.logprobs is not None and part.logprobs:
                    lp = legacy_logprobs(part.logprobs, offsets[index])
                offsets[index] += len(part.text)
                finish = generation.finish_reason(part.status) if part.finished else None
                if part.text or lp or finish:
                    yield chunk([{"index": index, "text": part.text, "logprobs": lp, "finish_reason": finish}])
                if part.finished and part.usage:
                    completion_tokens += part.usage.completion_tokens
                    if index % body.n == 0:
                        cached_tokens += part.usage.cached_tokens
        except GatewayError as e:
            yield sse.event(e.body())
            yield sse.DONE
            return
        if include_usage:
            yield chunk([], generation.usage(prompt_tokens, completion_tokens, cached_tokens))
        yield sse.DONE
