"""The SSE parser on its own: framing cases, fed whole and split at every byte."""

from __future__ import annotations

import pytest

from ember._streaming import ServerSentEvent, SSEDecoder, iter_events


def parse(raw: bytes) -> list[ServerSentEvent]:
    return list(iter_events([raw]))


def parse_split_everywhere(raw: bytes) -> list[list[ServerSentEvent]]:
    """``raw`` parsed once per way of cutting it in two, and once fed a byte at a time."""
    results = [list(iter_events([raw[:i], raw[i:]])) for i in range(len(raw) + 1)]
    results.append(list(iter_events([raw[i : i + 1] for i in range(len(raw))])))
    return results


CASES = [
    pytest.param(b"data: hello\n\n", [ServerSentEvent("hello")], id="one-event"),
    pytest.param(b"data: a\n\ndata: b\n\n", [ServerSentEvent("a"), ServerSentEvent("b")], id="two-events"),
    pytest.param(b"data: line 1\ndata: line 2\n\n", [ServerSentEvent("line 1\nline 2")], id="multi-line-data"),
    pytest.param(b"data: a\r\n\r\ndata: b\r\n\r\n", [ServerSentEvent("a"), ServerSentEvent("b")], id="crlf"),
    pytest.param(b"data: a\r\rdata: b\r\r", [ServerSentEvent("a"), ServerSentEvent("b")], id="lone-cr"),
    pytest.param(b"data: a\r\n\ndata: b\n\r\n", [ServerSentEvent("a"), ServerSentEvent("b")], id="mixed-line-ends"),
    pytest.param(b": keep-alive\n\n: another\ndata: x\n\n", [ServerSentEvent("x")], id="comments"),
    pytest.param(b"data:no-space\n\n", [ServerSentEvent("no-space")], id="no-space-after-colon"),
    pytest.param(b"data:  two spaces\n\n", [ServerSentEvent(" two spaces")], id="only-one-space-dropped"),
    pytest.param(b"data\n\n", [ServerSentEvent("")], id="field-without-colon"),
    pytest.param(b"data: a: b\n\n", [ServerSentEvent("a: b")], id="colon-in-value"),
    pytest.param(b"event: error\ndata: {}\n\n", [ServerSentEvent("{}", event="error")], id="named-event"),
    pytest.param(b"event: ping\n\ndata: x\n\n", [ServerSentEvent("x")], id="event-without-data-is-dropped"),
    pytest.param(
        b"id: 1\ndata: a\n\ndata: b\n\n", [ServerSentEvent("a", id="1"), ServerSentEvent("b", id="1")], id="id-persists"
    ),
    pytest.param(b"retry: 250\ndata: a\n\n", [ServerSentEvent("a", retry=250)], id="retry"),
    pytest.param(b"retry: soon\ndata: a\n\n", [ServerSentEvent("a")], id="bad-retry-ignored"),
    pytest.param(b"foo: bar\ndata: a\n\n", [ServerSentEvent("a")], id="unknown-field-ignored"),
    pytest.param(b"data: last", [ServerSentEvent("last")], id="final-event-without-line-end"),
    pytest.param(b"data: last\n", [ServerSentEvent("last")], id="final-event-without-blank-line"),
    pytest.param(b"data: last\r", [ServerSentEvent("last")], id="final-event-ending-in-cr"),
    pytest.param(b"\xef\xbb\xbfdata: bom\n\n", [ServerSentEvent("bom")], id="leading-bom"),
    pytest.param("data: héllo ✓\n\n".encode(), [ServerSentEvent("héllo ✓")], id="utf-8"),
    pytest.param(b"", [], id="empty"),
    pytest.param(b"\n\n\n", [], id="only-blank-lines"),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_framing(raw: bytes, expected: list[ServerSentEvent]) -> None:
    assert parse(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_framing_is_independent_of_chunk_boundaries(raw: bytes, expected: list[ServerSentEvent]) -> None:
    for events in parse_split_everywhere(raw):
        assert events == expected


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # The LF completes the CRLF; only the second line end (a blank line) dispatches.
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [ServerSentEvent("a")]
    assert decoder.end() == []


def test_events_come_out_as_soon_as_they_are_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [ServerSentEvent("a")]
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ServerSentEvent("b")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse(b"data: \xff\n\n") == [ServerSentEvent("\ufffd")]


def test_long_line_in_many_chunks() -> None:
    payload = b"x" * 100_000
    chunks = [b"data: "] + [payload[i : i + 1000] for i in range(0, len(payload), 1000)] + [b"\n\n"]
    assert list(iter_events(chunks)) == [ServerSentEvent(payload.decode())]


def test_json() -> None:
    assert ServerSentEvent('{"a": [1, 2]}').json() == {"a": [1, 2]}
