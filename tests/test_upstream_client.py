"""The upstream client (the native transport seen through `tollway.upstream`) against raw TCP
servers that answer exactly as each test needs: keep-alive reuse, stale pooled connections,
chunked and EOF-delimited bodies, compression, connection limits, bodies broken off, garbage."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable

import pytest

from tollway._native import Endpoint
from tollway.config.schema import ProviderConfig, Timeouts, UpstreamLimits
from tollway.errors import ConfigError, UpstreamError
from tollway.upstream import Egress, FailureKind, Framing, UpstreamClient, failure_of, forwardable_headers

TIMEOUTS = Timeouts(connect=2, first_byte=2, idle=1, total=5)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, int]], Awaitable[None]]
PROVIDER = ProviderConfig(name="p", kind="openai", base_url="http://127.0.0.1:1/v1")


def egress(client: UpstreamClient, limits: UpstreamLimits | None = None) -> Egress:
    return client.egress(PROVIDER, TIMEOUTS, limits or UpstreamLimits(), None)


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
    handler: Handler, scenario: Callable[[Egress, Endpoint, dict[str, int]], Awaitable[None]], limit: int = 16
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
        out = egress(client)
        try:
            await scenario(out, out.endpoint(f"http://127.0.0.1:{port}/v1/chat?x=1"), stats)
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    return stats


async def post(client: Egress, endpoint: Endpoint, body: bytes = b"{}") -> tuple[int, bytes]:
    resp = await client.post("p", endpoint, body, {"content-type": "application/json"}, TIMEOUTS)
    return resp.status, resp.payload


async def keep_alive_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
    while True:
        head, body = await read_request(reader)
        stats["requests"] += 1
        writer.write(ok(b"echo:" + body + b"|" + head.split(b"\r\n")[0]))
        await writer.drain()


def test_keep_alive_connections_are_reused() -> None:
    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
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

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        _, body = await post(client, endpoint, b"x" * 200_000)
        head, _, length = body.rpartition(b"#")
        assert length == b"200000"
        lines = head.lower().split(b"\r\n")
        assert b"host: 127.0.0.1:%d" % int(endpoint.url.split(":")[2].split("/")[0]) in lines
        assert b"accept-encoding: identity" in lines and b"content-type: application/json" in lines

    run(handler, scenario)


def test_stale_pooled_connection_is_replaced_transparently() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        # Answers one request with keep-alive, then closes, as a server whose idle timeout hit.
        await read_request(reader)
        stats["requests"] += 1
        writer.write(ok(b"done"))
        await writer.drain()

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"done")
        await until(lambda: stats["open"] == 0)  # the server has closed the pooled connection
        assert await post(client, endpoint) == (200, b"done")
        assert await post(client, endpoint) == (200, b"done")

    stats = run(handler, scenario)
    assert stats["requests"] == 3 and stats["connections"] == 3


def test_a_request_read_and_dropped_on_a_reused_connection_is_not_sent_again() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        # The first request on a connection is answered; a second one on the same connection
        # is read and dropped unanswered. The server may have started on it (a model generating
        # for nobody): it is never sent twice, the attempt fails and routing decides what next.
        await read_request(reader)
        stats["requests"] += 1
        writer.write(ok(b"first"))
        await writer.drain()
        await read_request(reader)
        stats["requests"] += 1

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"first")
        with pytest.raises(UpstreamError) as info:
            await post(client, endpoint)
        assert failure_of(info.value).kind is FailureKind.UNREACHABLE

    stats = run(handler, scenario)
    assert stats["connections"] == 1 and stats["requests"] == 2


def test_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        stats["requests"] += 1

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
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

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"hello world")
        assert await post(client, endpoint) == (200, b"again")

    assert run(handler, scenario)["connections"] == 1


def test_body_delimited_by_connection_close() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        assert await post(client, endpoint) == (200, b"until the end")
        assert await post(client, endpoint) == (200, b"until the end")

    assert run(handler, scenario)["connections"] == 2


def test_compressed_bodies_are_decoded_and_corrupt_or_unknown_ones_rejected() -> None:
    import brotli
    import zstandard

    answers = [
        ok(gzip.compress(b'{"ok": "gzip"}'), b"content-encoding: gzip\r\n"),
        ok(brotli.compress(b'{"ok": "br"}'), b"content-encoding: br\r\n"),
        ok(zstandard.ZstdCompressor().compress(b'{"ok": "zstd"}'), b"content-encoding: zstd\r\n"),
        ok(b"???", b"content-encoding: br\r\n"),
        ok(b"???", b"content-encoding: compress\r\n"),
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        for answer in answers:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        for name in ("gzip", "br", "zstd"):
            assert await post(client, endpoint) == (200, b'{"ok": "%s"}' % name.encode())
        for expected in ("corrupt `br`", "`compress`"):
            with pytest.raises(UpstreamError) as info:
                await post(client, endpoint)
            assert failure_of(info.value).kind is FailureKind.BAD_RESPONSE
            assert expected in str(info.value), info.value

    run(handler, scenario)


def test_a_decompression_bomb_is_a_bad_response() -> None:
    bomb = gzip.compress(bytes(256 << 20), 9)  # 256 MiB of zeros in about 250 KB

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(ok(bomb, b"content-encoding: gzip\r\n"))
        await writer.drain()

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        with pytest.raises(UpstreamError) as info:
            await post(client, endpoint)
        assert failure_of(info.value).kind is FailureKind.BAD_RESPONSE
        assert "expanding more than 100x" in str(info.value)

    run(handler, scenario)


def test_connection_limit_queues_requests() -> None:
    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
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

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        with pytest.raises(UpstreamError) as info:
            await post(client, endpoint)
        assert failure_of(info.value).kind is FailureKind.BROKEN_STREAM

    run(handler, scenario)


def test_garbage_is_bad_response_and_silence_is_a_timeout() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, int]) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()

    async def expect(kind: FailureKind, client: Egress, endpoint: Endpoint) -> None:
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

    async def scenario(client: Egress, endpoint: Endpoint, stats: dict[str, int]) -> None:
        resp = await client.stream("p", endpoint, b"{}", {}, TIMEOUTS, Framing.BYTES)
        received = bytearray()
        async for chunk in client.batches("p", resp.body):  # type: ignore[arg-type]
            received += chunk
            await asyncio.sleep(0.001)  # a slow consumer: reading pauses while its queue is full
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
        out = egress(client)
        with pytest.raises(UpstreamError) as info:
            await post(out, out.endpoint(f"http://127.0.0.1:{port}/"))
        assert failure_of(info.value).kind is FailureKind.UNREACHABLE
        assert "refused" in str(info.value).lower(), info.value
        await client.close()

    asyncio.run(main())


def test_endpoint_urls_are_checked_once() -> None:
    async def main() -> None:
        out = egress(UpstreamClient())
        assert out.endpoint("https://api.openai.com/v1/chat/completions").url.endswith("/chat/completions")
        assert out.endpoint("http://[::1]:8000/v1").url == "http://[::1]:8000/v1"
        for bad in ("ftp://x/", "not a url", "https://user:pw@host/v1"):
            with pytest.raises(ConfigError):
                out.endpoint(bad)

    asyncio.run(main())


def test_forwardable_headers_drop_credentials_and_hop_by_hop() -> None:
    kept = forwardable_headers(
        [
            ("Authorization", "Bearer k"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("TE", "trailers"),
            ("OpenAI-Beta", "assistants=v2"),
            ("Content-Length", "3"),
            # The gateway sends whole bodies, and routing headers are the gateway's to set.
            ("Expect", "100-continue"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Forwarded-Host", "internal.example"),
            ("Forwarded", "for=10.0.0.1"),
            ("X-Original-URL", "/admin"),
            ("X-Tollway-Target", "p/m"),
        ]
    )
    assert kept == {"openai-beta": "assistants=v2"}
