"""Server-executed tools: a chat request names functions (``ember_tools``) and the gateway runs the loop.

    model turn (tools = the named functions, calls decoded under their schemas' grammar)
      -> no calls: that text is the answer
      -> calls: each named function runs over the bus (a turn's calls concurrently); the results go back to the
         model as ``role: "tool"`` messages; next turn
    ... at most ``ember_max_steps`` turns (capped by ``functions.max_steps``): a last turn that still calls
    functions ends the request with a 400 step_budget_exceeded, its calls not run (no turn is left to read them).

Only the named functions are offered, and a call to anything else is answered to the model as an error, never
run. Every model turn and every function call is charged to the caller's key through its own ``Quota`` (one
request and one usage record each; a turn's concurrent calls hold a concurrency slot each). A function that
fails, times out or is refused becomes an error result the model reads; the request goes on.

Request extensions (besides OpenAI's chat fields)::

    ember_tools      ["generate_image", "my_funcs.lookup_order"]   the allow-list (unknown names: 400)
    ember_max_steps  4                                             model turns at most
    ember_tool_plan  ["transcribe_audio", "generate_image", "none"] tool_choice per turn: a function's name
                                                                    forces it, or auto | none | required

Audio clips in user messages (OpenAI's ``input_audio`` content parts) are attachments: the model sees
``audio_1``, ``audio_2``..., a function parameter marked ``x-ember-attachment: audio`` may only take one of
those names (the grammar enforces it), and the clip's data is put in its place when the function runs.
Parameters marked ``x-ember-model-hidden`` (the built-ins' model, size, steps...) are not offered to the model.

Response: a ``chat.completion`` with the final answer, ``usage`` summed over the model turns, and
``ember_steps``, one record per model turn and per function call::

    {"type": "model", "step": 0, "content": "", "tool_calls": [...], "finish_reason": "tool_calls", "usage": {...}}
    {"type": "function", "step": 0, "call_id": "call_..", "name": "generate_image", "arguments": {...},
     "status": "ok" | "error", "output": {...}, "error": null | {"code", "message", ...}, "duration_ms": 812.0}

With ``stream: true`` each record goes out as it happens, as a ``chat.completion.chunk`` with no choices and
the record in ``ember_event`` (plus ``{"type": "function.started", "step", "call_id", "name"}`` when a call
starts); the answer then streams as a normal content delta, its finish chunk, the usage chunk if asked, [DONE].
A failure mid-way (429, no worker, the step budget) is an OpenAI error event, then [DONE].
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ember.bus.messages import ChatMessage, FunctionInfo, Modality, TextJob, ToolChoice
from ember.functions.caller import CallError, FunctionCaller
from ember.gateway import generation, lifecycle, sse
from ember.gateway.errors import GatewayError, InvalidRequest
from ember.gateway.quota import Quota
from ember.gateway.routes.common import bus, check_model, now, settings
from ember.gateway.routes.functions import caller as functions_caller
from ember.gateway.routes.functions import metered_call
from ember.gateway.schemas import ChatCompletionRequest, Message, OtherPart, TextPart
from ember.gateway.tool_calls import ToolCall, check_tools, tool_choice

ATTACHMENT_KEY = "x-ember-attachment"
HIDDEN_KEY = "x-ember-model-hidden"
# A function result longer than this (an image, say) reaches the model as a short note; ember_steps has it all.
MAX_RESULT_STRING = 1024


def tool_name(function: str) -> str:
    """A function's name as a tool name (OpenAI allows no "." there): ``my_funcs.lookup`` -> ``my_funcs__lookup``."""
    return function.replace(".", "__")


def summary(value: Any) -> Any:
    """``value`` with long strings (images, audio) cut to a note, for showing a function's result to a model."""
    if isinstance(value, str) and len(value) > MAX_RESULT_STRING:
        return f"<{len(value)} characters, omitted>"
    if isinstance(value, dict):
        return {k: summary(v) for k, v in value.items()}
    if isinstance(value, list):
        return [summary(v) for v in value]
    return value


