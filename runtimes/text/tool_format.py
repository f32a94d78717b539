"""How a model writes tool calls: its prompt for tools, the grammar its calls are decoded under, and their parser.

Formats, chosen from the model's chat template (or ``ModelSpec.tool_format``):

    hermes   the template renders ``tools`` and ``<tool_call>{"name", "arguments"}</tool_call>`` (Qwen2.5, Hermes)
    llama3   the template renders ``tools``; a call is a bare ``{"name", "parameters"}`` object (Llama 3.1+)
    json     Ember's plain convention for templates without tools (SmolLM2): a system preamble lists the tools
             and asks for ``<tool_call>`` lines; tool calls and results are rendered as text turns

Under ``tool_choice=auto`` the grammar lets the model write free text (never the opening tag) or, from the
opening tag on, only calls that match the tools' schemas; ``required`` and a named function constrain from the
first token; ``none`` renders no tools and uses no grammar.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from ember.bus.messages import ToolCallDelta, ToolChoice
from ember.runtimes.text.grammar import json_rule

FormatName = Literal["hermes", "llama3", "json"]

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"


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

    def template_inputs(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """(messages, tools) as this model's chat template takes them."""
        if self.native:
            return [_native_message(m) for m in messages], tools
        return _plain_messages(messages, tools, self), None

    def grammar(self, tools: list[dict[str, Any]], choice: ToolChoice, parallel: bool) -> str:
        """The Lark grammar (llguidance dialect) a reply with these tools is decoded under."""
        allowed = [t for t in tools if choice.mode != "function" or t["function"]["name"] == choice.name]
        body = json_rule(call_schema(allowed, self.arguments_key))
        many = parallel and self.parallel
        lines = [f"body: {body}"]
        if not self.open:
            # A bare JSON call, or text that does not start like one.
            call = "body"
            lines.append("TEXT: /([^{ \\n](?s:.*))?/")
            lines.append(f"start: {call}" if choice.mode != "auto" else f"start: TEXT | {call}")
            return "\n".join(lines) + "\n"
        open_, close = _lark_string(self.open), _lark_string(self.close)
        more = f"(SEP {open_} body {close})*" if many else ""
        lines.append("SEP: /\\n?/")
        if choice.mode == "auto":
            tag = _lark_regex(self.open)
            # The text may not contain the opening tag; a lazy lexeme ends at the tag's first occurrence, so the
            # lexer needs no look-ahead to tell text from the start of a call.
            lines.append(f"TEXT: /(?s:.*)/ & ~/(?s:.*){tag}(?s:.*)/")
            lines.append(f"opening[lazy]: /(?s:.*){tag}/")
            lines.append(f"start: TEXT | opening body {close} {more} SEP")
        else:
            lines.append(f"start: {open_} body {close} {more} SEP")
        return "\n".join(lines) + "\n"

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self)


HERMES = ToolFormat("hermes", _OPEN, _CLOSE, "arguments", native=True)
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


def call_schema(tools: list[dict[str, Any]], arguments_key: str) -> dict[str, Any]:
    """The JSON schema of one call to any of ``tools``: ``{"name": <const>, <arguments_key>: <its parameters>}``."""
    options: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for t in tools:
        fn = t["function"]
        params = dict(fn.get("parameters") or {"type": "object", "properties": {}})
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


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedCall:
    """A call as the model wrote it; ``ok`` is False when its JSON is malformed (only possible without grammar)."""

    name: str
    arguments: str
    ok: bool


@dataclass
class ToolCallParser:
    """Splits a reply, as it streams, into plain text and complete tool calls.

    A call is sent only once it is complete (its closing tag, or the end of the reply for bare-JSON formats),
    as a first delta with id and name and a second with all its arguments: a reply cut off by max_tokens then
    never leaves a partial call behind.
    """

    fmt: ToolFormat
    calls: list[ParsedCall] = field(default_factory=list)
    _buf: str = ""
    _in_call: bool = False
    _started: bool = False
    # Whitespace at the start, held back: a reply that is only calls has no content.
    _pending: str = ""
    _emitted: bool = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """(text for the client, deltas of the calls completed by this text)."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is left at the end of the reply; an unfinished call (cut off by max_tokens) is dropped."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, list[ToolCallDelta]]:
        if not self.fmt.open:
            return self._drain_bare(final)
        out: list[str] = []
        deltas: list[ToolCallDelta] = []
        while True:
            if self._in_call:
                end = self._buf.find(self.fmt.close)
                if end < 0:
                    if final:
                        self._buf = ""
                    break
                deltas += self._complete(self._buf[:end])
                self._buf, self._in_call = self._buf[end + len(self.fmt.close) :], False
                continue
            start = self._buf.find(self.fmt.open)
            # Only text before the first call is content: the grammar allows just whitespace after it.
            if start >= 0:
                if not self.calls:
                    out.append(self._buf[:start])
                self._buf, self._in_call = self._buf[start + len(self.fmt.open) :], True
                continue
            keep = 0 if final else _partial_suffix(self._buf, self.fmt.open)
            if not self.calls:
                out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            break
        return self._text("".join(out), final), deltas

    def _drain_bare(self, final: bool) -> tuple[str, list[ToolCallDelta]]:
        if not self._started:
            stripped = self._buf.lstrip()
            if not stripped and not final:
                return "", []
            self._started = True
            self._in_call = stripped.startswith("{")
        if not self._in_call:
            text, self._buf = self._buf, ""
            return text, []
        if not final:
            return "", []
        body, self._buf = self._buf, ""
        return "", self._complete(body)

    def _text(self, text: str, final: bool) -> str:
        """Leading whitespace is held back until text follows it (or the reply ends without calls)."""
        if self._emitted:
            return text
        self._pending += text
        if self._pending.strip() or (final and not self.calls):
            self._emitted = True
            text, self._pending = self._pending, ""
            return text
        return ""

    def _complete(self, body: str) -> list[ToolCallDelta]:
        index = len(self.calls)
        try:
            obj = json.loads(body)
            name, args = obj["name"], obj[self.fmt.arguments_key]
            call = ParsedCall(str(name), json.dumps(args, ensure_ascii=False), ok=isinstance(name, str))
        except (ValueError, KeyError, TypeError):
            call = ParsedCall("", body.strip(), ok=False)
        self.calls.append(call)
        return [
            ToolCallDelta(index=index, id=new_call_id(), name=call.name, arguments=""),
            ToolCallDelta(index=index, arguments=call.arguments),
        ]


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that could be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
