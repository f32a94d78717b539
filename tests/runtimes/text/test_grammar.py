"""Constrained decoding in the engine, on the tiny random-weight model: its output is noise, which is the point:
under a grammar every tool call and every constrained reply must still be valid."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import nats
import pytest
import torch
from tokenizers import AddedToken, Tokenizer

from ember.bus.messages import (
    ChatMessage,
    JobStatus,
    OutputConstraint,
    SamplingParams,
    TextChunk,
    TextJob,
    ToolChoice,
    decode_reply,
)
from ember.bus.worker import ReplySink
from ember.runtimes.text.call_gate import CallGate
from ember.runtimes.text.engine import EngineConfig, GenerateRequest, TextEngine
from ember.runtimes.text.grammar import TokenMasks
from ember.runtimes.text.loader import LoadedModel, load_model
from ember.runtimes.text.tool_format import HERMES
from ember.runtimes.text.worker import RequestError, TextJobHandler, split_output
from tests.helpers.text_runner import new_runner
from tests.helpers.tiny_checkpoint import tiny_tokenizer_json, write_tiny_llama

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 6},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = (WEATHER, ADD)
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = (ChatMessage(role="user", content="What is the weather in Paris?"),)


@pytest.fixture(scope="module")
def handler(tiny_model: Path) -> TextJobHandler:
    handler = start_handler(tiny_model)
    yield handler
    handler.engine.stop()


# A chat template of the hermes kind: tools in the system turn, calls as <tool_call>\n{...}\n</tool_call>.
HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n"
    'Call one as <tool_call>\n{"name": ..., "arguments": ...}\n</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n{{ c.function | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def start_handler(path: Path) -> TextJobHandler:
    loaded: LoadedModel = load_model(path)
    runner = new_runner(loaded, num_blocks=1024, block_size=16, max_context=1024, max_step_tokens=128)
    engine = TextEngine(runner, loaded.tokenizer, EngineConfig(max_batch=8, max_step_tokens=64))
    engine.start()
    return TextJobHandler(path.name, loaded, engine)


@pytest.fixture(scope="module")
def hermes_handler(tmp_path_factory: pytest.TempPathFactory) -> TextJobHandler:
    """The tiny model with Qwen2.5's arrangement: ``<tool_call>`` and ``</tool_call>`` are added tokens of its
    vocabulary (ids 510 and 511) and its template writes calls in the hermes layout."""
    path = write_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-hermes")
    tok = Tokenizer.from_str(tiny_tokenizer_json(510))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<tool_call>", "</tool_call>")])
    (path / "tokenizer.json").write_text(tok.to_str())
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": HERMES_TEMPLATE}))
    handler = start_handler(path)
    yield handler
    handler.engine.stop()


def job(rid: str, **fields: Any) -> TextJob:
    sampling = fields.pop("sampling", SamplingParams(temperature=1.0, max_tokens=160))
    return TextJob(request_id=rid, model="tiny", messages=fields.pop("messages", ASK), sampling=sampling, **fields)


async def run_job(handler: TextJobHandler, j: TextJob, call_gate: CallGate | None = None) -> dict[str, Any]:
    """The job through the worker's own preparation, the engine and the tool-call split, as the worker runs it
    (without its call gate, unless one is given)."""
    prepared = await asyncio.to_thread(handler.prepare, j)
    req = GenerateRequest(
        request_id=j.request_id,
        prompt_ids=prepared.prompt_ids,
        sampling=prepared.sampling,
        max_tokens=prepared.max_tokens,
        matcher=prepared.matcher,
        call_gate=call_gate,
    )
    text, calls, finish, status, tokens, usage, confidence = [], {}, None, None, [], None, None
    async for out in handler.engine.generate(req):
        assert out.error is None, out.error
        status = out.status
        confidence = out.call_confidence
        usage = out.usage or usage
        tokens += out.token_ids
        if prepared.parser is None:
            text.append(out.text)
            continue
        piece, deltas, f = split_output(out, prepared.parser)
        if prepared.parser.repeated and not out.status.finished:  # as the worker does
            handler.engine.stop_request(j.request_id)
        text.append(piece)
        finish = f or finish
        for d in deltas:
            call = calls.setdefault(d.index, {"id": d.id, "name": d.name, "arguments": ""})
            call["arguments"] += d.arguments
    ordered = [calls[i] for i in sorted(calls)]
    repeated = prepared.parser is not None and prepared.parser.repeated
    return {
        "text": "".join(text),
        "calls": ordered,
        "finish": finish,
        "status": status,
        "tokens": tokens,
        "repeated": repeated,
        "usage": usage,
        "confidence": confidence,
    }


def complete(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply's complete calls: all but a last one that max_tokens cut in its arguments (as the gateway has it)."""
    if r["status"] != JobStatus.FINISHED_LENGTH or not r["calls"]:
        return r["calls"]
    try:
        json.loads(r["calls"][-1]["arguments"])
    except ValueError:
        return r["calls"][:-1]
    return r["calls"]


