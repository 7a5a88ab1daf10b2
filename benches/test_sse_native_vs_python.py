"""Native SSE parsing against a straightforward pure-Python parser with the same rules (CR, LF
and CRLF line ends, a CRLF split across chunks, BOM, `data`/`event`/`id`/`retry`, comments), on
OpenAI chat streams fed in 1 KiB chunks as the gateway sees them. Run with `make bench`; the
ratio of the means is the figure to read. The issue's target is 20x on a 36-event stream.

Two comparisons:
- `sse-openai-*`: parsing into one event object per event (`SseParser.feed`), the general API.
  Building a Python object per event bounds the native side here.
- `relay-openai-*`: what the gateway does with a streamed chat response, per network chunk:
  parse the events, capture the usage, remove what the gateway's own `include_usage` added,
  and produce the bytes to forward. Natively that is `OpenAIChatStream.feed`, one call and one
  `bytes` per chunk; in Python it is the same parser plus the same per-event rules.
"""

from __future__ import annotations

import orjson
import pytest

from tollway._native import OpenAIChatStream, SseParser

EVENT = (
    'data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    '"choices":[{{"index":0,"delta":{{"content":"hello {i} "}},"finish_reason":null}}]}}\n\n'
)


def stream(events: int) -> list[bytes]:
    data = "".join(EVENT.format(i=i) for i in range(events - 1)).encode() + b"data: [DONE]\n\n"
    return [data[i : i + 1024] for i in range(0, len(data), 1024)]


class PyEvent:
    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, event: str | None, data: str, id: str | None, retry: int | None) -> None:
        self.event, self.data, self.id, self.retry = event, data, id, retry


class PythonSseParser:
    def __init__(self) -> None:
        self.buf = b""
        self.after_cr = False
        self.started = False
        self.data: list[str] = []
        self.event: str | None = None
        self.last_id: str | None = None
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[PyEvent]:
        if not self.started:
            chunk, self.buf = self.buf + chunk, b""
            if len(chunk) < 3 and b"\xef\xbb\xbf".startswith(chunk):
                self.buf = chunk
                return []
            chunk = chunk.removeprefix(b"\xef\xbb\xbf")
            self.started = True
        if self.after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self.after_cr = False
        buf, out, start = self.buf + chunk, [], 0
        n = len(buf)
        while True:
            lf, cr = buf.find(b"\n", start), buf.find(b"\r", start)
            if lf < 0 and cr < 0:
                break
            end = lf if cr < 0 or 0 <= lf < cr else cr
            line = buf[start:end]
            if buf[end] == 13:
                if end + 1 < n:
                    start = end + 2 if buf[end + 1] == 10 else end + 1
                else:
                    self.after_cr, start = True, n
            else:
                start = end + 1
            self._line(line, out)
        self.buf = buf[start:]
        return out

    def _line(self, raw: bytes, out: list[PyEvent]) -> None:
        if not raw:
            if self.data:
                out.append(PyEvent(self.event, "\n".join(self.data), self.last_id, self.retry))
            self.data, self.event = [], None
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self.data.append(value)
        elif field == "event":
            self.event = value or None
        elif field == "id":
            if "\0" not in value:
                self.last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)


STREAMS = {36: stream(36), 500: stream(500)}


def parse_native(events: int) -> int:
    parser = SseParser()
    return sum(len(parser.feed(chunk)) for chunk in STREAMS[events])


def parse_python(events: int) -> int:
    parser = PythonSseParser()
    return sum(len(parser.feed(chunk)) for chunk in STREAMS[events])


@pytest.mark.parametrize("events", [36, 500])
def test_both_parse_the_same_stream(events: int) -> None:
    assert parse_native(events) == parse_python(events) == events
    whole = b"".join(STREAMS[events])
    native = [(e.event, e.data, e.id, e.retry) for e in SseParser().feed(whole)]
    python = [(e.event, e.data, e.id, e.retry) for e in PythonSseParser().feed(whole)]
    assert native == python


@pytest.mark.benchmark(group="sse-openai-36-events")
def test_native_36(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(parse_native, 36) == 36


@pytest.mark.benchmark(group="sse-openai-36-events")
def test_python_36(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(parse_python, 36) == 36


@pytest.mark.benchmark(group="sse-openai-500-events")
def test_native_500(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(parse_native, 500) == 500


@pytest.mark.benchmark(group="sse-openai-500-events")
def test_python_500(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(parse_python, 500) == 500


# -- relaying a streamed chat response, as the gateway does ------------------------------------

RELAY_EVENT = (
    'data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    '"choices":[{{"index":0,"delta":{{"content":"hello {i} "}},"finish_reason":null}}],"usage":null}}\n\n'
)
RELAY_USAGE = (
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    '"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}\n\n'
)


def relay_stream(events: int) -> list[bytes]:
    body = "".join(RELAY_EVENT.format(i=i) for i in range(events - 2)) + RELAY_USAGE + "data: [DONE]\n\n"
    data = body.encode()
    return [data[i : i + 1024] for i in range(0, len(data), 1024)]


RELAY_STREAMS = {36: relay_stream(36), 500: relay_stream(500)}
USAGE_NULL = ',"usage":null'


def relay_native(events: int) -> tuple[bytes, str | None, bool]:
    stream = OpenAIChatStream(strip_usage=True)
    out = [stream.feed(chunk) for chunk in RELAY_STREAMS[events]]
    return b"".join(out), stream.usage_json, stream.done


def relay_python(events: int) -> tuple[bytes, str | None, bool]:
    """The same rules in Python (what `providers/openai.py` did per event before the kernel)."""
    parser = PythonSseParser()
    usage, done, sent = None, False, []
    for chunk in RELAY_STREAMS[events]:
        out: list[bytes] = []
        for event in parser.feed(chunk):
            data = event.data
            if data == "[DONE]":
                done = True
            elif '"usage":{' in data:
                parsed = orjson.loads(data)
                usage = orjson.dumps(parsed["usage"]).decode()
                if not parsed.get("choices"):
                    continue
            elif USAGE_NULL in data:
                data = data.replace(USAGE_NULL, "")
            out.append(b"data: " + data.encode() + b"\n\n")
        sent.append(b"".join(out))
    return b"".join(sent), usage, done


@pytest.mark.parametrize("events", [36, 500])
def test_both_relay_the_same_stream(events: int) -> None:
    native, python = relay_native(events), relay_python(events)
    assert native[0] == python[0]
    assert b"usage" not in native[0] and native[0].endswith(b"data: [DONE]\n\n")
    assert native[1] is not None and orjson.loads(native[1]) == orjson.loads(python[1] or "null")
    assert native[2] and python[2]


@pytest.mark.benchmark(group="relay-openai-36-events")
def test_native_relay_36(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(relay_native, 36)[2]


@pytest.mark.benchmark(group="relay-openai-36-events")
def test_python_relay_36(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(relay_python, 36)[2]


@pytest.mark.benchmark(group="relay-openai-500-events")
def test_native_relay_500(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(relay_native, 500)[2]


@pytest.mark.benchmark(group="relay-openai-500-events")
def test_python_relay_500(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(relay_python, 500)[2]