def extract_attachments(messages: list[Message]) -> tuple[list[Message], dict[str, str]]:
    """Messages with every ``input_audio`` part replaced by its name, and name -> ``data:`` URL."""
    attachments: dict[str, str] = {}
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m.content, list):
            out.append(m)
            continue
        parts: list[TextPart | OtherPart] = []
        for j, part in enumerate(m.content):
            if isinstance(part, OtherPart) and part.type == "input_audio":
                audio = (part.model_extra or {}).get("input_audio") or {}
                data, fmt = audio.get("data"), audio.get("format", "wav")
                if not isinstance(data, str) or not data:
                    raise InvalidRequest(
                        "an input_audio part needs input_audio.data (base64)", param=f"messages.{i}.content.{j}"
                    )
                name = f"audio_{len(attachments) + 1}"
                attachments[name] = f"data:audio/{fmt};base64,{data}"
                # The model cannot hear it: the note says so, and that a function is the way to its words.
                parts.append(TextPart(type="text", text=f"[{name}: an attached audio clip, not yet transcribed]"))
            else:
                parts.append(part)
        out.append(m.model_copy(update={"content": parts}))
    return out, attachments


def model_schema(fn: FunctionInfo, attachments: dict[str, str]) -> dict[str, Any]:
    """The function's input schema as the model sees it: operator-only parameters left out (they keep their
    defaults), attachment parameters restricted to the request's attachments."""
    schema = json.loads(json.dumps(fn.input_schema))
    props = schema.get("properties") or {}
    for name, prop in list(props.items()):
        if not isinstance(prop, dict):
            continue
        if prop.pop(HIDDEN_KEY, None) and name not in schema.get("required", ()):
            del props[name]
        elif prop.pop(ATTACHMENT_KEY, None) is not None and attachments:
            prop.clear()
            prop.update({"type": "string", "enum": sorted(attachments), "description": "an attached clip's name"})
    return schema


@dataclass
class Plan:
    """What one orchestrated request may do, all checked before any work."""

    functions: dict[str, FunctionInfo]  # tool name -> function
    tools: tuple[dict[str, Any], ...]
    choices: list[ToolChoice]  # per turn; past the end, ``default``
    default: ToolChoice
    max_steps: int
    attachments: dict[str, str]
    messages: list[ChatMessage]

    def choice(self, step: int) -> ToolChoice:
        return self.choices[step] if step < len(self.choices) else self.default


async def plan(request: Request, body: ChatCompletionRequest) -> Plan:
    """The request's allow-list, tools and per-turn choices; a 400 for anything wrong, before any work."""
    from ember.gateway.routes.chat import to_job_messages  # chat dispatches here: imported late

    assert body.ember_tools is not None
    for param, bad in (("tools", body.tools), ("response_format", body.response_format)):
        if bad:
            raise InvalidRequest(f"{param} cannot be combined with ember_tools", param=param)
    if body.n != 1:
        raise InvalidRequest("ember_tools needs n=1", param="n")
    c = functions_caller(request)
    functions: dict[str, FunctionInfo] = {}
    for i, name in enumerate(body.ember_tools):
        try:
            fn = await c.resolve(name)
        except CallError:
            raise InvalidRequest(
                f"ember_tools.{i}: no function named {name!r} is served",
                param=f"ember_tools.{i}",
                code="unknown_function",
            ) from None
        if tool_name(name) in functions:
            raise InvalidRequest(f"ember_tools names {name!r} twice", param=f"ember_tools.{i}")
        functions[tool_name(name)] = fn
    messages, attachments = extract_attachments(body.messages)
    offered = [
        {
            "type": "function",
            "function": {"name": t, "description": fn.description, "parameters": model_schema(fn, attachments)},
        }
        for t, fn in functions.items()
    ]
    try:
        tools = check_tools(offered)
    except InvalidRequest as e:  # a function whose schema a model cannot be constrained to
        index = int((e.param or "tools.0").split(".")[1])
        raise InvalidRequest(
            f"function {body.ember_tools[index]!r} cannot be offered to a model: {e.message}",
            param=f"ember_tools.{index}",
            code="invalid_tool_schema",
        ) from None
    requested = body.tool_choice
    if isinstance(requested, dict) and isinstance(requested.get("function"), dict):
        requested = {**requested, "function": {"name": tool_name(str(requested["function"].get("name")))}}
    default = tool_choice(requested, tools)
    choices = []
    for i, entry in enumerate(body.ember_tool_plan or []):
        if entry in ("auto", "none", "required"):
            choices.append(ToolChoice(mode=entry))
        elif tool_name(entry) in functions:
            choices.append(ToolChoice(mode="function", name=tool_name(entry)))
        else:
            raise InvalidRequest(
                f"ember_tool_plan.{i}={entry!r} is not auto, none, required or one of ember_tools",
                param=f"ember_tool_plan.{i}",
            )
    cap = settings(request).functions.max_steps
    max_steps = min(body.ember_max_steps or cap, cap)
    if len(choices) > max_steps:
        raise InvalidRequest(
            f"ember_tool_plan has {len(choices)} turns, over the {max_steps} allowed", param="ember_tool_plan"
        )
    body = body.model_copy(update={"messages": messages})
    return Plan(functions, tools, choices, default, max_steps, attachments, list(to_job_messages(body)))


