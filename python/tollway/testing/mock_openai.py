"""A mock OpenAI server speaking the real wire format, for tests, benchmarks and load tests.

Run it with `python -m tollway.testing.mock_openai --port 9000`. It answers
`POST /v1/chat/completions` (JSON or SSE, exactly as OpenAI does, including
`stream_options.include_usage`) and `GET /v1/models`. The requested model name picks a
behaviour, so one server covers every test:

| model            | behaviour                                                              |
|------------------|------------------------------------------------------------------------|
| anything else    | a normal answer (`reply` split into `chunks` stream events)             |
| `fail-<status>`  | that HTTP status with an OpenAI error body (`fail-429` adds Retry-After) |
| `slow-headers`   | waits 30 s before answering (first-byte timeouts)                      |
| `stall-stream`   | streams two events, then goes silent (idle timeouts)                   |
| `broken-stream`  | streams two events, then ends the body without `[DONE]`                |
| `slow-stream`    | 100 events, 50 ms apart (client-disconnect tests)                      |
| `not-json`       | 200 with a body that is not JSON                                       |

Inspection endpoints: `GET /_mock/last` (headers, body and HTTP version, as `"1.1"` or `"2"`, of
the last chat, embeddings or responses request) and
`GET /_mock/stats` (streams started, completed and aborted by the peer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import orjson

REPLY = "The quick brown fox jumps over the lazy dog, again and again, for the benchmark."
JSON_HEADERS = [("content-type", "application/json")]
SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]


def _error(status: int, message: str) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


class MockOpenAI:
    def __init__(self, chunks: int = 8) -> None:
        self.chunks = chunks
        self.last: dict[str, Any] = {}
        self.stats = {"requests": 0, "streams_started": 0, "streams_completed": 0, "streams_aborted": 0}
        words = REPLY.split()
        step = max(1, len(words) // chunks)
        self.pieces = [" ".join(words[i : i + step]) for i in range(0, len(words), step)]
        self.completion_tokens = len(words)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        path = scope.path
        if path == "/v1/chat/completions" and scope.method == "POST":
            await self.chat(scope, proto)
        elif path == "/v1/embeddings" and scope.method == "POST":
            await self.embeddings(scope, proto)
        elif path == "/v1/responses" and scope.method == "POST":
            await self.responses(scope, proto)
        elif path == "/v1/models":
            body = orjson.dumps(
                {"object": "list", "data": [{"id": "gpt-mock", "object": "model", "created": 0, "owned_by": "mock"}]}
            )
            proto.response_bytes(200, JSON_HEADERS, body)
        elif path == "/_mock/last":
            proto.response_bytes(200, JSON_HEADERS, orjson.dumps(self.last))
        elif path == "/_mock/stats":
            proto.response_bytes(200, JSON_HEADERS, orjson.dumps(self.stats))
        else:
            proto.response_bytes(404, JSON_HEADERS, _error(404, f"unknown path {path}"))

    async def chat(self, scope: Any, proto: Any) -> None:
        raw = await proto()
        self.stats["requests"] += 1
        self.last = {
            "headers": {k: v for k, v in scope.headers.items()},
            "body": raw.decode("utf-8", "replace"),
            "http_version": scope.http_version,
        }
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            proto.response_bytes(400, JSON_HEADERS, _error(400, "We could not parse the JSON body of your request."))
            return
        model = body.get("model", "")
        if model.startswith("fail-"):
            status = int(model.removeprefix("fail-"))
            headers = [*JSON_HEADERS, ("retry-after", "7")] if status == 429 else JSON_HEADERS
            proto.response_bytes(status, headers, _error(status, f"mock failure {status}"))
            return
        if model == "slow-headers":
            await asyncio.sleep(30)
        if model == "not-json":
            proto.response_bytes(200, JSON_HEADERS, b"<html>oops</html>")
            return
        prompt_tokens = sum(len(str(m.get("content", "")).split()) + 4 for m in body.get("messages", []))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        if body.get("stream"):
            await self.stream(scope, proto, body, model, usage)
            return
        reported = {} if model == "no-usage" else {"usage": usage}  # a server that reports no usage
        payload = {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": REPLY, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            **reported,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
        proto.response_bytes(200, [*JSON_HEADERS, ("x-request-id", "upstream-req-1")], orjson.dumps(payload))

    async def embeddings(self, scope: Any, proto: Any) -> None:
        raw = await proto()
        self.last = {"headers": {}, "body": raw.decode("utf-8", "replace"), "http_version": scope.http_version}
        body = orjson.loads(raw)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        tokens = sum(len(str(i).split()) for i in inputs)
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": [0.25, -0.5, 0.125]} for i in range(len(inputs))],
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        proto.response_bytes(200, JSON_HEADERS, orjson.dumps(payload))

    async def responses(self, scope: Any, proto: Any) -> None:
        """OpenAI's Responses API: the answer, or its event stream."""
        raw = await proto()
        self.last = {"headers": {}, "body": raw.decode("utf-8", "replace"), "http_version": scope.http_version}
        body = orjson.loads(raw)
        words = len(str(body.get("input", "")).split())
        usage = {
            "input_tokens": words,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": words + self.completion_tokens,
        }
        message = {
            "type": "message",
            "id": "msg_mock",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": REPLY, "annotations": []}],
        }
        response: dict[str, Any] = {
            "id": "resp_mock",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body["model"],
            "output": [message],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }
        if not body.get("stream"):
            proto.response_bytes(200, JSON_HEADERS, orjson.dumps(response))
            return

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

        transport = proto.response_stream(200, SSE_HEADERS)
        seq = iter(range(1000))
        item = {**message, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": "msg_mock", "output_index": 0, "content_index": 0}
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        events = [
            event("response.created", {"response": started, "sequence_number": next(seq)}),
            event("response.output_item.added", {"output_index": 0, "item": item, "sequence_number": next(seq)}),
            event("response.content_part.added", {**where, "part": part, "sequence_number": next(seq)}),
        ]
        await transport.send_bytes(b"".join(events))
        for i, piece in enumerate(self.pieces):
            delta = piece if i == 0 else " " + piece
            await transport.send_bytes(
                event(
                    "response.output_text.delta",
                    {**where, "delta": delta, "sequence_number": next(seq), "logprobs": []},
                )
            )
        done_part = {**part, "text": REPLY}
        events = [
            event("response.output_text.done", {**where, "text": REPLY, "sequence_number": next(seq), "logprobs": []}),
            event("response.content_part.done", {**where, "part": done_part, "sequence_number": next(seq)}),
            event("response.output_item.done", {"output_index": 0, "item": message, "sequence_number": next(seq)}),
            event("response.completed", {"response": response, "sequence_number": next(seq)}),
        ]
        await transport.send_bytes(b"".join(events))

    async def stream(self, scope: Any, proto: Any, body: dict[str, Any], model: str, usage: dict[str, Any]) -> None:
        options = body.get("stream_options") or {}
        # `no-usage`: a server that ignores `include_usage`.
        include_usage = options.get("include_usage") is True and model != "no-usage"
        base = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
        extra = {"usage": None} if include_usage else {}

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + orjson.dumps({**base, "choices": [choice], **extra}) + b"\n\n"

        pieces = self.pieces
        delay = 0.0
        if model == "slow-stream":
            pieces, delay = [f"word{i} " for i in range(100)], 0.05
        self.stats["streams_started"] += 1
        transport = proto.response_stream(200, SSE_HEADERS)
        gone = asyncio.ensure_future(proto.client_disconnect())
        try:
            await transport.send_bytes(event({"role": "assistant", "content": "", "refusal": None}))
            for i, piece in enumerate(pieces):
                if delay:
                    await asyncio.sleep(delay)
                if gone.done():
                    self.stats["streams_aborted"] += 1
                    return
                await transport.send_bytes(event({"content": piece if i == 0 else " " + piece}))
                if i == 1 and model == "stall-stream":
                    await asyncio.sleep(30)
                if i == 1 and model == "broken-stream":
                    return
            tail = event({}, "stop")
            if include_usage:
                tail += b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            await transport.send_bytes(tail + b"data: [DONE]\n\n")
            self.stats["streams_completed"] += 1
        finally:
            gone.cancel()
            with contextlib.suppress(BaseException):
                await gone


def main() -> None:
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels
    from granian.server import Server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    Server(
        "tollway.testing.mock_openai:MockOpenAI",
        factory=True,
        address=args.host,
        port=args.port,
        interface=Interfaces.RSGI,
        workers=args.workers,
        loop=Loops.uvloop,
        log_level=LogLevels.warning,
        websockets=False,
    ).serve()


if __name__ == "__main__":
    main()
