"""Tool formats: which one a model gets, how tools and tool turns are rendered, and the streaming call parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.bus.messages import ToolCallDelta
from ember.runtimes.text.tokenizer import TextTokenizer
from ember.runtimes.text.tool_format import HERMES, LLAMA3, PLAIN_JSON, ToolFormat, choose_format

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
REPLY = 'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
TWO = REPLY + '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'


def parse(fmt: ToolFormat, reply: str, step: int) -> tuple[str, list[ToolCallDelta]]:
    """Feed ``reply`` in pieces of ``step`` characters, as the engine streams it."""
    parser = fmt.parser()
    texts, deltas = [], []
    for i in range(0, len(reply), step):
        t, d = parser.feed(reply[i : i + step])
        texts.append(t)
        deltas += d
    t, d = parser.finish()
    return "".join(texts) + t, deltas + d


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_calls_are_split_from_text_however_the_reply_is_chunked(step: int) -> None:
    text, deltas = parse(PLAIN_JSON, TWO, step)
    assert text == "Let me check. "
    first, args, second, args2 = deltas
    assert (first.index, first.name, first.arguments) == (0, "get_weather", "")
    assert first.id is not None and first.id.startswith("call_") and len(first.id) == 29
    assert args.id is None and args.name is None and json.loads(args.arguments) == {"city": "Paris"}
    assert (second.index, second.name) == (1, "add") and second.id != first.id
    assert json.loads(args2.arguments) == {"a": 1}


def test_a_reply_of_only_calls_has_no_text_and_a_cut_off_call_is_dropped() -> None:
    text, deltas = parse(PLAIN_JSON, '\n<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n', 2)
    assert text == "" and len(deltas) == 2
    text, deltas = parse(PLAIN_JSON, '<tool_call>{"name": "add", "argum', 4)
    assert text == "" and deltas == []


def test_text_that_only_looks_like_the_tag_is_text() -> None:
    text, deltas = parse(PLAIN_JSON, "a <tool or <tool_c", 1)
    assert text == "a <tool or <tool_c" and deltas == []


def test_llama3_calls_are_bare_json_with_parameters() -> None:
    text, deltas = parse(LLAMA3, ' {"name": "add", "parameters": {"a": 2}}', 5)
    assert text == "" and deltas[0].name == "add" and json.loads(deltas[1].arguments) == {"a": 2}
    assert parse(LLAMA3, "Hello {there}", 5) == ("Hello {there}", [])


def test_the_format_is_chosen_from_the_chat_template() -> None:
    qwen_like = "{% if tools %}...<tool_call>...{% endif %}"
    llama_like = "{% if tools %}...<|python_tag|>...{% endif %}"
    assert choose_format(qwen_like) is HERMES
    assert choose_format(llama_like) is LLAMA3
    assert choose_format("{{ messages }}") is PLAIN_JSON
    assert choose_format(None) is PLAIN_JSON
    assert choose_format(qwen_like, "json") is PLAIN_JSON  # the config's override wins


def test_plain_format_renders_tools_calls_and_results_as_text_turns(tiny_model: Path) -> None:
    tok = TextTokenizer.from_dir(tiny_model)
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    rendered, tools = PLAIN_JSON.template_inputs(messages, [TOOL])
    assert tools is None
    prompt = tok.apply_chat_template(rendered)
    assert prompt.startswith("<|im_start|>system\nYou can call these functions:\n" + json.dumps(TOOL["function"]))
    assert '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "P"}}</tool_call>' in prompt
    assert '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>' in prompt


def test_native_formats_get_arguments_as_objects() -> None:
    messages = [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]}]
    rendered, tools = HERMES.template_inputs(messages, [TOOL])
    assert rendered[0]["tool_calls"][0]["function"]["arguments"] == {"x": 1} and tools == [TOOL]
