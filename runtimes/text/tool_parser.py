"""Splitting a reply, as it streams, into its text and its tool calls, each call's arguments streamed as decoded.

A call is followed character by character (``_CallScanner``: strings, escapes, nesting), so that its first delta
(index, id, name) goes out as soon as its name is complete and its arguments follow piece by piece, exactly the
text of the arguments value: never the closing brace of the call object around it, nor the closing tag.

A call that begins exactly like one already made in this reply (or earlier in the turn, with its result in the
conversation) is held back until it differs; one that turns out to be an exact repeat (same name, same
arguments), or is cut off while still the beginning of one, is dropped and ends the reply (``repeated``), since
a small model that repeats a call would otherwise repeat it until max_tokens, or in every turn of a tool loop.
Any other call cut off by the end of the reply (max_tokens) is left as what was generated: its deltas went out
already, and ``finish`` sends the rest.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ember.bus.messages import ToolCallDelta

# How a JSON code block opens: calls without tags may come in one (under auto; tool_format's grammar).
FENCE = "```json\n"

if TYPE_CHECKING:
    from ember.runtimes.text.tool_format import ToolFormat


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedCall:
    """A complete call as the model wrote it; ``ok`` is False when it is not a JSON call (only without grammar)."""

    name: str
    # The arguments value's JSON text, as the model wrote it.
    arguments: str
    ok: bool


class _CallScanner:
    """Follows one call object (``{"name": ..., <arguments_key>: ...}``) as its text arrives.

    It tracks only what it needs: string and escape state, nesting depth, and the key and value span of the
    object's current member. It gets ``stuck`` at text that cannot continue a JSON object (possible only without
    grammar); the caller then ends the call at its closing tag.
    """

    def __init__(self, arguments_key: str) -> None:
        self.arguments_key = arguments_key
        self.body = ""
        self.name: str | None = None
        self.closed = False
        self.stuck = False
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._expect_key = True
        self._key: str | None = None
        self._key_start = -1
        self._value_start = -1
        self._args_start = -1
        self._args_end = -1

    def feed(self, text: str) -> str:
        """Scan ``text``; what follows the end of the object (or the point where it got stuck) is returned."""
        start = len(self.body)
        self.body += text
        for i in range(start, len(self.body)):
            self._step(i, self.body[i])
            if self.closed or self.stuck:
                rest = self.body[i + 1 :] if self.closed else self.body[i:]
                self.body = self.body[: i + 1] if self.closed else self.body[:i]
                return rest
        return ""

    def arguments(self) -> str:
        """The arguments value's text so far; trailing whitespace outside it is left out until it is followed."""
        if self._args_start < 0:
            return ""
        if self._args_end >= 0:
            return self.body[self._args_start : self._args_end]
        text = self.body[self._args_start :]
        return text.rstrip() if self._depth <= 1 and not self._in_string else text

    def parses(self) -> bool:
        """Whether the closed object is a call: JSON with a string name and the arguments key."""
        try:
            obj = json.loads(self.body)
        except ValueError:
            return False
        return isinstance(obj, dict) and isinstance(obj.get("name"), str) and self.arguments_key in obj

    def _step(self, i: int, ch: str) -> None:
        if self._in_string:
            if self._escape:
                self._escape = False
            elif ch == "\\":
                self._escape = True
            elif ch == '"':
                self._in_string = False
                self._string_closed(i)
            return
        if ch.isspace():
            return
        if self._depth == 0:
            if ch == "{":
                self._depth = 1
            else:
                self.stuck = True
            return
        if ch == "<":  # markup (a closing tag) inside an unfinished object
            self.stuck = True
            return
        if self._depth == 1 and not self._expect_key and self._value_start < 0:
            self._value_start = i
            if self._key == self.arguments_key and self._args_start < 0:
                self._args_start = i
        if ch == '"':
            self._in_string = True
            if self._depth == 1 and self._expect_key:
                self._key_start = i
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]":
            self._depth -= 1
            if self._depth == 0:
                self._member_ended(i)
                self.closed = True
        elif self._depth == 1 and ch == ":":
            self._expect_key, self._value_start = False, -1
        elif self._depth == 1 and ch == ",":
            self._member_ended(i)
            self._expect_key, self._key = True, None

    def _string_closed(self, i: int) -> None:
        if self._depth != 1:
            return
        if self._expect_key:
            self._key = _loads_str(self.body[self._key_start : i + 1])
        elif self._key == "name" and self.name is None:
            self.name = _loads_str(self.body[self._value_start : i + 1])

    def _member_ended(self, i: int) -> None:
        if self._key == self.arguments_key and self._args_start >= 0 and self._args_end < 0:
            self._args_end = self._args_start + len(self.body[self._args_start : i].rstrip())


