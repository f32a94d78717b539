"""POST /v1/chat/completions."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.bus.messages import ChatMessage, Modality, OutputConstraint, TextChunk, TextJob, TokenLogprob, ToolChoice
from ember.gateway import generation, lifecycle, orchestrator, sse
from ember.gateway.errors import GatewayError, InvalidRequest
from ember.gateway.quota import Quota
from ember.gateway.routes.common import bus, check_model, now, parse_body, settings
from ember.gateway.schemas import ChatCompletionRequest
from ember.gateway.tool_calls import ToolCallAssembler, check_tools, output_constraint, tool_choice


def to_job_messages(body: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    out = []
    for i, m in enumerate(body.messages):
        try:
            text = m.text()
        except ValueError as e:
            raise InvalidRequest(str(e), code="invalid_value", param=f"messages.{i}.content") from None
        # "developer" is OpenAI's newer name for "system"; model templates only know the latter.
        role = "system" if m.role == "developer" else m.role
        extra = {k: v for k, v in (m.model_extra or {}).items() if v is not None}
        out.append(ChatMessage(role=role, content=text, name=m.name, **extra))
    return tuple(out)


def tool_fields(body: ChatCompletionRequest) -> tuple[tuple[dict[str, Any], ...], ToolChoice, OutputConstraint | None]:
    """The request's tools, tool_choice and response_format as a job carries them; a clear 400 for bad ones."""
    tools = check_tools(body.tools) if body.tools else ()
    choice = tool_choice(body.tool_choice, tools)
    constraint = output_constraint(body.response_format.model_dump()) if body.response_format else None
    return tools, choice, constraint


def logprobs_content(entries: list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [e.model_dump() for e in entries], "refusal": None}


async def create(request: Request) -> Response:
    body = await parse_body(request, ChatCompletionRequest)
    if body.ember_tools is not None:  # server-executed functions: the orchestrator runs the whole loop
        return await orchestrator.run(request, body)
    check_model(request, body.model, Modality.TEXT)
    messages = to_job_messages(body)  # every check of the request itself comes before any quota is spent
    tools, choice, constraint = tool_fields(body)
    quota = await Quota.open(request, body.model)
    request_id: str = request.state.request_id
    max_tokens = await quota.max_tokens(body.requested_max_tokens())
    jobs = [
        TextJob(
            request_id=f"{request_id}-{i}",
            model=body.model,
            messages=messages,
            sampling=body.sampling(i, max_tokens),
            priority=quota.priority,
            key_id=quota.key.id,
            tools=tools or None,
            tool_choice=choice,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            response_format=constraint,
        )
        for i in range(body.n)
    ]
    timeout = settings(request).gateway.accept_timeout_s
    # All choices share one prompt: it is counted once, as OpenAI does.
    streams, prompt_tokens = await generation.start_metered(
        bus(request), quota, jobs, timeout, lambda s: s[0].accepted.prompt_tokens if s[0].accepted else 0
    )
    completion_id = f"chatcmpl-{request_id.removeprefix('req_')}"
    created = now()
    if body.stream:
        parts = generation.metered(streams, quota, prompt_tokens)
        events = _stream(body, tools, parts, completion_id, created, prompt_tokens)
        return sse.EventStreamResponse(events, {**lifecycle.worker_header(streams), **quota.headers()})

    choices = await generation.collect(streams, quota, prompt_tokens)
    completion_tokens = sum(c.completion_tokens for c in choices)
    reasons = [generation.finish_reason(c.status, c.finish) for c in choices]
    calls = [[call.to_openai() for call in c.tool_calls.complete(tools, reasons[c.index])] for c in choices]
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": c.index,
                    "message": message("".join(c.text), calls[c.index]),
                    "logprobs": logprobs_content(c.logprobs) if body.logprobs else None,
                    "finish_reason": reasons[c.index],
                }
                for c in choices
            ],
            # All choices share one prompt, counted once: its cache hits are the first choice's.
            "usage": generation.usage(prompt_tokens, completion_tokens, choices[0].cached_tokens),
        },
        headers={**generation.response_headers(streams, choices), **quota.headers()},
    )


def message(text: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message; OpenAI gives ``content: null`` when the reply is only tool calls."""
    if not calls:
        return {"role": "assistant", "content": text, "refusal": None}
    return {"role": "assistant", "content": text or None, "refusal": None, "tool_calls": calls}


async def _stream(
    body: ChatCompletionRequest,
    tools: tuple[dict[str, Any], ...],
    parts: AsyncGenerator[tuple[int, TextChunk], None],
    completion_id: str,
    created: int,
    prompt_tokens: int,
) -> AsyncGenerator[bytes, None]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            data["usage"] = usage
        return sse.event(data)

    def choice(index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}

    async with contextlib.aclosing(parts):  # settles the quota at once if the client goes
        # OpenAI opens every choice with the role and an empty content.
        for i in range(body.n):
            yield chunk([choice(i, {"role": "assistant", "content": ""})])
        completion_tokens = cached_tokens = 0
        assemblers = [ToolCallAssembler() for _ in range(body.n)]
        try:
            async for index, part in parts:
                lp = logprobs_content(part.logprobs) if body.logprobs and part.logprobs else None
                if part.text or lp:
                    yield chunk([choice(index, {"content": part.text}, lp=lp)])
                if part.tool_calls:
                    # Arguments stream as the model writes them; the whole calls are checked at the end.
                    assemblers[index].add(part.tool_calls)
                    for entry in generation.tool_call_deltas(part.tool_calls):
                        yield chunk([choice(index, {"tool_calls": [entry]})])
                if part.finished:
                    completion_tokens += part.usage.completion_tokens if part.usage else 0
                    if index == 0 and part.usage:
                        cached_tokens = part.usage.cached_tokens
                    reason = generation.finish_reason(part.status, part.finish_reason)
                    assemblers[index].complete(tools, reason)  # a bad call: an error event, not this finish
                    yield chunk([choice(index, {}, reason)])
        except GatewayError as e:
            yield sse.event(e.body())
            yield sse.DONE
            return
        if include_usage:
            yield chunk([], generation.usage(prompt_tokens, completion_tokens, cached_tokens))
        yield sse.DONE