def assert_valid(call: dict[str, Any]) -> None:
    assert call["id"].startswith("call_")
    assert call["name"] in SCHEMAS
    jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


async def test_required_tool_calls_always_validate_even_from_noise(handler: TextJobHandler) -> None:
    jobs = [
        job(f"req-{seed}", tools=TOOLS, tool_choice=ToolChoice(mode="required"), sampling=_seeded(seed))
        for seed in range(6)
    ]
    results = await asyncio.gather(*(run_job(handler, j) for j in jobs))
    for r in results:
        for call in complete(r):
            assert_valid(call)
        assert "<tool_call>" not in r["text"]
        if r["status"] == JobStatus.FINISHED_STOPPED:
            assert r["calls"] and r["finish"] == "tool_calls" and r["text"] == ""


async def test_one_strict_call_always_closes(handler: TextJobHandler) -> None:
    """Without parallel calls a reply is one call of a strict schema, which ends within a bounded length: noise
    included, every reply stops with its call well within max_tokens."""
    one = [
        job(
            f"one-{s}",
            tools=TOOLS,
            tool_choice=ToolChoice(mode="required"),
            parallel_tool_calls=False,
            sampling=_seeded(s),
        )
        for s in range(6)
    ]
    results = await asyncio.gather(*(run_job(handler, j) for j in one))
    for r in results:
        assert r["status"] == JobStatus.FINISHED_STOPPED and r["finish"] == "tool_calls" and r["text"] == ""
        [call] = r["calls"]
        assert_valid(call)


async def test_a_named_function_is_the_only_one_called(handler: TextJobHandler) -> None:
    choice = ToolChoice(mode="function", name="add")
    results = await asyncio.gather(
        *(run_job(handler, job(f"named-{s}", tools=TOOLS, tool_choice=choice, sampling=_seeded(s))) for s in range(3))
    )
    calls = [c for r in results for c in r["calls"]]
    assert calls and all(c["name"] == "add" for c in calls)
    for c in (c for r in results for c in complete(r)):
        assert_valid(c)
    # Exactly one call, even though parallel calls are on.
    assert all(len(r["calls"]) == 1 for r in results if r["status"] == JobStatus.FINISHED_STOPPED)


async def test_auto_text_never_contains_the_call_tag(handler: TextJobHandler) -> None:
    results = await asyncio.gather(
        *(run_job(handler, job(f"auto-{s}", tools=TOOLS, sampling=_seeded(s))) for s in range(4))
    )
    for r in results:
        assert "<tool_call>" not in r["text"]
        for call in complete(r):
            assert_valid(call)


async def test_a_closed_call_gate_keeps_an_auto_reply_text(handler: TextJobHandler) -> None:
    """The gate at its extremes on the same seeds: always open, the reply begins with one of its tokens about half
    the time; always closed, never, and the grammar keeps the reply text to the end. (Its tokens here are those
    that begin a call and every even id: the 4 of 512 tokens of the tiny vocabulary that begin a call are too rare
    a first token of its noise to see the gate at work.)"""
    assert handler.call_gate is not None
    starts = handler.call_gate.starts | (torch.arange(handler.call_gate.starts.shape[0]) % 2 == 0)
    seeds = range(16)

    def runs(threshold: float, name: str) -> list[Any]:
        gate = replace(handler.call_gate, starts=starts, threshold=threshold)
        sampling = lambda s: SamplingParams(temperature=1.0, seed=s, max_tokens=8)  # noqa: E731
        return [run_job(handler, job(f"{name}-{s}", tools=TOOLS, sampling=sampling(s)), gate) for s in seeds]

    opened = await asyncio.gather(*runs(1e-9, "open"))
    closed = await asyncio.gather(*runs(1.0, "closed"))
    assert any(r["tokens"] and starts[r["tokens"][0]] for r in opened)  # there were calls to stop
    for r in closed:
        assert not r["calls"] and r["finish"] != "tool_calls"
        assert not r["tokens"] or not starts[r["tokens"][0]]