def _loads_str(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


# text: before any call; prose: a reply of text only (bare-JSON formats); call: inside one; after: a call's JSON
# has closed, its closing tag is next; between: after a call, before the next; done: nothing more matters.
# How calls without tags begin, bare or in a JSON code block: a call's name comes first (call_schema orders it so).
_BARE_STARTS = ('{"name"', FENCE + '{"name"')
_State = Literal["text", "prose", "call", "after", "between", "done"]


@dataclass
class ToolCallParser:
    """Splits a reply into text for the client and tool-call deltas, as it streams (see the module docstring)."""

    fmt: ToolFormat
    # The complete calls so far, in order.
    calls: list[ParsedCall] = field(default_factory=list)
    # Calls of this turn whose results the conversation holds already (tool_format.answered_calls): repeating
    # one is dropped like a repeat within the reply.
    answered: list[ParsedCall] = field(default_factory=list)
    # The model began an exact repeat of one of ``calls`` or ``answered``: it was dropped, and the reply is over.
    repeated: bool = False
    _buf: str = ""
    _state: _State = "text"
    # Nothing of the reply has been read yet; its calls are bare JSON objects, without tags.
    _at_start: bool = True
    _bare: bool = False
    _scanner: _CallScanner | None = None
    # The current call: its first delta sent, how much of its arguments sent, and its id.
    _announced: bool = False
    _sent: int = 0
    _id: str = ""
    # Leading whitespace, held back: a reply that is only calls has no content.
    _pending: str = ""
    _emitted: bool = False

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """(text for the client, tool-call deltas) for the next piece of the reply."""
        self._buf += text
        return self._drain(final=False)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """What is left at the end of the reply; a call cut off there is sent as far as it got."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> tuple[str, list[ToolCallDelta]]:
        text: list[str] = []
        deltas: list[ToolCallDelta] = []
        while self._buf or (final and self._state == "call"):
            before = (self._state, self._buf)
            if self._state == "text":
                text.append(self._in_text(final))
            elif self._state == "prose":
                text.append(self._buf)
                self._buf = ""
            elif self._state == "call":
                deltas += self._in_call(final)
            elif self._state == "after" and self._bare:
                self._next_bare()
            elif self._state == "after":
                self._skip_to(self.fmt.close, "between", final)
            elif self._state == "between":
                self._skip_to(self.fmt.open, "call", final)
            else:
                self._buf = ""
            if (self._state, self._buf) == before:
                break  # waiting for more text
        return self._text("".join(text), final), deltas

    def _in_text(self, final: bool) -> str:
        """Text before the first call is content (the grammar allows no text around calls). A reply that starts
        with a JSON call is calls without tags: the format's own (llama3), or a tagged format's under auto."""
        if not self.fmt.open:
            stripped = self._buf.lstrip()
            if not stripped and not final:
                return ""
            if stripped.startswith("{"):
                self._bare = True
                self._start_call()
                return ""
            self._state = "prose"  # a bare-JSON format's text reply never holds a call
            return ""
        if self._at_start:
            if any(start.startswith(self._buf) for start in _BARE_STARTS) and not final:
                return ""  # too little to tell yet
            self._at_start = False
            if self._buf.startswith(_BARE_STARTS):
                self._bare = True
                self._buf = self._buf.removeprefix(FENCE)
                self._start_call()
                return ""
        start = self._buf.find(self.fmt.open)
        if start >= 0:
            out, self._buf = self._buf[:start], self._buf[start + len(self.fmt.open) :]
            self._start_call()
            return out
        keep = 0 if final else _partial_suffix(self._buf, self.fmt.open)
        out, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
        return out

    def _next_bare(self) -> None:
        """After a call without tags: the next one starts at its "{" (the grammar puts a newline between)."""
        stripped = self._buf.lstrip()
        if stripped.startswith("{"):
            self._buf = stripped
            self._start_call()
        else:
            self._buf = ""
            if stripped:
                self._state = "done"

    def _skip_to(self, tag: str, state: _State, final: bool) -> None:
        """Drop text up to and including ``tag`` (markup between calls), then go to ``state``."""
        at = self._buf.find(tag)
        if at >= 0:
            self._buf = self._buf[at + len(tag) :]
            if state == "call":
                self._start_call()
            else:
                self._state = state
            return
        keep = 0 if final else _partial_suffix(self._buf, tag)
        self._buf = self._buf[len(self._buf) - keep :]

    def _start_call(self) -> None:
        self._state = "call"
        self._scanner = _CallScanner(self.fmt.arguments_key)
        self._announced, self._sent, self._id = False, 0, new_call_id()

    def _in_call(self, final: bool) -> list[ToolCallDelta]:
        scanner = self._scanner
        assert scanner is not None  # set with the "call" state
        if not scanner.stuck:
            self._buf = scanner.feed(self._buf)
        if scanner.closed:
            self._state = "after"
            return self._close_call(scanner, scanner.parses())
        if scanner.stuck:
            # Not JSON (only without grammar): the call ends at its closing tag, or at the end of the reply.
            at = self._buf.find(self.fmt.close) if self.fmt.close else -1
            if at >= 0:
                raw = scanner.body + self._buf[:at]
                self._buf, self._state = self._buf[at + len(self.fmt.close) :], "between"
                return self._close_call(scanner, False, raw)
            if final:
                self._buf = ""
                return self._cut(scanner)
            return []
        if final:
            return self._cut(scanner)
        return self._stream(scanner, held=self._may_repeat(scanner))

    def _close_call(self, scanner: _CallScanner, ok: bool, raw: str | None = None) -> list[ToolCallDelta]:
        name, arguments = scanner.name, scanner.arguments()
        if not ok and name is None:
            name, arguments = "", (scanner.body if raw is None else raw).strip()  # sent whole: the gateway refuses it
        if any(c.name == name and c.arguments == arguments for c in self._made()) and not self._announced:
            self.repeated, self._state, self._buf = True, "done", ""
            return []
        deltas = self._stream(scanner, held=False, name=name, arguments=arguments)
        self.calls.append(ParsedCall(name or "", arguments, ok))
        return deltas

    def _cut(self, scanner: _CallScanner) -> list[ToolCallDelta]:
        """The reply ended inside this call: what there is of it, once its name is known; but a call that was
        still the beginning of one already made is a repeat, dropped like a whole one."""
        self._state = "done"
        if self._may_repeat(scanner):
            self.repeated = True
            return []
        return self._stream(scanner, held=False) if scanner.name is not None else []

    def _may_repeat(self, scanner: _CallScanner) -> bool:
        """Whether the call so far is the beginning of one already made (its deltas are then held back)."""
        if self._announced:
            return False
        args = scanner.arguments()
        return any(c.name == scanner.name and c.arguments.startswith(args) for c in self._made())

    def _made(self) -> list[ParsedCall]:
        return [*self.answered, *self.calls]

    def _stream(
        self, scanner: _CallScanner, *, held: bool, name: str | None = None, arguments: str | None = None
    ) -> list[ToolCallDelta]:
        """The deltas of this call not sent yet (none while its name is unknown or it is held back)."""
        name = scanner.name if name is None else name
        if name is None or held:
            return []
        index = len(self.calls)
        deltas = []
        if not self._announced:
            self._announced = True
            deltas.append(ToolCallDelta(index=index, id=self._id, name=name, arguments=""))
        arguments = scanner.arguments() if arguments is None else arguments
        if len(arguments) > self._sent:
            deltas.append(ToolCallDelta(index=index, arguments=arguments[self._sent :]))
            self._sent = len(arguments)
        return deltas

    def _text(self, text: str, final: bool) -> str:
        """Leading whitespace is held back until text follows it (or the reply ends without calls)."""
        if self._emitted:
            return text
        self._pending += text
        if self._pending.strip() or (final and not self.calls and not self._announced):
            self._emitted = True
            text, self._pending = self._pending, ""
            return text
        return ""


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that could be the start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
