"""The upstream HTTP client against raw TCP servers that answer exactly as each test needs:
keep-alive reuse, stale pooled connections, chunked and EOF-delimited bodies, compression,
connection limits, bodies broken off, and garbage."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import pytest

from tollway.config.schema import Timeouts
from tollway.errors import UpstreamError
from tollway.upstream import Endpoint, FailureKind, UpstreamClient, failure_of, forwardable_headers

TIMEOUTS = Timeouts(connect=2, first_byte=2, idle=1, total=5)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, int]], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n" % (len(body), extra) + body


def run(
    handler: Handler, scenario: Callable[[UpstreamClient, Endpoint, dict[str, int]], Awaitable[None]], limit: int = 16
) -> dict[str, int]:
    """Serve `handler` on a free port, run `scenario` with a client, return the server's stats."""
    stats = {"connections": 0, "open": 0, "max_open": 0, "requests": 0}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        try:
            await handler(reader, writer, stats)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            stats["open"] -= 1
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = UpstreamClient(max_connections_per_host=limit)
        try:
            await scenario(client, Endpoint.parse(f"http://127.0.0.1:{port}/v1/chat?x=1"), stats)
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    return stats


async def post(client: UpstreamClient, endpoint: Endpoint, body: bytes = b"{}") -> tuple[int, bytes]:
    resp, deadline = await client.post("p", endpoint, body, {"content-type": "application/json"}, TIMEOUTS)
    return resp.status, await resp.read(deadline)


async def keep_alive_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
    while True:
        head, body = await read_request(reader)
        stats["requests"] += 1
        writer.write(ok(b"echo:" + body + b"|" + head.split(b"\r\n")[0]))
        await writer.drain()


def test_keep_alive_connections_are_reused() -> None:
    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        for i in range(5):
            status, body = await post(client, endpoint, b"%d" % i)
            assert status == 200
            assert body == b"echo:%d|POST /v1/chat?x=1 HTTP/1.1" % i

    stats = run(keep_alive_server, scenario)
    assert stats["requests"] == 5 and stats["connections"] == 1


def test_large_request_body_and_request_head() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        head, body = await read_request(reader)
        writer.write(ok(head + b"#%d" % len(body)))

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        _, body = await post(client, endpoint, b"x" * 200_000)
        head, _, length = body.rpartition(b"#")
        assert length == b"200000"
        lines = head.lower().split(b"\r\n")
        assert lines[1] == b"host: 127.0.0.1:%d" % endpoint.origin[1]
        assert b"accept-encoding: identity" in lines and b"content-type: application/json" in lines

    run(handler, scenario)


def test_stale_pooled_connection_is_replaced_transparently() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        # Answers one request with keep-alive, then closes, as a server whose idle timeout hit.
        await read_request(reader)
        stats["requests"] += 1
        writer.write(ok(b"done"))
        await writer.drain()

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"done")
        await until(lambda: stats["open"] == 0)  # the server has closed the pooled connection
        assert await post(client, endpoint) == (200, b"done")
        assert await post(client, endpoint) == (200, b"done")

    stats = run(handler, scenario)
    assert stats["requests"] == 3 and stats["connections"] == 3


def test_reused_connection_closed_before_answering_is_retried_once() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        # The first request on a connection is answered; a second one on the same connection
        # is read and dropped unanswered, as a server that closes an idle connection does.
        await read_request(reader)
        stats["requests"] += 1
        writer.write(ok(b"first"))
        await writer.drain()
        await read_request(reader)

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"first")
        assert await post(client, endpoint) == (200, b"first")  # dropped on the old, answered on a new one

    stats = run(handler, scenario)
    assert stats["connections"] == 2 and stats["requests"] == 2


def test_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        stats["requests"] += 1

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        with pytest.raises(UpstreamError) as info:
            await post(client, endpoint)
        assert failure_of(info.value).kind is FailureKind.UNREACHABLE

    stats = run(handler, scenario)
    assert stats["requests"] == 1


