"""The native SSE parser through its Python binding (the rules themselves are tested in Rust)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway._native import SseEvent, SseParser
from tollway.errors import SseError, TollwayError

STREAM = (
    b"\xef\xbb\xbf: comment\r\n"
    b'event: delta\r\nid: 1\r\ndata: {"a": "h\xc3\xa9llo \xf0\x9f\x98\x80"}\r\n\r\n'
    b"data: line one\rdata: line two\r\r"
    b"retry: 250\ndata: [DONE]\n\n"
)


def feed_in_pieces(data: bytes, cuts: list[int]) -> list[SseEvent]:
    parser = SseParser()
    events: list[SseEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        events.extend(parser.feed(data[start:cut]))
        start = cut
    return events


def test_parses_every_field() -> None:
    parser = SseParser()
    events = parser.feed(STREAM)
    assert events == [
        SseEvent('{"a": "h\u00e9llo \U0001f600"}', event="delta", id="1"),
        SseEvent("line one\nline two"),
        SseEvent("[DONE]", retry=250),
    ]
    assert events[0].event == "delta" and events[0].id == "1" and events[1].event is None
    assert parser.last_event_id == "1"
    assert parser.retry == 250
    assert parser.finish() == 0


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=10))
def test_split_anywhere_gives_the_same_events(cuts: list[int]) -> None:
    assert feed_in_pieces(STREAM, cuts) == SseParser().feed(STREAM)


def test_crlf_and_utf8_split_across_chunks() -> None:
    data = "data: caf\u00e9\r\n\r\n".encode()
    split_in_char = data.index(b"\xa9")
    split_in_crlf = data.index(b"\n")
    assert feed_in_pieces(data, [split_in_char, split_in_crlf]) == [SseEvent("caf\u00e9")]


def test_bom_split_across_chunks() -> None:
    parser = SseParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: x\n\n") == [SseEvent("x")]


def test_overlong_line_raises_tollway_error() -> None:
    parser = SseParser(max_line_bytes=16)
    parser.feed(b"data: 0123456789")
    with pytest.raises(SseError, match="limit of 16 bytes") as info:
        parser.feed(b"abcdef\n")
    assert isinstance(info.value, TollwayError) and isinstance(info.value, ValueError)


def test_finish_reports_a_cut_off_event() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\n\ndata: b") == [SseEvent("a")]
    assert parser.finish() == len(b"data: b")


def test_to_bytes_round_trips() -> None:
    events = SseParser().feed(STREAM)
    wire = b"".join(e.to_bytes() for e in events)
    assert wire.endswith(b"data: [DONE]\n\n")
    assert SseParser().feed(wire) == events
    assert SseEvent("a\nb", event="x").to_bytes() == b"event: x\ndata: a\ndata: b\n\n"


def test_large_chunk_releases_the_gil_and_still_parses() -> None:
    one = b'data: {"choices":[{"delta":{"content":"hello"}}]}\n\n'
    big = one * 4000  # well over the 64 KiB threshold
    events = SseParser().feed(big)
    assert len(events) == 4000 and events[-1].data == '{"choices":[{"delta":{"content":"hello"}}]}'


def test_repr() -> None:
    assert repr(SseEvent("x", id="7")) == "SseEvent(data='x', event=None, id='7', retry=None)"