class StepBudgetExceeded(InvalidRequest):
    code = "step_budget_exceeded"


@dataclass
class Orchestration:
    request: Request
    body: ChatCompletionRequest
    plan: Plan
    caller: FunctionCaller
    steps: list[dict[str, Any]] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    answer: str = ""
    finish_reason: str = "stop"
    # The first turn's quota, opened before a streamed response starts, so that a 429 is an HTTP error.
    first_quota: Quota | None = None

    async def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """Run the loop; yields each step record (and function starts) as it happens. Raises GatewayError."""
        request_id: str = self.request.state.request_id
        messages = list(self.plan.messages)
        for step in range(self.plan.max_steps):
            quota, self.first_quota = self.first_quota or await Quota.open(self.request, self.body.model), None
            quota.request_id = f"{request_id}-s{step}"  # one usage record per turn (records dedupe by request id)
            max_tokens = await quota.max_tokens(self.body.requested_max_tokens())
            job = TextJob(
                request_id=f"{request_id}-s{step}",
                model=self.body.model,
                messages=tuple(messages),
                sampling=self.body.sampling(0, max_tokens),
                priority=quota.priority,
                key_id=quota.key.id,
                tools=self.plan.tools,
                tool_choice=self.plan.choice(step),
                parallel_tool_calls=self.body.parallel_tool_calls is not False,
            )
            accept = settings(self.request).gateway.accept_timeout_s
            turn = await generation.run_chat_turn(bus(self.request), quota, job, accept)
            self.prompt_tokens += turn.prompt_tokens
            self.completion_tokens += turn.completion_tokens
            self.cached_tokens += turn.cached_tokens
            record = {
                "type": "model",
                "step": step,
                "content": turn.text,
                "tool_calls": [self._public(c) for c in turn.tool_calls],
                "finish_reason": turn.finish_reason,
                "usage": generation.usage(turn.prompt_tokens, turn.completion_tokens, turn.cached_tokens),
            }
            self.steps.append(record)
            yield record
            if not turn.tool_calls:
                self.answer, self.finish_reason = turn.text, turn.finish_reason
                return
            if step == self.plan.max_steps - 1:  # no turn left to read the results: do not run the calls
                break
            for call in turn.tool_calls:
                yield {"type": "function.started", "step": step, "call_id": call.id, "name": self._name(call)}
            results = await asyncio.gather(*(self._run(step, call) for call in turn.tool_calls))
            messages.append(
                ChatMessage(
                    role="assistant", content=turn.text or None, tool_calls=[c.to_openai() for c in turn.tool_calls]
                )
            )
            for call, result in zip(turn.tool_calls, results, strict=True):
                self.steps.append(result)
                yield result
                shown = summary(result["output"]) if result["status"] == "ok" else {"error": result["error"]["message"]}
                messages.append(
                    ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=json.dumps(shown))
                )
        raise StepBudgetExceeded(
            f"the model was still calling functions after {self.plan.max_steps} turns, its step budget "
            f"(ember_max_steps; this server allows at most {settings(self.request).functions.max_steps})",
            param="ember_max_steps",
        )

    def _name(self, call: ToolCall) -> str:
        fn = self.plan.functions.get(call.name)
        return fn.name if fn is not None else call.name

    def _public(self, call: ToolCall) -> dict[str, Any]:
        """A call as the client sees it: OpenAI's shape with the function's real name."""
        out = call.to_openai()
        out["function"]["name"] = self._name(call)
        return out

    async def _run(self, step: int, call: ToolCall) -> dict[str, Any]:
        """One call the model made, to its end; every failure is a result for the model, never an exception."""
        record: dict[str, Any] = {"type": "function", "step": step, "call_id": call.id, "name": self._name(call)}
        started = time.perf_counter()
        try:
            args = json.loads(call.arguments)
        except ValueError:
            args = call.arguments
        record["arguments"] = args
        fn = self.plan.functions.get(call.name)
        try:
            if fn is None:  # the grammar allows only the offered tools; this guards the allow-list regardless
                raise GatewayError(
                    f"function {call.name!r} is not allowed in this request", code="function_not_allowed"
                )
            value = self._with_attachments(fn, args)
            self.caller.check_input(fn, value)
            quota = await Quota.open(self.request, fn.name)
            quota.modality = Modality.FUNCTION
            quota.request_id = f"{self.request.state.request_id}-{call.id}"
            result = await metered_call(
                self.caller,
                quota,
                fn,
                value,
                request_id=quota.request_id,
                timeout_s=self.caller.timeout(fn, None),
            )
            record.update(status="ok", output=result.output, error=None)
        except CallError as e:
            record.update(status="error", output=None, error=_error(e.info.code, e.info.message, e.info.status))
        except GatewayError as e:
            record.update(status="error", output=None, error=_error(e.code, e.message, e.status))
        record["duration_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return record

    def _with_attachments(self, fn: FunctionInfo, args: Any) -> dict[str, Any]:
        if not isinstance(args, dict):
            raise GatewayError("the call's arguments are not a JSON object", code="invalid_function_input")
        props = fn.input_schema.get("properties") or {}
        return {
            k: self.plan.attachments.get(v, v)
            if isinstance(v, str) and isinstance(props.get(k), dict) and ATTACHMENT_KEY in props[k]
            else v
            for k, v in args.items()
        }


def _error(code: str | None, message: str, status: int) -> dict[str, Any]:
    return {"code": code, "message": message, "status": status}


async def run(request: Request, body: ChatCompletionRequest) -> Response:
    """``POST /v1/chat/completions`` with ``ember_tools``."""
    check_model(request, body.model, Modality.TEXT)
    orchestration = Orchestration(request, body, await plan(request, body), functions_caller(request))
    completion_id = f"chatcmpl-{request.state.request_id.removeprefix('req_')}"
    created = now()
    if body.stream:
        orchestration.first_quota = await Quota.open(request, body.model)
        headers = orchestration.first_quota.headers()
        return sse.EventStreamResponse(_stream(orchestration, completion_id, created), headers)
    async with contextlib.aclosing(orchestration.events()) as events:
        async for _ in events:
            pass
    o = orchestration
    return JSONResponse(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": o.answer, "refusal": None},
                    "logprobs": None,
                    "finish_reason": o.finish_reason,
                }
            ],
            "usage": generation.usage(o.prompt_tokens, o.completion_tokens, o.cached_tokens),
            "ember_steps": o.steps,
        },
        headers={"x-ember-steps": str(sum(1 for s in o.steps if s["type"] == "model"))},
    )


async def _stream(o: Orchestration, completion_id: str, created: int) -> AsyncGenerator[bytes, None]:
    include_usage = bool(o.body.stream_options and o.body.stream_options.include_usage)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": o.body.model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return sse.event(data)

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    try:
        yield chunk([choice({"role": "assistant", "content": ""})])
        async with contextlib.aclosing(o.events()) as events:
            async for event in events:
                yield chunk([], ember_event=event)
    except GatewayError as e:
        yield sse.event(e.body())
        yield sse.DONE
        return
    finally:
        if o.first_quota is not None:  # the client left before the first turn took it over
            await lifecycle.settled(o.first_quota.close(status="client_closed"))
    if o.answer:
        yield chunk([choice({"content": o.answer})])
    yield chunk([choice({}, o.finish_reason)])
    if include_usage:
        yield chunk([], usage=generation.usage(o.prompt_tokens, o.completion_tokens, o.cached_tokens))
    yield sse.DONE
