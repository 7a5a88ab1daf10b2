"""The native AWS event-stream decoder through its Python binding, against the Python encoder
the mock Bedrock server uses (`tollway.testing.eventstream`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollway._native import EventStreamDecoder
from tollway.errors import EventStreamError, TollwayError
from tollway.testing.eventstream import HeaderValue, Typed, encode_message, event_message

UUID = bytes(range(16))


def test_every_header_type_reaches_python() -> None:
    headers: dict[str, HeaderValue] = {
        ":event-type": "contentBlockDelta",
        "yes": True,
        "no": False,
        "byte": Typed("byte", -5),
        "short": Typed("short", 1234),
        "int": 70_000,
        "long": 2**40,
        "raw": b"\x00\xff",
        "when": Typed("timestamp", 1_700_000_000_000),
        "id": Typed("uuid", UUID),
    }
    (message,) = EventStreamDecoder().feed(encode_message(headers, b'{"x": 1}'))
    assert message.headers == {
        ":event-type": "contentBlockDelta",
        "yes": True,
        "no": False,
        "byte": -5,
        "short": 1234,
        "int": 70_000,
        "long": 2**40,
        "raw": b"\x00\xff",
        "when": 1_700_000_000_000,
        "id": UUID,
    }
    assert message.payload == b'{"x": 1}'
    assert message.header("yes") is True and message.header("absent") is None
    assert "contentBlockDelta" in repr(message)


def test_published_example() -> None:
    # The AWS event-stream documentation's example: `{"foo": "bar"}` with a content-type header.
    example = (
        bytes([0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12])
        + b"content-type"
        + bytes([7, 0, 16])
        + b'application/json{"foo": "bar"}'
        + bytes([111, 162, 191, 59])
    )
    assert encode_message({"content-type": "application/json"}, b'{"foo": "bar"}') == example
    (message,) = EventStreamDecoder().feed(example)
    assert message.headers == {"content-type": "application/json"} and message.payload == b'{"foo": "bar"}'


@given(
    st.lists(st.tuples(st.text(max_size=30), st.binary(max_size=300)), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_split_anywhere_decodes_the_same(messages: list[tuple[str, bytes]], cuts: list[int]) -> None:
    stream = b"".join(
        encode_message({":event-type": name, "n": i}, payload) for i, (name, payload) in enumerate(messages)
    )
    decoder = EventStreamDecoder()
    got = []
    points = [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]
    start = 0
    for point in points:
        got += decoder.feed(stream[start:point])
        start = point
    assert [(m.headers[":event-type"], m.payload) for m in got] == messages
    assert [m.headers["n"] for m in got] == list(range(len(messages)))
    assert decoder.buffered == 0


def test_a_large_chunk_is_decoded_with_the_gil_released() -> None:
    payload = b"x" * 200_000
    stream = event_message("contentBlockDelta", {"delta": {"text": "a"}}) + encode_message({}, payload)
    first, second = EventStreamDecoder().feed(stream)
    assert first.headers[":message-type"] == "event" and second.payload == payload


def test_an_unfinished_message_is_buffered() -> None:
    frame = event_message("messageStop", {"stopReason": "end_turn"})
    decoder = EventStreamDecoder()
    assert decoder.feed(frame[:-3]) == [] and decoder.buffered == len(frame) - 3
    assert len(decoder.feed(frame[-3:])) == 1 and decoder.buffered == 0


def test_corruption_raises_event_stream_error() -> None:
    frame = bytearray(event_message("contentBlockDelta", {"delta": {"text": "hello"}}))
    frame[-6] ^= 0x01
    with pytest.raises(EventStreamError, match="message CRC mismatch") as info:
        EventStreamDecoder().feed(bytes(frame))
    assert isinstance(info.value, TollwayError) and isinstance(info.value, ValueError)


def test_message_size_cap() -> None:
    with pytest.raises(EventStreamError, match="limit of 1024"):
        EventStreamDecoder(max_message_bytes=1024).feed(encode_message({}, b"y" * 2000)[:12])