async def test_call_confidence_is_the_share_of_the_models_odds_the_grammar_allowed_for_the_name(
    handler: TextJobHandler, tiny_model: Path
) -> None:
    """The engine's call_confidence of a reply that began with a call, against the same product computed here: at
    each token of the call's function name (after its key, up to the value's closing quote), the tiny model's raw
    next-token distribution (a plain forward of the whole sequence) and the part of it that a fresh matcher of the
    same grammar allows there."""
    assert handler.call_gate is not None
    gate = replace(handler.call_gate, threshold=1e-9, name_threshold=1e-300)
    j = job("confident", tools=TOOLS, tool_choice=ToolChoice(mode="required"), sampling=_seeded(4))
    r = await run_job(handler, j, gate)
    tokens = r["tokens"]
    assert gate.begins_call(tokens[0]) and r["calls"]
    prepared = await asyncio.to_thread(handler.prepare, j)
    matcher, model = prepared.matcher, load_model(tiny_model).model
    model.setup_rope(1024)  # as the handler's runner: the prompt and its tools run past the tiny model's 512
    masks = TokenMasks(handler.engine.runner.vocab_size)
    tok = handler.loaded.tokenizer
    assert matcher is not None
    expected, measured, text = 1.0, 0, b""
    with torch.inference_mode():
        for t, token in enumerate(tokens):
            key = text.find(b'"name":')
            if key >= 0 and text.count(b'"', key + 7) >= 2:
                break  # the name is written
            if key >= 0:
                ids = torch.tensor(prepared.prompt_ids + tokens[:t])
                logits = model.logits(model(ids, torch.arange(len(ids)))[-1:]).float()
                raw = torch.logsumexp(logits[0], -1)
                masks.apply(logits, [matcher])
                expected *= float(torch.exp(torch.logsumexp(logits[0], -1) - raw))
                measured += 1
            assert matcher.consume_token(token)
            text += tok.token_bytes(token)
    assert measured >= 2 and r["calls"][0]["name"].encode() in text
    # Noise is sure of nothing: the grammar took much of its odds away.
    assert 0 < expected < 0.5
    assert r["confidence"] == pytest.approx(expected, rel=1e-3)
    # A reply that began with text is not measured.
    text_reply = await run_job(handler, job("words", tools=TOOLS, sampling=_seeded(4)), replace(gate, threshold=1.0))
    assert not text_reply["calls"] and text_reply["confidence"] is None


async def handle_job(handler: TextJobHandler, nats_url: str, j: TextJob) -> list[Any]:
    """The job through the worker's own handle(), its replies sent over a real NATS server and read back."""
    nc = await nats.connect(nats_url)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await handler.handle(j, ReplySink(nc, inbox, j.request_id, "test-worker"))
        await nc.flush()
        replies = []
        while not replies or not getattr(replies[-1], "status", JobStatus.RUNNING).finished:
            replies.append(decode_reply((await sub.next_msg(timeout=10)).data))
        return replies
    finally:
        await nc.close()


