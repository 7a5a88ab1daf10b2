"""A misbehaving OpenAI-compatible provider, for the upstream client's hostile tests.

Raw asyncio sockets, no HTTP library: every byte it sends is written here on purpose, including
the ones no well-behaved server would send. It speaks OpenAI's chat-completions wire format
(`POST /v1/chat/completions`, a JSON answer, or SSE chunks ending with a usage chunk and
`data: [DONE]` when the body has `"stream": true`), and the requested `model` names the
scenario:

- `ok`: a correct answer, streamed or not.
- `interim-100`, `interim-103`: an interim `100 Continue` (or `103 Early Hints` with a `Link`
  header), then 50 ms later the real answer.
- `double-response`: two complete answers to one request, in one write;
  `double-response-late`: the second one 50 ms after the first (`late_sent` counts them).
- `endless-headers`: a status line, then header lines for as long as the peer reads them, at
  `rate` bytes per second (default 32 MiB/s: a bounded client stops it within milliseconds,
  an unbounded one fills its memory at that pace rather than at the machine's).
- `gzip-bomb`, `brotli-bomb`, `zstd-bomb`: a 200 whose body, encoded as the name says, expands
  to `size` bytes of zeros (default 1 GiB; gzip's is about 1 MB). The default ones are built
  before the server listens, others on first use; all are kept in memory and in `--cache-dir`.
- `slow-drip`: the answer's head, one byte every 100 ms, then its body.
- `early-close`: `content-length: 1000`, 500 bytes, then the connection is closed.
- `firehose`: a valid SSE stream of `size` bytes (default 64 MiB) of content chunks, then the
  usage chunk and `[DONE]`, written as fast as the peer reads.
- `trickle`: a valid SSE stream of `count` content chunks (default 20), one every `every` ms
  (default 500), then the usage chunk and `[DONE]`.
- `hold`: reads the request and never answers; waits for the peer to close.

Every answer says which request it answers: its content is `answer to <text>`, where `<text>` is
the text of the request's last user message (tests put a nonce there). A second, unrequested
answer says `extra answer for <text>`, so a client that receives it sees someone else's nonce.
Parameters ride in that text too, as `name=<integer>` words (`size=200000000 every=100`), so
that they reach this server whatever format the gateway translated the request from.

Control endpoints (not scenarios):

- `GET /_hostile/stats`: per scenario, `connections` (connections whose first request was that
  scenario), `requests` received, `peer_closed` (connections whose last request was that
  scenario and that the peer closed or reset: at EOF while waiting for a request, or a failed
  write), `late_sent`; plus `requests_log`, one `{conn, model, nonce}` per request in arrival
  order, and `open`, the model connections open now.
- `POST /_hostile/reset`: zero the statistics (connection numbers keep increasing).

Run: `python tests/hostile_upstream.py --port N [--cache-dir DIR]`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIB = 1 << 30
_PARAM = re.compile(r"\b([a-z_]+)=(\d+)\b")
_INTERIM = {
    "interim-100": b"HTTP/1.1 100 Continue\r\n\r\n",
    "interim-103": b"HTTP/1.1 103 Early Hints\r\nlink: </hint.css>; rel=preload; as=style\r\n\r\n",
}
_ENCODING = {"gzip-bomb": "gzip", "brotli-bomb": "br", "zstd-bomb": "zstd"}


@dataclass
class Request:
    method: str
    path: str
    body: bytes
    model: str = ""
    stream: bool = False
    text: str = ""

    def param(self, name: str, default: int) -> int:
        for key, value in _PARAM.findall(self.text):
            if key == name:
                return int(value)
        return default


@dataclass
class Conn:
    number: int
    scenario: str = ""  # the scenario of the connection's last model request


@dataclass
class Stats:
    scenarios: dict[str, dict[str, int]] = field(default_factory=dict)
    requests_log: list[dict[str, Any]] = field(default_factory=list)
    open: int = 0

    def count(self, scenario: str, what: str) -> None:
        counts = self.scenarios.setdefault(scenario, {"connections": 0, "requests": 0, "peer_closed": 0})
        counts[what] = counts.get(what, 0) + 1

    def to_json(self) -> bytes:
        return json.dumps({"scenarios": self.scenarios, "requests_log": self.requests_log, "open": self.open}).encode()


class PeerClosed(Exception):
    """The peer closed or reset the connection."""


class Upstream:
    def __init__(self, cache_dir: Path | None) -> None:
        self.stats = Stats()
        self.numbers = itertools.count(1)
        self.cache_dir = cache_dir
        self.bombs: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self.handlers: dict[str, Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]] = {
            "ok": self.ok,
            "interim-100": self.interim,
            "interim-103": self.interim,
            "double-response": self.double_response,
            "double-response-late": self.double_response,
            "endless-headers": self.endless_headers,
            "gzip-bomb": self.bomb,
            "brotli-bomb": self.bomb,
            "zstd-bomb": self.bomb,
            "slow-drip": self.slow_drip,
            "early-close": self.early_close,
            "firehose": self.firehose,
            "trickle": self.trickle,
            "hold": self.hold,
        }

    # -- the connection loop -----------------------------------------------------------------------
    async def on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(next(self.numbers))
        counted_open = False
        try:
            while True:
                try:
                    req = await read_request(reader)
                except PeerClosed:
                    if conn.scenario:
                        self.stats.count(conn.scenario, "peer_closed")
                    return
                if req is None:  # a malformed request
                    return
                if req.path.startswith("/_hostile/"):
                    await self.control(req, writer)
                    continue
                scenario = req.model if req.model in self.handlers else "ok"
                if not conn.scenario:
                    self.stats.count(scenario, "connections")
                    self.stats.open += 1
                    counted_open = True
                conn.scenario = scenario
                self.stats.count(scenario, "requests")
                self.stats.requests_log.append({"conn": conn.number, "model": req.model, "nonce": req.text})
                try:
                    keep_alive = await self.handlers[scenario](req, reader, writer)
                except (ConnectionError, PeerClosed):
                    self.stats.count(scenario, "peer_closed")
                    return
                if not keep_alive:
                    return
        finally:
            if counted_open:
                self.stats.open -= 1
            writer.close()

    async def control(self, req: Request, writer: asyncio.StreamWriter) -> None:
        if req.path == "/_hostile/stats":
            body = self.stats.to_json()
        elif req.path == "/_hostile/reset" and req.method == "POST":
            self.stats = Stats(open=self.stats.open)
            body = b"{}"
        else:
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        writer.write(head(200, "application/json", len(body)) + body)
        await writer.drain()

    # -- scenarios: each returns whether the connection stays open for another request ----------
    async def ok(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer(req))
        await writer.drain()
        return True

    async def interim(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(_INTERIM[req.model])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(answer(req))
        await writer.drain()
        return True

    async def double_response(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        first, second = answer(req), answer(req, "extra answer for")
        if req.model == "double-response":
            writer.write(first + second)
        else:
            writer.write(first)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(second)
            self.stats.count(req.model, "late_sent")
        await writer.drain()
        return True

    async def endless_headers(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        block = b"".join(b"x-hostile-%05d: %s\r\n" % (i, b"h" * 100) for i in range(600))  # 70 KB
        rate = req.param("rate", 32 << 20)
        loop = asyncio.get_running_loop()
        started, sent = loop.time(), 0
        while True:
            writer.write(block)
            sent += len(block)
            await writer.drain()
            if writer.is_closing():
                raise PeerClosed
            ahead = sent / rate - (loop.time() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def bomb(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        encoding = _ENCODING[req.model]
        body = await self.bomb_body(encoding, req.param("size", GIB))
        ctype = "text/event-stream" if req.stream else "application/json"
        writer.write(head(200, ctype, len(body), f"content-encoding: {encoding}\r\n") + body)
        await writer.drain()
        return True

    async def slow_drip(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        whole = answer(req)
        end = whole.index(b"\r\n\r\n") + 4
        for i in range(end):
            writer.write(whole[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.1)
            if writer.is_closing() or reader.at_eof():
                raise PeerClosed
        writer.write(whole[end:])
        await writer.drain()
        return True

    async def early_close(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        text = f"answer to {req.text} ".encode()
        partial = (b'{"id":"chatcmpl-hostile","choices":[{"message":{"content":"' + text).ljust(500, b"z")[:500]
        writer.write(head(200, "application/json", 1000) + partial)
        await writer.drain()
        return False

    async def firehose(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        size = req.param("size", 64 << 20)
        writer.write(head(200, "text/event-stream", None))
        writer.write(chunked(first_chunk(req)))
        block = chunked(content_events(req.model, 64 * 1024))
        sent = 0
        while sent < size:
            writer.write(block)
            sent += len(block)
            await writer.drain()
            if writer.is_closing():
                raise PeerClosed
        writer.write(chunked(last_chunks(req)) + b"0\r\n\r\n")
        await writer.drain()
        return True

    async def trickle(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        count, every = req.param("count", 20), req.param("every", 500)
        writer.write(head(200, "text/event-stream", None) + chunked(first_chunk(req)))
        await writer.drain()
        event = chunked(content_events(req.model, 1))
        for _ in range(count):
            await asyncio.sleep(every / 1000)
            if writer.is_closing() or reader.at_eof():
                raise PeerClosed
            writer.write(event)
            await writer.drain()
        writer.write(chunked(last_chunks(req)) + b"0\r\n\r\n")
        await writer.drain()
        return True

    async def hold(self, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        raise PeerClosed

    # -- compression bombs -----------------------------------------------------------------------
    async def bomb_body(self, encoding: str, size: int) -> bytes:
        key = (encoding, size)
        if key not in self.bombs:
            loop = asyncio.get_running_loop()
            self.bombs[key] = loop.run_in_executor(None, self.load_or_build_bomb, encoding, size)
        return await self.bombs[key]

    def load_or_build_bomb(self, encoding: str, size: int) -> bytes:
        path = self.cache_dir / f"bomb-{size}.{encoding}" if self.cache_dir is not None else None
        if path is not None and path.exists():
            return path.read_bytes()
        body = build_bomb(encoding, size)
        if path is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(body)
            tmp.replace(path)
        return body


def build_bomb(encoding: str, size: int) -> bytes:
    """`size` zero bytes, compressed as `encoding`, built a MiB at a time."""
    zeros = bytes(1 << 20)
    if encoding == "gzip":
        gz = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        parts = [gz.compress(zeros) for _ in range(size >> 20)]
        parts.append(gz.flush())
    elif encoding == "br":
        import brotli

        br = brotli.Compressor(quality=5)
        parts = [br.process(zeros) for _ in range(size >> 20)]
        parts.append(br.finish())
    else:
        import zstandard

        zs = zstandard.ZstdCompressor(level=3).compressobj()
        parts = [zs.compress(zeros) for _ in range(size >> 20)]
        parts.append(zs.flush())
    return b"".join(parts)


# -- the wire format ---------------------------------------------------------------------------------
async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request; `PeerClosed` at EOF or reset, `None` if it is not HTTP."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        raise PeerClosed from None
    except asyncio.LimitOverrunError:
        return None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    try:
        body = await reader.readexactly(length) if length else b""
    except (asyncio.IncompleteReadError, ConnectionError):
        raise PeerClosed from None
    req = Request(parts[0], parts[1], body)
    if req.method == "POST" and not req.path.startswith("/_hostile/"):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = {}
        if isinstance(parsed, dict):
            req.model = str(parsed.get("model", ""))
            req.stream = parsed.get("stream") is True
            req.text = last_user_text(parsed.get("messages"))
    return req


def last_user_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def head(status: int, ctype: str, length: int | None, extra: str = "") -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    reason = {200: "OK"}.get(status, "Status")
    return f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n{framing}\r\n{extra}\r\n".encode()


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-hostile",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}


def first_chunk(req: Request, prefix: str = "answer to") -> bytes:
    return sse(_chunk(req.model, {"role": "assistant", "content": f"{prefix} {req.text}"}))


def content_events(model: str, size: int) -> bytes:
    """Content chunks of about 1 KB each, at least `size` bytes of them (one at least)."""
    event = sse(_chunk(model, {"content": " firehose" * 110}))
    return event * max(1, -(-size // len(event)))


def last_chunks(req: Request) -> bytes:
    finish = sse(_chunk(req.model, {}, "stop"))
    usage = sse({**_chunk(req.model, {}), "choices": [], "usage": _USAGE})
    return finish + usage + b"data: [DONE]\n\n"


def answer(req: Request, prefix: str = "answer to") -> bytes:
    """A complete, correct response to `req` (streamed if it asked for a stream)."""
    if req.stream:
        events = first_chunk(req, prefix) + last_chunks(req)
        return head(200, "text/event-stream", None) + chunked(events) + b"0\r\n\r\n"
    body = json.dumps(
        {
            "id": "chatcmpl-hostile",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"{prefix} {req.text}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE,
        }
    ).encode()
    return head(200, "application/json", len(body)) + body


async def serve(port: int, cache_dir: Path | None) -> None:
    upstream = Upstream(cache_dir)
    # The default bombs are ready before the first request (building the gzip one takes seconds).
    await asyncio.gather(*(upstream.bomb_body(encoding, GIB) for encoding in _ENCODING.values()))
    server = await asyncio.start_server(upstream.on_connect, "127.0.0.1", port, backlog=4096, limit=1 << 20)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cache-dir", type=Path, help="where compression bombs are kept between runs")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.cache_dir))


if __name__ == "__main__":
    main()
