"""How a model writes tool calls: its prompt for tools, and the grammar its calls are decoded under.

Formats, chosen from the model's chat template (or ``ModelSpec.tool_format``):

    hermes   the template renders ``tools`` and ``<tool_call>\n{"name", "arguments"}\n</tool_call>`` (Qwen2.5, Hermes)
    llama3   the template renders ``tools``; a call is a bare ``{"name", "parameters"}`` object (Llama 3.1+)
    json     Ember's plain convention for templates without tools (SmolLM2): a system preamble lists the tools
             and asks for ``<tool_call>`` lines; tool calls and results are rendered as text turns

The grammar: under ``tool_choice=auto`` a reply is either text (that never holds the opening tag) or calls from
its first token on (with their tags, or bare JSON objects, which small models often write instead), so the model's
first tokens make the choice and what it writes is always one of the two;
``required`` and a named function constrain to calls from the first token; ``none`` renders no tools and uses no
grammar. Each call's arguments follow its tool's schema made strict (strict_schema), in the layout the model's
template writes, and a reply holds one call for a named function or without parallel calls, else up to
``MAX_CALLS``. The reply is split into text and calls by ``tool_parser.ToolCallParser``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from ember.bus.messages import ToolChoice
from ember.runtimes.text.grammar import json_rule
from ember.runtimes.text.strict_schema import strict_schema
from ember.runtimes.text.tool_parser import FENCE, ParsedCall, ToolCallParser

FormatName = Literal["hermes", "llama3", "json"]

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
# Told to the model with tools under tool_choice=auto (ToolFormat.with_guidance), on the user's turn...
TOOL_GUIDANCE = (
    "Answer in plain text whenever you can: questions of knowledge, explanations, writing, code and chat need no "
    "function. Call a function only when the user asks for exactly what it does (an action, or live data it "
    "returns); never call one just because it is available."
)
# ...and on a turn that holds the results of the model's calls.
RESULT_GUIDANCE = (
    "Answer the user's request from the function results above, in plain text. Call another function only if the "
    "request needs something those results do not give."
)
# Both in one, at the end of the system message, for the formats whose templates take no second system turn.
SYSTEM_GUIDANCE = (
    "Call a function only when the user's request needs what it does; for anything else, or when a function's "
    "result is already in the conversation, answer directly in plain text."
)
DEFAULT_SYSTEM = "You are a helpful assistant."
# Calls in one reply at most, when parallel calls are on: a bound on a model that keeps making new calls.
MAX_CALLS = 8


@dataclass(frozen=True)
class ToolFormat:
    name: FormatName
    # Markup around each call; "" for formats whose calls are bare JSON objects.
    open: str
    close: str
    # The key of the arguments object in a call ("parameters" for Llama 3).
    arguments_key: str
    # The chat template renders tools, tool calls and tool results itself.
    native: bool
    # More than one call per reply.
    parallel: bool = True
    # Between a tag and the call's JSON, as the chat template writes calls ("\n" in Qwen's).
    pad: str = ""

    def template_inputs(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """(messages, tools) as this model's chat template takes them."""
        if self.native:
            return [_native_message(m) for m in messages], tools
        return _plain_messages(messages, tools, self), None

    def with_guidance(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` with guidance to the model, for ``auto`` only: the templates' own tool prompts ("you may call
        one or more functions...") make small models call some function for almost any question, and after a
        result, write the call out again rather than answer.

        Where it goes matters. The hermes templates (Qwen's) put the tool list after the system message, and
        guidance ahead of that list moves a small model little. So ``TOOL_GUIDANCE`` is a system turn of its own
        after the list, ahead of the conversation (which keeps the prompt's prefix, and its prefix-cache entries,
        the same from turn to turn), and on a turn that holds call results ``RESULT_GUIDANCE`` is one more after
        them, just before the reply. With Qwen2.5-Coder-1.5B, on benchmarks/tool_call_eval.py, against the first
        guidance at the end of the system message: irrelevance 58% -> 83% (with the call gate, call_gate.py),
        multi-turn answers 77% -> 100%, calls where a tool fits unchanged (90% right function). Other formats get
        ``SYSTEM_GUIDANCE`` at the end of the system message: not every template takes a system turn anywhere but
        first.
        """
        results = bool(messages) and messages[-1].get("role") == "tool"
        has_system = bool(messages) and messages[0].get("role") == "system"
        if self.native and self.open:
            head = messages[:1] if has_system else [{"role": "system", "content": DEFAULT_SYSTEM}]
            rest = messages[1:] if has_system else messages
            tail = [{"role": "system", "content": RESULT_GUIDANCE}] if results else []
            return [*head, {"role": "system", "content": TOOL_GUIDANCE}, *rest, *tail]
        if has_system and isinstance(messages[0].get("content"), str):
            system = messages[0]
            return [{**system, "content": f"{system['content']}\n\n{SYSTEM_GUIDANCE}"}, *messages[1:]]
        return [{"role": "system", "content": f"{DEFAULT_SYSTEM}\n\n{SYSTEM_GUIDANCE}"}, *messages]

    def grammar(
        self, tools: list[dict[str, Any]], choice: ToolChoice, parallel: bool, special: frozenset[str] = frozenset()
    ) -> str:
        """The Lark grammar (llguidance dialect) a reply with these tools is decoded under.

        ``special``: the tags that are one special token of the model's vocabulary (Qwen's ``<tool_call>``): the
        grammar names that token, which is how the model writes them (llguidance never spells a special token
        out of ordinary ones).
        """
        allowed = [t for t in tools if choice.mode != "function" or t["function"]["name"] == choice.name]
        many = MAX_CALLS if parallel and self.parallel and choice.mode != "function" else 1
        lines = [f"body: {json_rule(call_schema(allowed, self.arguments_key))}"]

        def repeated(item: str) -> str:
            return f'{item} ("\\n" {item}){{0,{many - 1}}}' if many > 1 else item

        # Calls as bare JSON objects, one per line: the format's own, or a tagged format's calls without their
        # tags, bare or in a JSON code block. Small models (Qwen2.5-Coder 0.5B) often call so: under auto such a
        # reply is decoded as calls rather than as text, and under required the model keeps the form it prefers
        # (with the tags forced, the 0.5B went on making up calls until MAX_CALLS; bare, it stops when done).
        lines.append(f"bare: {repeated('body')}")
        starts = ["bare"]
        if self.open:
            open_, close, pad = _tag(self.open, special), _tag(self.close, special), _lark_string(self.pad)
            lines.append(f"call: {open_} {pad} body {pad} {close}" if self.pad else f"call: {open_} body {close}")
            lines.append(f"calls: {repeated('call')}")
            lines.append(f'fenced: {_lark_string(FENCE)} bare "\\n```"')
            starts += ["calls", "fenced"]
        if choice.mode == "auto":
            lines.append(f"TEXT: {self._text_lexeme()}")
            starts.insert(0, "TEXT")
        lines.append(f"start: {' | '.join(starts)}")
        return "\n".join(lines) + "\n"

    def text_grammar(self) -> str:
        """A text reply and no call: the answer of a model that began to repeat a call whose result it has.

        Nor markup or code: forced off its call, a small model otherwise echoes the result in the template's
        ``<tool_response>`` tags or writes the call out in a code block (Qwen2.5-Coder-1.5B, 6 of 13 multi-turn
        cases of benchmarks/tool_call_eval.py).
        """
        return f"TEXT: {self._text_lexeme()} & ~/[<`](?s:.*)/\nstart: TEXT\n"

    def _text_lexeme(self) -> str:
        if not self.open:
            return "/([^{ \\n](?s:.*))?/"  # text that does not start like a bare JSON call
        # A text reply never holds the opening tag, spelled out or as its token, nor starts like calls without it,
        # nor with the template's own tool markup (a small model answers "<tools></tools>" to a question no tool
        # fits), nor with a call in made-up brackets ("<{"name": ...}>": Qwen2.5-Coder-1.5B's way of calling in
        # the turn after a tool result).
        fence = _lark_regex(FENCE.strip())
        markup = "~/<(tool|[ \\n]*[{\\[])(?s:.*)/"
        return f"/([^{{](?s:.*))?/ & ~/(?s:.*){_lark_regex(self.open)}(?s:.*)/ & ~/{fence}(?s:.*)/ & {markup}"

    def parser(self, answered: list[ParsedCall] | None = None) -> ToolCallParser:
        return ToolCallParser(self, answered=answered or [])


HERMES = ToolFormat("hermes", _OPEN, _CLOSE, "arguments", native=True, pad="\n")
LLAMA3 = ToolFormat("llama3", "", "", "parameters", native=True, parallel=False)
PLAIN_JSON = ToolFormat("json", _OPEN, _CLOSE, "arguments", native=False)
FORMATS: dict[str, ToolFormat] = {f.name: f for f in (HERMES, LLAMA3, PLAIN_JSON)}


def choose_format(chat_template: str | None, override: str | None = None) -> ToolFormat:
    """The model's format: the configured one, else what its chat template shows it was trained on."""
    if override is not None:
        return FORMATS[override]
    template = chat_template or ""
    if "tools" in template and _OPEN in template:
        return HERMES
    if "tools" in template and ("<|python_tag|>" in template or "ipython" in template):
        return LLAMA3
    return PLAIN_JSON


def answered_calls(messages: list[dict[str, Any]]) -> list[ParsedCall]:
    """The calls of this turn (since the last user message) whose results the conversation already holds, with
    their arguments in the layout the grammar writes (so that a repeat is recognised as the model writes it)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    turn = messages[last_user + 1 :]
    results = {m.get("tool_call_id") for m in turn if m.get("role") == "tool"}
    out = []
    for m in turn:
        for c in m.get("tool_calls") or () if m.get("role") == "assistant" else ():
            fn = c.get("function") or {}
            if c.get("id") not in results or not isinstance(fn.get("name"), str):
                continue
            try:
                arguments = json.dumps(json.loads(fn.get("arguments") or "{}"), ensure_ascii=False)
            except ValueError:
                continue
            out.append(ParsedCall(fn["name"], arguments, ok=True))
    return out


def call_schema(tools: list[dict[str, Any]], arguments_key: str) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``: ``{"name": <const>, <arguments_key>: <its parameters>}``."""
    options: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for t in tools:
        fn = t["function"]
        params = strict_schema(fn.get("parameters") or {"type": "object", "properties": {}})
        # $refs inside a tool's schema point at its root; the call schema's root carries the definitions.
        for key in ("$defs", "definitions"):
            if key in params:
                defs.setdefault(key, {}).update(params.pop(key))
        options.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, arguments_key: params},
                "required": ["name", arguments_key],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, **defs}


