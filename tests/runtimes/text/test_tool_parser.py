"""The streaming tool-call parser: text and calls split however the reply is chunked, arguments streamed as
written, repeats dropped, cut calls kept."""

from __future__ import annotations

import json

import pytest

from ember.bus.messages import ToolCallDelta
from ember.runtimes.text.tool_format import HERMES, LLAMA3, PLAIN_JSON, ToolFormat, answered_calls
from ember.runtimes.text.tool_parser import ParsedCall, ToolCallParser

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, {"x": "}"}]}}'
ADD = '{"name": "add", "arguments": {"a": 1}}'
HERMES_TWO = f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{ADD}\n</tool_call>"


def parse(fmt: ToolFormat, reply: str, step: int) -> tuple[str, list[ToolCallDelta], ToolCallParser]:
    """Feed ``reply`` in pieces of ``step`` characters, as the engine streams it."""
    parser = fmt.parser()
    texts, deltas = [], []
    for i in range(0, len(reply), step):
        t, d = parser.feed(reply[i : i + step])
        texts.append(t)
        deltas += d
    t, d = parser.finish()
    return "".join(texts) + t, deltas + d, parser


def calls_of(deltas: list[ToolCallDelta]) -> list[dict[str, str]]:
    """The calls the deltas add up to, checking OpenAI's shape: a first delta with id and name, then arguments."""
    calls: dict[int, dict[str, str]] = {}
    for d in deltas:
        if d.index not in calls:
            assert d.id is not None and d.id.startswith("call_") and len(d.id) == 29
            assert d.name is not None and d.arguments == ""
            assert d.index == len(calls)
            calls[d.index] = {"id": d.id, "name": d.name, "arguments": ""}
        else:
            assert d.id is None and d.name is None and d.arguments
            calls[d.index]["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_hermes_calls_stream_their_arguments_exactly_however_chunked(step: int) -> None:
    text, deltas, parser = parse(HERMES, HERMES_TWO, step)
    assert text == ""
    first, second = calls_of(deltas)
    assert (first["name"], second["name"]) == ("get_weather", "add") and first["id"] != second["id"]
    # Exactly the arguments value: not the call object's closing brace, not the newline, not the tag.
    assert first["arguments"] == '{"city": "Paris", "days": [1, {"x": "}"}]}'
    assert second["arguments"] == '{"a": 1}'
    assert [(c.name, c.arguments, c.ok) for c in parser.calls] == [
        ("get_weather", first["arguments"], True),
        ("add", second["arguments"], True),
    ]


def test_arguments_go_out_token_by_token_and_the_name_first() -> None:
    parser = HERMES.parser()
    pieces = ["<tool_call>", "\n", '{"name": "get', '_weather"', ', "arguments": {"', 'city": "Par', 'is"}}', "\n"]
    out = [parser.feed(p)[1] for p in pieces]
    assert out[:3] == [[], [], []]
    assert [(d.name, d.arguments) for d in out[3]] == [("get_weather", "")]
    assert [d.arguments for d in out[4]] == ['{"']
    assert [d.arguments for d in out[5]] == ['city": "Par']
    assert [d.arguments for d in out[6]] == ['is"}']  # the call object's own "}" is not sent
    assert out[7] == [] and parser.calls[0].arguments == '{"city": "Paris"}'
    assert parser.feed("</tool_call>") == ("", [])


def test_escapes_and_braces_inside_strings_do_not_end_the_arguments() -> None:
    call = '{"name": "f", "arguments": {"s": "a \\" } ] \\\\", "t": "<tool_call>"}}'
    _, deltas, parser = parse(HERMES, f"<tool_call>\n{call}\n</tool_call>", 1)
    [c] = calls_of(deltas)
    assert json.loads(c["arguments"]) == {"s": 'a " } ] \\', "t": "<tool_call>"}
    assert parser.calls[0].ok


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_plain_format_keeps_text_before_the_first_call(step: int) -> None:
    reply = f"Let me check. <tool_call>{WEATHER}</tool_call>\n<tool_call>{ADD}</tool_call>"
    text, deltas, _ = parse(PLAIN_JSON, reply, step)
    assert text == "Let me check. "
    assert [c["name"] for c in calls_of(deltas)] == ["get_weather", "add"]


def test_text_that_only_looks_like_the_tag_is_text() -> None:
    text, deltas, _ = parse(PLAIN_JSON, "a <tool or <tool_c", 1)
    assert text == "a <tool or <tool_c" and deltas == []


def test_a_reply_of_only_calls_has_no_text() -> None:
    text, deltas, _ = parse(PLAIN_JSON, f"\n<tool_call>{ADD}</tool_call>\n", 2)
    assert text == "" and len(calls_of(deltas)) == 1


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_a_call_cut_off_is_returned_as_far_as_it_got(step: int) -> None:
    text, deltas, parser = parse(HERMES, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b', step)
    [c] = calls_of(deltas)
    assert text == "" and c["name"] == "add" and c["arguments"] == '{"a": 1, "b'
    assert parser.calls == []  # not a complete call
    # Before the name is whole there is no call to return.
    assert parse(HERMES, '<tool_call>\n{"name": "ad', step)[:2] == ("", [])


def test_a_call_whose_closing_tag_was_cut_is_complete() -> None:
    _, deltas, parser = parse(HERMES, f"<tool_call>\n{ADD}\n</tool", 3)
    assert calls_of(deltas)[0]["arguments"] == '{"a": 1}' and len(parser.calls) == 1


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_an_exact_repeat_is_dropped_and_ends_the_reply(step: int) -> None:
    other = '{"name": "add", "arguments": {"a": 2}}'
    reply = "\n".join(f"<tool_call>\n{c}\n</tool_call>" for c in (ADD, other, ADD, other))
    _, deltas, parser = parse(HERMES, reply, step)
    assert [c["arguments"] for c in calls_of(deltas)] == ['{"a": 1}', '{"a": 2}']
    assert parser.repeated and len(parser.calls) == 2


def test_a_call_that_starts_like_an_earlier_one_is_held_back_until_it_differs() -> None:
    parser = HERMES.parser()
    parser.feed(f"<tool_call>\n{ADD}\n</tool_call>\n")
    assert parser.feed('<tool_call>\n{"name": "add", "arguments": {"a": ') == ("", [])
    first, args = parser.feed("12")[1]
    assert first.name == "add" and first.index == 1 and args.arguments == '{"a": 12'
    assert [d.arguments for d in parser.feed("}}\n</tool_call>")[1]] == ["}"]
    assert not parser.repeated and len(parser.calls) == 2


@pytest.mark.parametrize("cut", [-1, -4, -12])
def test_a_repeat_cut_off_before_it_differs_is_dropped_too(cut: int) -> None:
    _, deltas, parser = parse(HERMES, f"<tool_call>\n{ADD}\n</tool_call>\n<tool_call>\n{ADD[:cut]}", 1000)
    assert [c["arguments"] for c in calls_of(deltas)] == ['{"a": 1}']
    assert parser.repeated


def test_llama3_calls_are_bare_json_with_parameters() -> None:
    text, deltas, _ = parse(LLAMA3, ' {"name": "add", "parameters": {"a": 2}}', 5)
    assert text == "" and calls_of(deltas) == [{"id": deltas[0].id, "name": "add", "arguments": '{"a": 2}'}]
    assert parse(LLAMA3, "Hello {there}", 5)[:2] == ("Hello {there}", [])


def test_arguments_before_the_name_wait_for_it() -> None:
    """Only without grammar: a model may write the keys in another order."""
    _, deltas, _ = parse(HERMES, '<tool_call>\n{"arguments": {"a": 1}, "name": "add"}\n</tool_call>', 2)
    assert calls_of(deltas) == [{"id": deltas[0].id, "name": "add", "arguments": '{"a": 1}'}]


def test_malformed_calls_are_sent_for_the_gateway_to_refuse() -> None:
    """Only without grammar: a call that is not JSON ends at its closing tag and goes out as written."""
    _, deltas, parser = parse(PLAIN_JSON, "<tool_call>call add(1)</tool_call>", 3)
    assert calls_of(deltas) == [{"id": deltas[0].id, "name": "", "arguments": "call add(1)"}]
    assert not parser.calls[0].ok
    _, deltas, parser = parse(PLAIN_JSON, '<tool_call>{"name": "add", "arguments": {"a": 1}</tool_call> more', 3)
    assert calls_of(deltas)[0]["arguments"] == '{"a": 1}' and not parser.calls[0].ok


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_calls_without_their_tags_are_calls(step: int) -> None:
    """Under auto the grammar lets a tagged format's reply be bare JSON calls, one per line."""
    text, deltas, parser = parse(HERMES, f"{ADD}\n{WEATHER}", step)
    assert text == "" and [c["name"] for c in calls_of(deltas)] == ["add", "get_weather"]
    assert parser.calls[1].arguments == '{"city": "Paris", "days": [1, {"x": "}"}]}'
    text, deltas, _ = parse(HERMES, f"```json\n{ADD}\n{WEATHER}\n```", step)
    assert text == "" and [c["name"] for c in calls_of(deltas)] == ["add", "get_weather"]
    # Text that starts with other JSON, or with anything before the call, is text.
    assert parse(HERMES, "```python\nx = 1\n```", step)[:2] == ("```python\nx = 1\n```", [])
    assert parse(HERMES, '{"answer": 4}', step)[:2] == ('{"answer": 4}', [])
    assert parse(PLAIN_JSON, f"So: {ADD}", step)[:2] == (f"So: {ADD}", [])


def test_the_turns_answered_calls_are_found_in_the_grammars_layout() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}}
    unanswered = {"id": "c2", "type": "function", "function": {"name": "add", "arguments": '{"a":2}'}}
    earlier = {"id": "c0", "type": "function", "function": {"name": "add", "arguments": '{"a":0}'}}
    messages = [
        {"role": "user", "content": "add 0"},
        {"role": "assistant", "tool_calls": [earlier]},
        {"role": "tool", "tool_call_id": "c0", "content": "0"},
        {"role": "user", "content": "add 1 and 2"},  # the turn starts here: c0 belongs to an earlier one
        {"role": "assistant", "tool_calls": [call, unanswered]},
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
    ]
    (answered,) = answered_calls(messages)
    assert (answered.name, answered.arguments) == ("add", '{"a": 1}')
    assert answered_calls(messages[:4]) == []


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_repeating_a_call_the_turn_has_the_result_of_is_dropped(step: int) -> None:
    answered = [ParsedCall("add", '{"a": 1}', ok=True)]
    parser = HERMES.parser(answered)
    text, deltas = parser.feed(f"<tool_call>\n{ADD}\n</tool_call>"[:step])
    more_text, more = parser.feed(f"<tool_call>\n{ADD}\n</tool_call>"[step:])
    assert (text + more_text, deltas + more) == ("", [])
    assert parser.repeated and not parser.calls
    # A different call is made as usual, its arguments held back only while they could still be the repeat.
    other = HERMES.parser(answered)
    _, deltas = other.feed('<tool_call>\n{"name": "add", "arguments": {"a": 12}}\n</tool_call>')
    assert [c["arguments"] for c in calls_of(deltas)] == ['{"a": 12}'] and not other.repeated
