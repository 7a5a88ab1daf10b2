"""A fault-injecting mock upstream speaking five providers' wire formats, for tests and demos.

Run it with `python -m tollway.testing.mock_providers --port 9100`. One server answers:

- OpenAI: `POST /v1/chat/completions`; auth `Authorization: Bearer <key>`.
- Anthropic: `POST /v1/messages`; auth `x-api-key`, and `anthropic-version` is required.
- Gemini: `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`;
  auth `x-goog-api-key` (or `?key=`).
- Bedrock: `POST /model/{modelId}/converse` and `/model/{modelId}/converse-stream`; SigV4,
  verified (see below).
- Azure: `POST /openai/deployments/{deployment}/chat/completions?api-version=...`; auth
  `api-key`, and `api-version` is required.

Answers use each format's real shapes: JSON or streams (SSE; Bedrock's binary event stream with
real CRCs), real usage numbers (see `usage_for`), tool calls, and reasoning. The model name (for
Gemini and Bedrock the one in the path, for Azure the deployment) picks the behaviour:

| model contains / is | behaviour                                                                  |
|---------------------|----------------------------------------------------------------------------|
| `tool-call`         | calls the request's first tool (arguments from its schema), unless the last |
|                     | message is already a tool result                                           |
| `think`             | reasons first (thinking blocks, `reasoning_content`, Gemini thoughts when   |
|                     | asked for, Bedrock `reasoningContent` when thinking is enabled)            |
| `fail-429`          | 429 with `Retry-After: 7`, in the format's error shape                     |
| `fail-429-after-<s>`| 429 with `Retry-After: <s>` (e.g. `fail-429-after-1`)                      |
| `fail-429-bare`     | 429 without `Retry-After`                                                  |
| `fail-500-once`     | 500 on the first request for that model since the last reset, then normal  |
| `fail-<status>`     | that status, always (`fail-503`: a persistent outage)                      |
| `context-length`    | 400 with the provider's real context-window error body                     |
| `reset`             | reads the request, then resets the connection (TCP RST)                    |
| `hang`              | reads the request and never answers                                        |
| `slow-first-token`  | sends headers, then waits `SLOW_SECONDS` before the first byte of the body  |
| `cut-stream`        | sends half the events (or half the JSON body), then closes the connection  |
| `stall-stream`      | streams two events, then goes silent (connection kept open)                |
| `malformed-chunk`   | a broken third event (invalid JSON; for Bedrock a CRC mismatch)           |
| `no-done`           | the stream ends cleanly but without its end marker: `[DONE]`,              |
|                     | `message_stop`, Gemini's `finishReason` chunk, Bedrock's `messageStop`     |
| `long-<n>`          | answers with `n` words (the reply repeated), streamed one word per event   |

Keys: any non-empty key is accepted, except keys starting with `bad` (401/403 in the format's
shape) and `limited` (429 with `Retry-After: 1`), so key rotation can be tested. Bedrock
requests must carry a valid SigV4 signature made with the secret `MOCK_AWS_SECRET` (any access
key id; ids starting with `AKIDBAD` are unknown).

Streams: each event is written on its own, then the server waits `--event-delay-ms` (default 2)
so that it leaves as its own network chunk, as a provider's tokens do; `--event-delay-ms 0`
writes events back to back (for benchmarks: an upstream as fast as it can be).

Inspection: `GET /_mock/last` (the last chat request: format, path, query, headers, JSON body,
and the usage the mock reported), `GET /_mock/requests` (all since the reset), `GET
/_mock/counts` (requests per model), `POST /_mock/reset` (clear all of it).

Why not Granian, like `mock_openai`: Granian cannot reset a connection or cut a chunked body
mid-way (an exception ends the body cleanly), and those are the faults this server exists for.
So it is a small HTTP/1.1 server on asyncio and llhttp (`httptools`): keep-alive, pipelining,
`Content-Length` request bodies, chunked streamed responses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote, urlsplit

import httptools
import orjson

from tollway.providers._sigv4 import sign
from tollway.testing.eventstream import event_message

REPLY = "Hello from the mock provider. Every answer has these same fourteen words in it."
THINKING = "The user wants a greeting, so a short friendly answer is right."
TOOL_PREAMBLE = "Let me look that up."
MOCK_AWS_SECRET = "mock-aws-secret-access-key"
THINKING_SIGNATURE = "RXFNb2NrU2lnbmF0dXJlRm9yVGhpbmtpbmc="
GEMINI_THOUGHT_SIGNATURE = "Q2lNb2NrR2VtaW5pVGhvdWdodFNpZ25hdHVyZQ=="
SLOW_SECONDS = 1.5
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    529: "Overloaded",
}
_JSON = ("content-type", "application/json")
_SKIPPED_KEYS = frozenset(
    {"source", "image_url", "inlineData", "fileData", "image", "document", "data", "bytes", "input", "args"}
)
_SKIPPED_KEYS |= {"arguments", "signature", "tools", "toolConfig", "tool_choice", "functionCall", "toolUse"}


# -- the HTTP/1.1 server ----------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    raw_query: str
    headers: dict[str, str]
    body: bytes

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.raw_query, keep_blank_values=True))


class Exchange:
    """The response side of one request on a connection."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.done = False

    @property
    def closed(self) -> bool:
        return self._conn.lost.done()

    def _write(self, data: bytes) -> None:
        transport = self._conn.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    @staticmethod
    def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        return "".join(lines).encode("latin-1")

    def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._write(self._head(status, [*headers, ("content-length", str(len(body)))]) + b"\r\n" + body)
        self.done = True

    def respond_cut(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Announce the whole body's length, send half of it, and close the connection."""
        head = self._head(status, [*headers, ("content-length", str(len(body)))])
        self._write(head + b"\r\n" + body[: len(body) // 2])
        self.cut()

    def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._write(self._head(status, [*headers, ("transfer-encoding", "chunked")]) + b"\r\n")

    async def send(self, data: bytes) -> None:
        if data:
            self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        if self._conn.event_delay_s > 0:
            await asyncio.sleep(self._conn.event_delay_s)  # let each event leave as its own network chunk

    def end(self) -> None:
        self._write(b"0\r\n\r\n")
        self.done = True

    def cut(self) -> None:
        """Close the connection mid-body (a FIN where the rest of the body should be)."""
        self.done = True
        if self._conn.transport is not None:
            self._conn.transport.close()

    def reset(self) -> None:
        """Reset the connection (RST): linger 0, then abort."""
        self.done = True
        transport = self._conn.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._conn.lost)


Handler = Callable[[Request, Exchange], Awaitable[None]]


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler, event_delay_s: float = 0.002) -> None:
        self.handler = handler
        self.event_delay_s = event_delay_s
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[Request] = asyncio.Queue()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = asyncio.ensure_future(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", {}, []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        parts = urlsplit(self._url.decode("latin-1"))
        method = self.parser.get_method().decode()
        self.queue.put_nowait(Request(method, parts.path, parts.query, self._headers, b"".join(self._body)))

    async def _serve(self) -> None:
        while True:
            request = await self.queue.get()
            exchange = Exchange(self)
            await self.handler(request, exchange)
            if not exchange.done:
                exchange.end()


# -- answers ----------------------------------------------------------------------------------


@dataclass
class Answer:
    text: str
    thinking: str
    tool: tuple[str, dict[str, Any]] | None
    stop: str  # "stop", "length" or "tool"
    prompt: int
    cached: int
    cache_write: int
    completion: int  # every output token, reasoning included
    reasoning: int
    pieces: int = 4  # streamed text events

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "cached_tokens": self.cached,
            "cache_write_tokens": self.cache_write,
            "reasoning_tokens": self.reasoning,
        }


def count_words(value: Any) -> int:
    """Words of the text a request carries (images, tool arguments and schemas not counted)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(count_words(v) for k, v in value.items() if k not in _SKIPPED_KEYS)
    return 0


def arguments_for(schema: Any) -> dict[str, Any]:
    """Deterministic arguments that satisfy a simple JSON schema's properties."""
    values = {"string": "Paris", "integer": 3, "number": 1.5, "boolean": True, "array": [], "object": {}}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    out: dict[str, Any] = {}
    for name, spec in (properties or {}).items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(kind, str):
            kind = kind.lower()
        out[name] = values.get(kind, "Paris") if isinstance(kind, str) else "Paris"
    return out


def usage_for(fmt: str, prompt_words: int, messages: int, text: str, thinking: str, tool: bool) -> dict[str, int]:
    """The usage the mock reports: prompt = words + 4 per message; a quarter of it read from the
    cache; an eighth written to it (Anthropic and Bedrock, which report writes); output = words of
    the text (+ 8 for a tool call) plus the reasoning words."""
    prompt = prompt_words + 4 * messages
    reasoning = len(thinking.split())
    return {
        "prompt": prompt,
        "cached": prompt // 4,
        "cache_write": prompt // 8 if fmt in ("anthropic", "bedrock") else 0,
        "reasoning": reasoning,
        "completion": len(text.split()) + (8 if tool else 0) + reasoning,
    }


def _pieces(text: str, parts: int = 4) -> list[str]:
    words = text.split(" ")
    step = max(1, -(-len(words) // parts))
    return [" ".join(words[i : i + step]) + (" " if i + step < len(words) else "") for i in range(0, len(words), step)]


def _halves(text: str) -> list[str]:
    middle = len(text) // 2
    return [text[:middle], text[middle:]]


# -- formats ----------------------------------------------------------------------------------


@dataclass
class Format:
    """What differs between providers: where things are in a request, and how answers look."""

    name: str
    stream_type: ClassVar[str] = "text/event-stream"

    def messages(self, body: dict[str, Any]) -> list[Any]:
        value = body.get("messages")
        return value if isinstance(value, list) else []

    def first_tool(self, body: dict[str, Any]) -> tuple[str, Any] | None:
        tools = body.get("tools")
        if isinstance(tools, list) and tools and isinstance(tools[0], dict):
            function = tools[0].get("function", {})
            return str(function.get("name", "")), function.get("parameters")
        return None

    def has_tool_result(self, body: dict[str, Any]) -> bool:
        messages = self.messages(body)
        return bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"

    def max_tokens(self, body: dict[str, Any]) -> Any:
        return body.get("max_completion_tokens", body.get("max_tokens"))

    def wants_thoughts(self, body: dict[str, Any]) -> bool:
        return True

    def auth_key(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return header.removeprefix("Bearer ") if header.startswith("Bearer ") else None

    def error(self, status: int, message: str, code: str | None = None) -> tuple[list[tuple[str, str]], bytes]:
        kind = "server_error" if status >= 500 else "rate_limit_exceeded" if status == 429 else "invalid_request_error"
        error = {"message": message, "type": kind, "param": None, "code": code}
        return [_JSON], orjson.dumps({"error": error})

    def context_length(self) -> tuple[list[tuple[str, str]], bytes]:
        message = (
            "This model's maximum context length is 128000 tokens. However, your messages resulted in "
            "131072 tokens. Please reduce the length of the messages."
        )
        body = {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        }
        return [_JSON], orjson.dumps(body)

    def completion(self, answer: Answer, model: str, body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None, "annotations": []}
        if answer.text:
            message["content"] = answer.text
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        if answer.tool is not None:
            name, args = answer.tool
            function = {"name": name, "arguments": _dumps(args).decode()}
            call = {"id": "call_mock1", "type": "function", "function": function}
            message["tool_calls"] = [call]
        finish = {"stop": "stop", "length": "length", "tool": "tool_calls"}[answer.stop]
        return {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": self._usage(answer),
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }

    @staticmethod
    def _usage(answer: Answer) -> dict[str, Any]:
        return {
            "prompt_tokens": answer.prompt,
            "completion_tokens": answer.completion,
            "total_tokens": answer.prompt + answer.completion,
            "prompt_tokens_details": {"cached_tokens": answer.cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": answer.reasoning, "audio_tokens": 0},
        }

    def stream(self, answer: Answer, model: str, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        """The stream's events, and separately its end marker (left out by `no-done`)."""
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_mock",
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + _dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        events = [chunk({"role": "assistant", "content": "", "refusal": None})]
        events += [chunk({"reasoning_content": piece}) for piece in _pieces(answer.thinking, 2) if answer.thinking]
        events += [chunk({"content": piece}) for piece in _pieces(answer.text, answer.pieces) if answer.text]
        if answer.tool is not None:
            name, args = answer.tool
            start = {"index": 0, "id": "call_mock1", "type": "function", "function": {"name": name, "arguments": ""}}
            events.append(chunk({"tool_calls": [start]}))
            for piece in _halves(_dumps(args).decode()):
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        events.append(chunk({}, {"stop": "stop", "length": "length", "tool": "tool_calls"}[answer.stop]))
        if include_usage:
            events.append(b"data: " + _dumps({**base, "choices": [], "usage": self._usage(answer)}) + b"\n\n")
        return events, [b"data: [DONE]\n\n"]

    def malformed(self) -> bytes:
        return b'data: {"id": "chatcmpl-mock", "choices": [\n\n'


class AzureFormat(Format):
    def auth_key(self, request: Request) -> str | None:
        return request.headers.get("api-key")

    def completion(self, answer: Answer, model: str, body: dict[str, Any]) -> dict[str, Any]:
        out = super().completion(answer, model, body)
        out["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
        return out

    def stream(self, answer: Answer, model: str, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        events, end = super().stream(answer, model, body)
        # Azure's first event carries the prompt's content-filter results and no choices.
        filters = {
            "id": "",
            "object": "",
            "created": 0,
            "model": "",
            "choices": [],
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
        }
        return [b"data: " + _dumps(filters) + b"\n\n", *events], end


class AnthropicFormat(Format):
    def messages(self, body: dict[str, Any]) -> list[Any]:
        return super().messages(body)

    def first_tool(self, body: dict[str, Any]) -> tuple[str, Any] | None:
        tools = body.get("tools")
        if isinstance(tools, list) and tools and isinstance(tools[0], dict):
            return str(tools[0].get("name", "")), tools[0].get("input_schema")
        return None

    def has_tool_result(self, body: dict[str, Any]) -> bool:
        messages = self.messages(body)
        if not messages or not isinstance(messages[-1], dict):
            return False
        content = messages[-1].get("content")
        return isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )

    def max_tokens(self, body: dict[str, Any]) -> Any:
        return body.get("max_tokens")

    def wants_thoughts(self, body: dict[str, Any]) -> bool:
        thinking = body.get("thinking")
        return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")

    def auth_key(self, request: Request) -> str | None:
        return request.headers.get("x-api-key")

    def error(self, status: int, message: str, code: str | None = None) -> tuple[list[tuple[str, str]], bytes]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
            503: "overloaded_error",
        }.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_mock"}
        return [_JSON, ("request-id", "req_mock")], orjson.dumps(body)

    def context_length(self) -> tuple[list[tuple[str, str]], bytes]:
        return self.error(400, "prompt is too long: 208310 tokens > 200000 maximum")

    def _usage_obj(self, answer: Answer, output: int) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": answer.prompt - answer.cached - answer.cache_write,
            "cache_creation_input_tokens": answer.cache_write,
            "cache_read_input_tokens": answer.cached,
            "output_tokens": output,
        }
        if answer.reasoning:
            usage["output_tokens_details"] = {"thinking_tokens": answer.reasoning}
        return usage

    def _stop(self, answer: Answer) -> str:
        return {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}[answer.stop]

    def completion(self, answer: Answer, model: str, body: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if answer.thinking:
            content.append({"type": "thinking", "thinking": answer.thinking, "signature": THINKING_SIGNATURE})
        if answer.text:
            content.append({"type": "text", "text": answer.text})
        if answer.tool is not None:
            content.append({"type": "tool_use", "id": "toolu_mock1", "name": answer.tool[0], "input": answer.tool[1]})
        return {
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": self._stop(answer),
            "stop_sequence": None,
            "usage": self._usage_obj(answer, answer.completion),
        }

    def stream(self, answer: Answer, model: str, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return f"event: {kind}\n".encode() + b"data: " + _dumps({"type": kind, **payload}) + b"\n\n"

        message: dict[str, Any] = {
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage_obj(answer, 1),
        }
        events = [event("message_start", {"message": message}), event("ping", {})]
        index = 0

        def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
            nonlocal index
            events.append(event("content_block_start", {"index": index, "content_block": start}))
            events.extend(event("content_block_delta", {"index": index, "delta": d}) for d in deltas)
            events.append(event("content_block_stop", {"index": index}))
            index += 1

        if answer.thinking:
            deltas = [{"type": "thinking_delta", "thinking": p} for p in _pieces(answer.thinking, 2)]
            deltas.append({"type": "signature_delta", "signature": THINKING_SIGNATURE})
            block({"type": "thinking", "thinking": "", "signature": ""}, deltas)
        if answer.text:
            block(
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": p} for p in _pieces(answer.text, answer.pieces)],
            )
        if answer.tool is not None:
            name, args = answer.tool
            fragments = ["", *_halves(_dumps(args).decode())]
            block(
                {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {}},
                [{"type": "input_json_delta", "partial_json": f} for f in fragments],
            )
        delta = {"stop_reason": self._stop(answer), "stop_sequence": None}
        events.append(event("message_delta", {"delta": delta, "usage": {"output_tokens": answer.completion}}))
        return events, [event("message_stop", {})]

    def malformed(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", \n\n'


class GeminiFormat(Format):
    _STATUS: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    def messages(self, body: dict[str, Any]) -> list[Any]:
        value = body.get("contents")
        return value if isinstance(value, list) else []

    def first_tool(self, body: dict[str, Any]) -> tuple[str, Any] | None:
        for tool in body.get("tools") or ():
            for declaration in tool.get("functionDeclarations") or ():
                schema = declaration.get("parametersJsonSchema", declaration.get("parameters"))
                return str(declaration.get("name", "")), schema
        return None

    def has_tool_result(self, body: dict[str, Any]) -> bool:
        contents = self.messages(body)
        if not contents or not isinstance(contents[-1], dict):
            return False
        return any(isinstance(p, dict) and "functionResponse" in p for p in contents[-1].get("parts") or ())

    def max_tokens(self, body: dict[str, Any]) -> Any:
        config = body.get("generationConfig")
        return config.get("maxOutputTokens") if isinstance(config, dict) else None

    def wants_thoughts(self, body: dict[str, Any]) -> bool:
        config = body.get("generationConfig")
        thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
        return isinstance(thinking, dict) and thinking.get("includeThoughts") is True

    def auth_key(self, request: Request) -> str | None:
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def error(self, status: int, message: str, code: str | None = None) -> tuple[list[tuple[str, str]], bytes]:
        error: dict[str, Any] = {"code": status, "message": message, "status": self._STATUS.get(status, "UNKNOWN")}
        if code is not None:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": code}]
        return [_JSON], orjson.dumps({"error": error})

    def context_length(self) -> tuple[list[tuple[str, str]], bytes]:
        message = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
        return self.error(400, message)

    def _usage(self, answer: Answer) -> dict[str, Any]:  # type: ignore[override]
        return {
            "promptTokenCount": answer.prompt,
            "candidatesTokenCount": answer.completion - answer.reasoning,
            "totalTokenCount": answer.prompt + answer.completion,
            "cachedContentTokenCount": answer.cached,
            "thoughtsTokenCount": answer.reasoning,
        }

    def _parts(self, answer: Answer, body: dict[str, Any]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if answer.thinking and self.wants_thoughts(body):
            parts.append({"text": answer.thinking, "thought": True})
        if answer.text:
            parts.append({"text": answer.text})
        if answer.tool is not None:
            call = {"name": answer.tool[0], "args": answer.tool[1]}
            parts.append({"functionCall": call, "thoughtSignature": GEMINI_THOUGHT_SIGNATURE})
        return parts

    def _finish(self, answer: Answer) -> str:
        return "MAX_TOKENS" if answer.stop == "length" else "STOP"

    def completion(self, answer: Answer, model: str, body: dict[str, Any]) -> dict[str, Any]:
        candidate = {
            "content": {"role": "model", "parts": self._parts(answer, body)},
            "finishReason": self._finish(answer),
            "index": 0,
        }
        return {
            "candidates": [candidate],
            "usageMetadata": self._usage(answer),
            "modelVersion": model,
            "responseId": "mock-response-1",
        }

    def stream(self, answer: Answer, model: str, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        def chunk(parts: list[dict[str, Any]], finish: str | None = None, final: bool = False) -> bytes:
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            if finish:
                candidate["finishReason"] = finish
            usage = (
                self._usage(answer) if final else {"promptTokenCount": answer.prompt, "totalTokenCount": answer.prompt}
            )
            payload = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "mock-1"}
            return b"data: " + _dumps(payload) + b"\r\n\r\n"

        events: list[bytes] = []
        if answer.thinking and self.wants_thoughts(body):
            events += [chunk([{"text": p, "thought": True}]) for p in _pieces(answer.thinking, 2)]
        pieces = _pieces(answer.text, answer.pieces) if answer.text else []
        events += [chunk([{"text": p}]) for p in pieces[:-1]]
        last: list[dict[str, Any]] = [{"text": pieces[-1]}] if pieces else []
        if answer.tool is not None:
            call = {"name": answer.tool[0], "args": answer.tool[1]}
            last.append({"functionCall": call, "thoughtSignature": GEMINI_THOUGHT_SIGNATURE})
        # Gemini has no end marker: the last chunk carries `finishReason` and the full usage.
        return events, [chunk(last, self._finish(answer), final=True)]

    def malformed(self) -> bytes:
        return b'data: {"candidates": [\r\n\r\n'


class BedrockFormat(Format):
    stream_type: ClassVar[str] = "application/vnd.amazon.eventstream"
    _TYPES: ClassVar[dict[int, str]] = {
        400: "ValidationException",
        401: "UnrecognizedClientException",
        403: "AccessDeniedException",
        404: "ResourceNotFoundException",
        408: "ModelTimeoutException",
        429: "ThrottlingException",
        500: "InternalServerException",
        503: "ServiceUnavailableException",
    }

    def first_tool(self, body: dict[str, Any]) -> tuple[str, Any] | None:
        config = body.get("toolConfig")
        for tool in config.get("tools") or () if isinstance(config, dict) else ():
            spec = tool.get("toolSpec") if isinstance(tool, dict) else None
            if isinstance(spec, dict):
                schema = spec.get("inputSchema", {}).get("json")
                return str(spec.get("name", "")), schema
        return None

    def has_tool_result(self, body: dict[str, Any]) -> bool:
        messages = self.messages(body)
        if not messages or not isinstance(messages[-1], dict):
            return False
        return any(isinstance(b, dict) and "toolResult" in b for b in messages[-1].get("content") or ())

    def max_tokens(self, body: dict[str, Any]) -> Any:
        config = body.get("inferenceConfig")
        return config.get("maxTokens") if isinstance(config, dict) else None

    def wants_thoughts(self, body: dict[str, Any]) -> bool:
        fields = body.get("additionalModelRequestFields")
        return isinstance(fields, dict) and isinstance(fields.get("thinking"), dict)

    def auth_key(self, request: Request) -> str | None:
        return None  # SigV4, checked by `check_sigv4`

    def error(self, status: int, message: str, code: str | None = None) -> tuple[list[tuple[str, str]], bytes]:
        kind = code or self._TYPES.get(status, "InternalServerException")
        headers = [_JSON, ("x-amzn-errortype", f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/")]
        return headers, orjson.dumps({"message": message})

    def context_length(self) -> tuple[list[tuple[str, str]], bytes]:
        return self.error(400, "Input is too long for requested model.")

    def _usage(self, answer: Answer) -> dict[str, Any]:  # type: ignore[override]
        uncached = answer.prompt - answer.cached - answer.cache_write
        return {
            "inputTokens": uncached,
            "outputTokens": answer.completion,
            "totalTokens": answer.prompt + answer.completion,
            "cacheReadInputTokens": answer.cached,
            "cacheWriteInputTokens": answer.cache_write,
        }

    def _stop(self, answer: Answer) -> str:
        return {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}[answer.stop]

    def completion(self, answer: Answer, model: str, body: dict[str, Any]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if answer.thinking and self.wants_thoughts(body):
            text = {"text": answer.thinking, "signature": THINKING_SIGNATURE}
            content.append({"reasoningContent": {"reasoningText": text}})
        if answer.text:
            content.append({"text": answer.text})
        if answer.tool is not None:
            content.append({"toolUse": {"toolUseId": "tooluse_mock1", "name": answer.tool[0], "input": answer.tool[1]}})
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self._stop(answer),
            "usage": self._usage(answer),
            "metrics": {"latencyMs": 42},
        }

    def stream(self, answer: Answer, model: str, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        events = [event_message("messageStart", {"role": "assistant", "p": "abcdefgh"})]
        index = 0
        if answer.thinking and self.wants_thoughts(body):
            for piece in _pieces(answer.thinking, 2):
                delta = {"reasoningContent": {"text": piece}}
                events.append(event_message("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            delta = {"reasoningContent": {"signature": THINKING_SIGNATURE}}
            events.append(event_message("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            events.append(event_message("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if answer.text:
            for piece in _pieces(answer.text, answer.pieces):
                text_delta = {"text": piece}
                events.append(
                    event_message("contentBlockDelta", {"contentBlockIndex": index, "delta": text_delta, "p": "ab"})
                )
            events.append(event_message("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if answer.tool is not None:
            name, args = answer.tool
            start = {"toolUse": {"toolUseId": "tooluse_mock1", "name": name}}
            events.append(event_message("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            for piece in _halves(_dumps(args).decode()):
                delta = {"toolUse": {"input": piece}}
                events.append(event_message("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
            events.append(event_message("contentBlockStop", {"contentBlockIndex": index}))
        end = [
            event_message("messageStop", {"stopReason": self._stop(answer)}),
            event_message("metadata", {"usage": self._usage(answer), "metrics": {"latencyMs": 42}}),
        ]
        return events, end

    def malformed(self) -> bytes:
        frame = bytearray(event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}))
        frame[-6] ^= 0xFF  # a payload byte: the message CRC no longer matches
        return bytes(frame)


OPENAI, ANTHROPIC, GEMINI, BEDROCK, AZURE = (
    Format("openai"),
    AnthropicFormat("anthropic"),
    GeminiFormat("gemini"),
    BedrockFormat("bedrock"),
    AzureFormat("azure"),
)
_GEMINI_PATH = re.compile(r"^/v1beta/models/([^/:]+):(generateContent|streamGenerateContent)$")
_LONG = re.compile(r"long-(\d+)")
_BEDROCK_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
_AZURE_PATH = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$"
)


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


# -- the app ----------------------------------------------------------------------------------


@dataclass
class MockProviders:
    last: dict[str, Any] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    async def __call__(self, request: Request, exchange: Exchange) -> None:
        try:
            await self.handle(request, exchange)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the mock: answer 500 rather than hang the test
            if not exchange.done and not exchange.closed:
                exchange.respond(500, [_JSON], orjson.dumps({"error": {"message": f"mock bug: {exc!r}"}}))

    def _json(self, exchange: Exchange, value: Any, status: int = 200) -> None:
        exchange.respond(status, [_JSON], orjson.dumps(value))

    async def handle(self, request: Request, exchange: Exchange) -> None:
        path, method = request.path, request.method
        if method == "GET" and path in ("/_mock/health", "/v1/models"):
            self._json(exchange, {"object": "list", "data": [{"id": "mock", "object": "model", "owned_by": "mock"}]})
        elif path == "/_mock/last":
            self._json(exchange, self.last)
        elif path == "/_mock/requests":
            self._json(exchange, self.requests)
        elif path == "/_mock/counts":
            self._json(exchange, self.counts)
        elif path == "/_mock/reset":
            self.last, self.requests, self.counts = {}, [], {}
            self._json(exchange, {"ok": True})
        elif method != "POST":
            self._json(exchange, {"error": {"message": f"{method} {path} is not served"}}, 405)
        elif path == "/v1/chat/completions":
            await self.chat(request, exchange, OPENAI, None, None)
        elif path == "/v1/messages":
            await self.chat(request, exchange, ANTHROPIC, None, None)
        elif m := _GEMINI_PATH.match(path):
            stream = m.group(2) == "streamGenerateContent"
            if stream and request.query.get("alt") != "sse":
                headers, body = GEMINI.error(400, "this mock streams only with `alt=sse`")
                exchange.respond(400, headers, body)
                return
            await self.chat(request, exchange, GEMINI, unquote(m.group(1)), stream)
        elif m := _BEDROCK_PATH.match(path):
            await self.chat(request, exchange, BEDROCK, unquote(m.group(1)), m.group(2) == "converse-stream")
        elif m := _AZURE_PATH.match(path):
            if not request.query.get("api-version"):
                self._json(exchange, {"error": {"code": "404", "message": "Resource not found"}}, 404)
                return
            await self.chat(request, exchange, AZURE, unquote(m.group(1)), None)
        else:
            self._json(exchange, {"error": {"message": f"unknown path {path}"}}, 404)

    def _record(self, fmt: Format, request: Request, model: str, body: Any) -> dict[str, Any]:
        record = {
            "format": fmt.name,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "model": model,
            "body": body,
        }
        self.last = record
        self.requests.append(record)
        del self.requests[:-200]
        self.counts[model] = self.counts.get(model, 0) + 1
        return record

    def _check_auth(self, fmt: Format, request: Request) -> tuple[int, str, str | None] | None:
        if fmt is BEDROCK:
            return self._check_sigv4(request)
        if fmt is ANTHROPIC and not request.headers.get("anthropic-version"):
            return 400, "anthropic-version: header is required", None
        key = fmt.auth_key(request)
        if not key:
            return 401, "missing API key", None
        if key.startswith("bad"):
            if fmt is GEMINI:
                return 400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"
            return 401, "invalid API key", None
        if key.startswith("limited"):
            return 429, "rate limit reached for this key", None
        return None

    def _check_sigv4(self, request: Request) -> tuple[int, str, str | None] | None:
        m = _SIGV4.match(request.headers.get("authorization", ""))
        amz_date = request.headers.get("x-amz-date", "")
        if m is None or not amz_date:
            return 403, "Missing Authentication Token", "MissingAuthenticationTokenException"
        access_key, _, region, service, signed_names, signature = m.groups()
        if access_key.startswith("AKIDBAD"):
            return 403, "The security token included in the request is invalid.", "UnrecognizedClientException"
        names = signed_names.split(";")
        if "host" not in names or "x-amz-date" not in names:
            return 403, "the signature must cover `host` and `x-amz-date`", "InvalidSignatureException"
        signed = {
            n: request.headers.get(n, "") for n in names if n not in ("host", "x-amz-date", "x-amz-security-token")
        }
        expected = sign(
            method=request.method,
            host=request.headers.get("host", ""),
            path=request.path,
            query=request.raw_query,
            headers=signed,
            body=request.body,
            access_key=access_key,
            secret_key=MOCK_AWS_SECRET,
            region=region,
            service=service,
            session_token=request.headers.get("x-amz-security-token"),
            now=datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC),
        )
        if not expected["authorization"].endswith(f"Signature={signature}") or service != "bedrock":
            message = "The request signature we calculated does not match the signature you provided."
            return 403, message, "InvalidSignatureException"
        return None

    def _answer(self, fmt: Format, model: str, body: dict[str, Any]) -> Answer:
        tool = None
        if "tool-call" in model and not fmt.has_tool_result(body):
            first = fmt.first_tool(body)
            if first is not None:
                tool = (first[0], arguments_for(first[1]))
        text = TOOL_PREAMBLE if tool is not None else REPLY
        pieces = 4
        if (long := _LONG.search(model)) is not None:
            pieces = max(1, int(long.group(1)))
            text = " ".join((REPLY.split() * (pieces // len(REPLY.split()) + 1))[:pieces])
        thinking = THINKING if "think" in model else ""
        stop = "tool" if tool is not None else "stop"
        limit = fmt.max_tokens(body)
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < len(text.split()) and tool is None:
            text, stop = " ".join(text.split()[:limit]), "length"
        prompt_words = count_words(body.get("system")) + count_words(body.get("systemInstruction"))
        messages = fmt.messages(body)
        usage = usage_for(
            fmt.name, prompt_words + count_words(messages), len(messages), text, thinking, tool is not None
        )
        return Answer(
            text=text,
            thinking=thinking,
            tool=tool,
            stop=stop,
            prompt=usage["prompt"],
            cached=usage["cached"],
            cache_write=usage["cache_write"],
            completion=usage["completion"],
            reasoning=usage["reasoning"],
            pieces=pieces,
        )

    async def chat(
        self, request: Request, exchange: Exchange, fmt: Format, path_model: str | None, stream: bool | None
    ) -> None:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            body = None
        model = path_model if path_model is not None else str(body.get("model", "")) if isinstance(body, dict) else ""
        record = self._record(
            fmt, request, model, body if body is not None else request.body.decode("utf-8", "replace")
        )
        problem = self._check_auth(fmt, request)
        if problem is not None:
            status, message, code = problem
            headers, payload = fmt.error(status, message, code)
            if status == 429:
                headers = [*headers, ("retry-after", "1")]
            exchange.respond(status, headers, payload)
            return
        if not isinstance(body, dict):
            headers, payload = fmt.error(400, "We could not parse the JSON body of your request.")
            exchange.respond(400, headers, payload)
            return
        if stream is None:
            stream = body.get("stream") is True
        if await self._fault(fmt, model, exchange):
            return
        answer = self._answer(fmt, model, body)
        record["usage"] = answer.usage
        if not stream:
            if model == "slow-first-token":
                await asyncio.sleep(SLOW_SECONDS)
            if model == "malformed-chunk":
                exchange.respond(200, [_JSON], b'{"choices": [')
                return
            payload = _dumps(fmt.completion(answer, model, body))
            if model == "cut-stream":
                exchange.respond_cut(200, [_JSON], payload)
                return
            exchange.respond(200, [_JSON], payload)
            return
        await self._stream(fmt, model, body, answer, exchange)

    async def _fault(self, fmt: Format, model: str, exchange: Exchange) -> bool:
        """Answer for the fault models; `True` when the request was handled here."""
        if model == "context-length":
            headers, payload = fmt.context_length()
            exchange.respond(400, headers, payload)
            return True
        if model == "reset":
            exchange.reset()
            return True
        if model == "hang":
            await exchange.wait_closed()
            exchange.done = True
            return True
        if model.startswith("fail-"):
            if model == "fail-500-once" and self.counts.get(model, 0) > 1:
                return False
            status = 429 if model.startswith("fail-429") else int(model.removeprefix("fail-").split("-")[0])
            headers, payload = fmt.error(status, f"mock failure {status}")
            if model == "fail-429":
                headers = [*headers, ("retry-after", "7")]
            elif model.startswith("fail-429-after-"):
                headers = [*headers, ("retry-after", model.removeprefix("fail-429-after-"))]
            exchange.respond(status, headers, payload)
            return True
        return False

    async def _stream(self, fmt: Format, model: str, body: dict[str, Any], answer: Answer, exchange: Exchange) -> None:
        events, end = fmt.stream(answer, model, body)
        exchange.start(200, [("content-type", fmt.stream_type), ("cache-control", "no-cache")])
        if model == "slow-first-token":
            await asyncio.sleep(SLOW_SECONDS)
        for i, event in enumerate(events):
            if exchange.closed:
                return
            if model == "cut-stream" and i == len(events) // 2:
                exchange.cut()
                return
            if model == "stall-stream" and i == 2:
                await exchange.wait_closed()
                return
            if model == "malformed-chunk" and i == 2:
                await exchange.send(fmt.malformed())
            await exchange.send(event)
        if model != "no-done":
            for event in end:
                await exchange.send(event)
        exchange.end()


async def serve(host: str, port: int, event_delay_s: float = 0.002) -> None:
    app = MockProviders()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(app, event_delay_s), host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument(
        "--event-delay-ms", type=float, default=2.0, help="wait after each streamed event (0: none, for benchmarks)"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.event_delay_ms / 1000))


if __name__ == "__main__":
    main()