def _lark_string(s: str) -> str:
    return json.dumps(s)


def _tag(tag: str, special: frozenset[str]) -> str:
    """A tag in the grammar: its special token where the vocabulary has one, else its text."""
    return tag if tag in special else _lark_string(tag)


def _lark_regex(s: str) -> str:
    return re.escape(s).replace("/", "\\/")


def _native_message(m: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as HF templates expect it: tool-call arguments as objects, not JSON text."""
    calls = m.get("tool_calls")
    if not calls:
        return m
    out = []
    for c in calls:
        fn = dict(c.get("function") or {})
        if isinstance(fn.get("arguments"), str):
            fn["arguments"] = _loads_or_text(fn["arguments"])
        out.append({**c, "function": fn})
    return {**m, "tool_calls": out}


def _loads_or_text(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return s


def _plain_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, fmt: ToolFormat
) -> list[dict[str, Any]]:
    """Ember's plain convention: tools in the system turn, calls and results as ordinary text turns."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), m.get("content") or ""
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(
                fmt.open
                + json.dumps({"name": fn.get("name"), fmt.arguments_key: _loads_or_text(fn.get("arguments") or "{}")})
                + fmt.close
                for c in m["tool_calls"]
                if (fn := c.get("function") or {})
            )
            out.append({"role": "assistant", "content": f"{content}\n{calls}" if content else calls})
        elif role == "tool":
            result = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + result}
            else:
                out.append({"role": "user", "content": result, "_tool_results": True})
        else:
            out.append({k: v for k, v in m.items() if k != "tool_calls"})
    out = [{k: v for k, v in m.items() if k != "_tool_results"} for m in out]
    if tools:
        preamble = _tool_preamble(tools, fmt)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{preamble}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": preamble})
    return out


def _tool_preamble(tools: list[dict[str, Any]], fmt: ToolFormat) -> str:
    listed = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return (
        "You can call these functions:\n"
        f"{listed}\n"
        "To call a function, answer with one line per call and nothing else:\n"
        f'{fmt.open}{{"name": "<function name>", "{fmt.arguments_key}": <JSON object of arguments>}}{fmt.close}\n'
        "If no function fits the request, answer in plain text."
    )