def test_chunked_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await read_request(reader)
        writer.write(ok(b"again"))

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"hello world")
        assert await post(client, endpoint) == (200, b"again")

    assert run(handler, scenario)["connections"] == 1


def test_body_delimited_by_connection_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"until the end")
        assert await post(client, endpoint) == (200, b"until the end")

    assert run(handler, scenario)["connections"] == 2


def test_gzip_body_is_decoded_and_unknown_encoding_rejected() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(ok(gzip.compress(b'{"ok": true}'), b"content-encoding: gzip\r\n"))
        await read_request(reader)
        writer.write(ok(b"???", b"content-encoding: br\r\n"))

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b'{"ok": true}')
        with pytest.raises(UpstreamError) as info:
            await post(client, endpoint)
        assert failure_of(info.value).kind is FailureKind.BAD_RESPONSE
        assert "`br`" in str(info.value)

    run(handler, scenario)


def test_connection_limit_queues_requests() -> None:
    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        results = await asyncio.gather(*[post(client, endpoint, b"%d" % i) for i in range(20)])
        assert sorted(body for _, body in results) == sorted(
            b"echo:%d|POST /v1/chat?x=1 HTTP/1.1" % i for i in range(20)
        )

    stats = run(keep_alive_server, scenario, limit=2)
    assert stats["max_open"] <= 2 and stats["requests"] == 20


def test_body_broken_off_is_broken_stream() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..")
        await writer.drain()

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        with pytest.raises(UpstreamError) as info:
            await post(client, endpoint)
        assert failure_of(info.value).kind is FailureKind.BROKEN_STREAM

    run(handler, scenario)


def test_garbage_is_bad_response_and_silence_is_a_timeout() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    async def expect(kind: FailureKind, client: UpstreamClient, endpoint: Endpoint) -> None:
        with pytest.raises(UpstreamError) as info:
            await post(client, endpoint)
        assert failure_of(info.value).kind is kind, info.value

    run(garbage, lambda c, e, s: expect(FailureKind.BAD_RESPONSE, c, e))

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    run(silent, lambda c, e, s: expect(FailureKind.TIMEOUT, c, e))


def test_streamed_body_survives_slow_consumer() -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB, past the pause threshold

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(ok(payload))
        await writer.drain()

    async def scenario(client: UpstreamClient, endpoint: Endpoint, stats: dict[str, int]) -> None:
        resp, deadline = await client.post("p", endpoint, b"{}", {}, TIMEOUTS)
        received = bytearray()
        async for chunk in resp.chunks(TIMEOUTS, deadline):
            received += chunk
            await asyncio.sleep(0)  # the consumer yields between chunks, as a client write does
        resp.close()
        assert bytes(received) == payload

    run(handler, scenario)


def test_refused_connection_is_unreachable() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = UpstreamClient()
        with pytest.raises(UpstreamError) as info:
            await post(client, Endpoint.parse(f"http://127.0.0.1:{port}/"))
        assert failure_of(info.value).kind is FailureKind.UNREACHABLE
        await client.close()

    asyncio.run(main())


def test_endpoint_parsing() -> None:
    assert Endpoint.parse("https://api.openai.com/v1/chat/completions") == Endpoint(
        ("api.openai.com", 443, True), "api.openai.com", "/v1/chat/completions"
    )
    assert Endpoint.parse("http://[::1]:8000/v1").host_header == "[::1]:8000"
    with pytest.raises(ValueError):
        Endpoint.parse("ftp://x/")


def test_forwardable_headers_drop_credentials_and_hop_by_hop() -> None:
    kept = forwardable_headers(
        [
            ("Authorization", "Bearer k"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("TE", "trailers"),
            ("OpenAI-Beta", "assistants=v2"),
            ("Content-Length", "3"),
        ]
    )
    assert kept == {"openai-beta": "assistants=v2"}
