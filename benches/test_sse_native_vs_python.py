"""Native SSE parsing against a straightforward pure-Python parser, on an OpenAI chat stream
fed in 1 KiB chunks, as the gateway sees it. Run with `make bench` (or
`.venv/bin/python -m pytest benches/test_sse_native_vs_python.py --benchmark-only`); the ratio of
the two means is the figure to read, not the absolute times."""

from __future__ import annotations

import re

import pytest

from tollway._native import SseParser

EVENT = (
    'data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini",'
    '"choices":[{{"index":0,"delta":{{"content":"hello {i} "}},"finish_reason":null}}]}}\n\n'
)
STREAM = "".join(EVENT.format(i=i) for i in range(500)).encode() + b"data: [DONE]\n\n"
CHUNKS = [STREAM[i : i + 1024] for i in range(0, len(STREAM), 1024)]
_LINE_END = re.compile(rb"\r\n|\r|\n")


class PythonSseParser:
    """The same semantics for the common fields (no BOM or split-CRLF care): a fair baseline."""

    def __init__(self) -> None:
        self.buf = b""
        self.data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self.buf += chunk
        lines = _LINE_END.split(self.buf)
        self.buf = lines.pop()
        events = []
        for raw in lines:
            if not raw:
                if self.data:
                    events.append("\n".join(self.data))
                    self.data = []
                continue
            line = raw.decode("utf-8", "replace")
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                self.data.append(value)
        return events


def parse_native() -> int:
    parser = SseParser()
    return sum(len(parser.feed(chunk)) for chunk in CHUNKS)


def parse_python() -> int:
    parser = PythonSseParser()
    return sum(len(parser.feed(chunk)) for chunk in CHUNKS)


def test_both_parse_the_same_stream() -> None:
    assert parse_native() == parse_python() == 501


@pytest.mark.benchmark(group="sse-openai-500-events")
def test_native(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(parse_native) == 501


@pytest.mark.benchmark(group="sse-openai-500-events")
def test_python(benchmark) -> None:  # type: ignore[no-untyped-def]
    assert benchmark(parse_python) == 501
