"""The native SSE parser through its Python binding (every rule is also tested in Rust)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway._native import OpenAIChatStream, SseEvent, SseParser
from tollway.errors import SseError, StreamFormatError, TollwayError

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


_text = st.text(st.sampled_from('ab :{}"é世😀\ufeff'), max_size=8)
_line = st.one_of(
    _text.map(lambda t: f"data: {t}"),
    _text.map(lambda t: f"data:{t}"),
    _text.map(lambda t: f"event: {t}"),
    _text.map(lambda t: f"id: {t}"),
    st.integers(0, 10**6).map(lambda n: f"retry: {n}"),
    _text.map(lambda t: f": {t}"),
    st.just(""),
    st.just(""),
)
_streams = st.builds(
    lambda bom, lines: (b"\xef\xbb\xbf" if bom else b"") + b"".join(line.encode() + end for line, end in lines),
    st.booleans(),
    st.lists(st.tuples(_line, st.sampled_from([b"\n", b"\r", b"\r\n"])), max_size=30),
)


def test_parses_every_field() -> None:
    parser = SseParser()
    events = parser.feed(STREAM)
    assert events == [
        SseEvent('{"a": "h\u00e9llo \U0001f600"}', event="delta", id="1"),
        SseEvent("line one\nline two", id="1"),
        SseEvent("[DONE]", id="1", retry=250),
    ]
    first = events[0]
    assert (first.event, first.id, first.retry, events[1].event) == ("delta", "1", None, None)
    assert parser.last_event_id == "1"
    assert parser.retry == 250


@given(_streams, st.data())
def test_split_anywhere_gives_the_same_events(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    assert feed_in_pieces(stream, cuts) == SseParser().feed(stream)


def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [SseEvent("a\nb")]
    assert parser.feed(b"\ndata: c\n\n") == [SseEvent("c")]


def test_utf8_split_inside_a_multibyte_character() -> None:
    data = "data: caf\u00e9 \U0001f600\n\n".encode()
    for cut in range(len(data)):
        assert feed_in_pieces(data, [cut]) == [SseEvent("caf\u00e9 \U0001f600")], cut


def test_bom_is_skipped_once_even_when_split() -> None:
    parser = SseParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: x\n\n\xef\xbb\xbfdata: y\n\n") == [SseEvent("x")]


def test_overlong_line_raises_sse_error() -> None:
    parser = SseParser(max_line_bytes=16)
    parser.feed(b"data: 0123456789")
    with pytest.raises(SseError, match="limit of 16 bytes") as info:
        parser.feed(b"abcdef")  # raised as the bytes arrive, before the line ends
    assert isinstance(info.value, TollwayError)
    assert isinstance(info.value, ValueError)


def test_finish_discards_an_unfinished_event_and_keeps_the_last_event_id() -> None:
    parser = SseParser()
    assert parser.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n") == [SseEvent("a", id="1")]
    assert parser.finish() == []
    assert parser.last_event_id == "1"
    assert parser.feed(b"data: c\n\n") == [SseEvent("c")]


def test_to_bytes_round_trips() -> None:
    events = SseParser().feed(STREAM)
    wire = b"".join(e.to_bytes() for e in events)
    assert all(e.to_bytes().endswith(b"\n\n") for e in events)
    assert SseParser().feed(wire) == events
    assert SseEvent("a\nb", event="x", id="7", retry=5).to_bytes() == b"event: x\nid: 7\nretry: 5\ndata: a\ndata: b\n\n"


@given(_streams)
def test_parsed_events_survive_forwarding(stream: bytes) -> None:
    events = SseParser().feed(stream)
    cleared = any(a.id is not None and b.id is None for a, b in itertools.pairwise(events))
    if not cleared:  # an id cleared by the server is not expressible per event (see to_bytes)
        assert SseParser().feed(b"".join(e.to_bytes() for e in events)) == events


@pytest.mark.parametrize(
    ("event", "id", "field"), [("a\nretry: 1", None, "event"), (None, "1\r", "id"), (None, "1\0", "id")]
)
def test_event_fields_that_would_break_framing_are_rejected(event: str | None, id: str | None, field: str) -> None:
    with pytest.raises(SseError, match=f"`{field}`"):
        SseEvent("x", event=event, id=id)


def test_large_chunk_parses_with_the_gil_released() -> None:
    one = b'data: {"choices":[{"delta":{"content":"hello"}}]}\n\n'
    events = SseParser().feed(one * 4000)  # well over the 64 KiB threshold
    assert len(events) == 4000
    assert events[-1].data == '{"choices":[{"delta":{"content":"hello"}}]}'


def test_events_are_values() -> None:
    event = SseEvent("x", id="7")
    assert repr(event) == "SseEvent(data='x', event=None, id='7', retry=None)"
    assert event == SseEvent("x", id="7") and event != SseEvent("x") and event != "x"
    assert len({event, SseEvent("x", id="7")}) == 1
    with pytest.raises(AttributeError):
        event.data = "y"  # type: ignore[misc]


# -- OpenAIChatStream: the relay of a streamed chat response -----------------------------------


def _chunk(content: str) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], "usage": None}
    return b"data: " + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


USAGE_CHUNK = b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n'


def test_chat_stream_relays_and_strips_injected_usage() -> None:
    stream = OpenAIChatStream(strip_usage=True)
    data = _chunk("Hel") + _chunk("lo ✓") + USAGE_CHUNK + b"data: [DONE]\n\n"
    # Split inside a multi-byte character and inside the usage chunk.
    cut = data.index("✓".encode()) + 1
    out = stream.feed(data[:cut]) + stream.feed(data[cut : cut + 40]) + stream.feed(data[cut + 40 :])
    assert b"usage" not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in out.split(b"\n\n")[:2]] == [
        "Hel",
        "lo ✓",
    ]
    assert stream.done and stream.events == 4
    assert json.loads(stream.usage_json or "") == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert stream.take_output_text() == "Hello ✓"
    assert stream.take_output_text() == ""


def test_chat_stream_keeps_usage_when_the_client_asked() -> None:
    stream = OpenAIChatStream(strip_usage=False)
    data = _chunk("x") + USAGE_CHUNK
    assert stream.feed(data) == data
    assert not stream.done


def test_chat_stream_errors_are_tollway_errors() -> None:
    stream = OpenAIChatStream(strip_usage=True)
    with pytest.raises(StreamFormatError, match="not JSON"):
        stream.feed(b'data: {"usage":{"prompt_tokens": nope}\n\n')
    with pytest.raises(StreamFormatError):
        stream.feed(b"data: [DONE]\n\n")  # sticky
    small = OpenAIChatStream(strip_usage=False, max_line_bytes=16)
    with pytest.raises(SseError, match="longer than the limit"):
        small.feed(b"data: " + b"x" * 64)