async def test_a_call_whose_name_the_model_was_unsure_of_becomes_a_text_answer(
    handler: TextJobHandler, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under auto the worker drops a call whose call_confidence is under the gate's name_threshold, before any of it
    is sent, and answers in text from the same prompt. The tiny model's noise begins an auto reply with a call
    about once in 130 tries, so a required call stands in for one here: the same reply, with the gate's check
    attached as prepare() attaches it under auto."""
    assert handler.call_gate is not None
    prepare = handler.prepare

    def gated(threshold: float) -> None:
        def with_gate(j: TextJob) -> Any:
            prepared = prepare(j)
            prepared.call_gate = replace(handler.call_gate, threshold=1e-9, name_threshold=threshold)
            return prepared

        monkeypatch.setattr(handler, "prepare", with_gate)

    def asked(rid: str) -> TextJob:
        return job(rid, tools=TOOLS, tool_choice=ToolChoice(mode="required"), sampling=_seeded(4))

    gated(1e-300)  # the model is sure enough of anything (noise: 1e-9 and less): the call stands
    kept = await handle_job(handler, nats_url, asked("kept"))
    chunks = [r for r in kept if isinstance(r, TextChunk)]
    assert any(c.tool_calls for c in chunks)  # (the noise goes on calling until max_tokens)

    gated(1.0)  # never sure enough: the same reply is answered in text
    dropped = await handle_job(handler, nats_url, asked("dropped"))
    chunks = [r for r in dropped if isinstance(r, TextChunk)]
    assert not any(c.tool_calls for c in chunks) and chunks[-1].finish_reason != "tool_calls"
    answer = "".join(c.text for c in chunks)
    assert answer and not answer.lstrip().startswith(("{", "<", "`", "["))
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > sum(len(c.token_ids) for c in chunks)  # the call's too


PING = {
    "type": "function",
    "function": {
        "name": "ping",
        "parameters": {"type": "object", "properties": {"x": {"const": 1}}, "required": ["x"]},
    },
}


async def test_an_exact_repeat_of_a_call_ends_the_reply(handler: TextJobHandler) -> None:
    """Every call to ``ping`` is the same call: the model can only add repeats, and each one ends the reply."""
    # Seeds whose noise goes on after the first call (tags or none), and two whose noise stops there.
    seeds = (8, 9, 21, 23, 0, 1)
    runs = [
        job(f"ping-{s}", tools=(PING,), tool_choice=ToolChoice(mode="required"), sampling=_seeded(s)) for s in seeds
    ]
    results = await asyncio.gather(*(run_job(handler, j) for j in runs))
    for r in results:
        assert r["status"] == JobStatus.FINISHED_STOPPED and r["finish"] == "tool_calls"
        [call] = r["calls"]
        assert call["name"] == "ping" and json.loads(call["arguments"]) == {"x": 1}
    assert any(r["repeated"] for r in results)  # some went on to repeat it, and were stopped


async def test_a_request_stopped_by_its_caller_ends_as_stopped(handler: TextJobHandler) -> None:
    """TextEngine.stop_request, which the worker calls at a repeated call: the reply ends at once, as if it had
    stopped by itself (its last output has the status and the usage)."""
    sampling = SamplingParams(temperature=1.0, seed=0, max_tokens=300, ignore_eos=True)
    prepared = await asyncio.to_thread(handler.prepare, job("stopped", sampling=sampling))
    req = GenerateRequest(
        request_id="stopped", prompt_ids=prepared.prompt_ids, sampling=prepared.sampling, max_tokens=300
    )
    outputs = []
    async for out in handler.engine.generate(req):
        outputs.append(out)
        handler.engine.stop_request("stopped")
    last = outputs[-1]
    assert last.status == JobStatus.FINISHED_STOPPED and last.usage is not None
    assert last.usage.completion_tokens == sum(len(o.token_ids) for o in outputs) < 20


async def test_a_call_cut_by_max_tokens_is_returned_as_far_as_it_got(handler: TextJobHandler) -> None:
    long = {"type": "string", "minLength": 1000, "maxLength": 1000}
    write = {
        "type": "function",
        "function": {
            "name": "write",
            "parameters": {"type": "object", "properties": {"text": long}, "required": ["text"]},
        },
    }
    # 80 tokens hold the call's opening (about 50 characters) but never 1000 characters of text.
    sampling = SamplingParams(temperature=1.0, seed=1, max_tokens=80)
    r = await run_job(
        handler, job("cut", tools=(write,), tool_choice=ToolChoice(mode="function", name="write"), sampling=sampling)
    )
    assert r["status"] == JobStatus.FINISHED_LENGTH and r["finish"] is None and r["text"] == ""
    [call] = r["calls"]
    assert call["name"] == "write" and call["arguments"].startswith('{"text": "')
    with pytest.raises(ValueError):
        json.loads(call["arguments"])


async def test_hermes_calls_are_written_with_the_tag_tokens(hermes_handler: TextJobHandler) -> None:
    assert hermes_handler.tool_format is HERMES
    required = [
        job(f"h-{s}", tools=TOOLS, tool_choice=ToolChoice(mode="required"), sampling=_seeded(s)) for s in range(4)
    ]
    auto = [job(f"h-auto-{s}", tools=TOOLS, sampling=_seeded(s)) for s in range(4)]
    results = await asyncio.gather(*(run_job(hermes_handler, j) for j in required + auto))
    tagged = [r for r in results[:4] if r["tokens"][0] == 510]  # the model's own <tool_call> token
    assert tagged, "no reply used the tag token"
    for r in results[:4]:
        assert r["text"] == ""
        for call in complete(r):
            assert_valid(call)
    assert any(r["finish"] == "tool_calls" for r in results[:4])
    # Never the tag spelled out of ordinary tokens: a reply starts with its token, or is calls without tags.
    bare = [r for r in results[:4] if r not in tagged]
    assert all(hermes_handler.loaded.tokenizer.decode(r["tokens"]).startswith(('{"name"', "```json")) for r in bare)
    for r in results[4:]:  # auto: calls from the first token (with tags or bare), or text that holds no tag
        if r["calls"]:
            assert r["text"] == ""
            for call in complete(r):
                assert_valid(call)
        else:
            assert r["tokens"][0] != 510 and "<tool_call>" not in r["text"] and not r["text"].startswith("{")


async def test_unconstrained_rows_are_untouched_by_their_constrained_neighbours(handler: TextJobHandler) -> None:
    greedy = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    alone = await run_job(handler, job("plain-alone", sampling=greedy))
    together = await asyncio.gather(
        run_job(handler, job("plain-mixed", sampling=greedy)),
        *(
            run_job(
                handler, job(f"mixed-{s}", tools=TOOLS, tool_choice=ToolChoice(mode="required"), sampling=_seeded(s))
            )
            for s in range(3)
        ),
    )
    assert together[0]["text"] == alone["text"]


@pytest.mark.parametrize(
    ("constraint", "check"),
    [
        (OutputConstraint(type="json_object"), lambda t: isinstance(json.loads(t), dict)),
        (
            OutputConstraint(
                type="json_schema",
                json_schema={
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["ok", "n"],
                    "additionalProperties": False,
                },
            ),
            lambda t: jsonschema.validate(json.loads(t), {"required": ["ok", "n"]}) is None,
        ),
        (
            OutputConstraint(type="regex", pattern=r"(yes|no), [0-9]{3}"),
            lambda t: re.fullmatch(r"(yes|no), [0-9]{3}", t),
        ),
        (
            OutputConstraint(type="grammar", grammar='root ::= "color: " ("red" | "green" | "blue")'),
            lambda t: t in ("color: red", "color: green", "color: blue"),
        ),
    ],
    ids=["json_object", "json_schema", "regex", "gbnf"],
)
async def test_response_format_replies_match(handler: TextJobHandler, constraint: OutputConstraint, check: Any) -> None:
    sampling = SamplingParams(temperature=1.0, seed=3, max_tokens=200)
    r = await run_job(handler, job(f"rf-{constraint.type}", response_format=constraint, sampling=sampling))
    if constraint.type != "json_object":  # these grammars are finite: the reply always ends within max_tokens
        assert r["status"] == JobStatus.FINISHED_STOPPED
    if r["status"] == JobStatus.FINISHED_STOPPED:
        assert check(r["text"]), r["text"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": OutputConstraint(type="regex", pattern="(unclosed")}, "response_format"),
        ({"response_format": OutputConstraint(type="grammar", grammar='root ::= "a" missing_rule')}, "response_format"),
        (
            {"response_format": OutputConstraint(type="json_schema", json_schema={"type": "object", "if": 3})},
            "response_format",
        ),
        (
            {"tools": (WEATHER, {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}})},
            "tools.1.function.parameters",
        ),
    ],
    ids=["regex", "gbnf", "schema", "tool"],
)
def test_constraints_that_cannot_compile_are_refused_with_a_400(
    handler: TextJobHandler, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(RequestError) as e:
        handler.prepare(job("bad", **fields))
    assert e.value.info.status == 400 and e.value.info.param == param


def _seeded(seed: int) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=160)
