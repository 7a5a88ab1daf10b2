"""The upstream HTTP client: pooled keep-alive HTTP/1.1 connections, timeouts, header hygiene.

Why not aiohttp: on the gateway's hot path the client was most of the per-request CPU. Against
the same mock upstream in one run (`benches/upstream_client.py`), this asyncio protocol driving
llhttp (through `httptools`) spent half of aiohttp's CPU per request (36 vs 74 us) and two thirds
of its latency for one request; through the whole gateway (`make bench`) throughput rose from
5.7k to 8.1k requests/s. The gateway needs only a small part of a general client: POST to a
known origin, HTTP/1.1 with keep-alive, TLS, bodies by length, chunked or to EOF, gzip, and
streamed reads with back-pressure. That part is here; parsing is llhttp's. Not supported (yet):
HTTP proxies (`HTTPS_PROXY` is ignored) and HTTP/2.

Timeouts (see `tollway.config.schema.Timeouts`):

- `connect`: the TCP connect and TLS handshake;
- `first_byte`: from sending the request to receiving the status line and headers;
- `idle`: the longest wait for the next chunk of a body;
- `total`: a deadline for the whole attempt, headers and body.

Every failure is raised as `UpstreamError` carrying a `Failure` whose `kind` the server maps to
a status code; socket and parser exceptions never escape this module.

Connection reuse: a connection goes back to the pool only when its response was read to the
end and both sides allow keep-alive. A pooled connection the server closed while idle is
noticed before use (`connection_lost` marks it). If a reused connection fails before any byte
of the response arrives, the request is sent once more on a fresh connection: the server closed
it without reading the request (the race every keep-alive client has), so nothing was processed.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
import zlib
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

from tollway.config.schema import Timeouts
from tollway.errors import UpstreamError

# RFC 9110 section 7.6.1: connection-specific headers never cross a proxy, in either direction.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Request headers a client sends that never go upstream: the gateway's own credentials and
# headers the upstream client sets itself.
_NOT_FORWARDED = HOP_BY_HOP | {
    "authorization",
    "x-api-key",
    "api-key",
    "host",
    "content-length",
    "content-type",
    "accept-encoding",
    "cookie",
    "x-request-id",
}

# A streamed body buffered past this many bytes pauses reading from the socket until the
# consumer (the client of the gateway) catches up.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18
# Pooled connections idle longer than this are closed rather than reused: many servers close
# idle keep-alive connections after 5 to 60 seconds.
_POOL_IDLE_SECONDS = 30.0


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Client request headers that may be passed upstream.

    Drops hop-by-hop headers, every header named in `Connection`, the caller's credentials,
    and headers the upstream client computes itself.
    """
    items = [(k.lower(), v) for k, v in headers]
    dropped = set(_NOT_FORWARDED)
    for k, v in items:
        if k == "connection":
            dropped.update(token.strip().lower() for token in v.split(","))
    return {k: v for k, v in items if k not in dropped}


class FailureKind(enum.Enum):
    """How an upstream attempt failed. The server turns each into a status code."""

    UNREACHABLE = "unreachable"  # connect refused, DNS, TLS, connection reset before a response
    TIMEOUT = "timeout"  # first byte, idle or total timeout
    SERVER_ERROR = "server_error"  # upstream answered 5xx
    RATE_LIMITED = "rate_limited"  # upstream answered 429
    CREDENTIALS = "credentials"  # upstream answered 401/403: the gateway's provider key is wrong
    CLIENT_ERROR = "client_error"  # upstream answered another 4xx: the request itself is wrong
    BAD_RESPONSE = "bad_response"  # upstream answered something that is not its protocol
    BROKEN_STREAM = "broken_stream"  # the body ended or failed part-way
    CONTEXT_LENGTH = "context_length"  # upstream said the request exceeds the model's context window


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    provider: str
    message: str
    upstream_status: int | None = None
    retry_after: str | None = None
    # The provider's own error message, when it sent one we could read.
    upstream_message: str | None = None


def upstream_failure(failure: Failure) -> UpstreamError:
    exc = UpstreamError(failure.message)
    exc.failure = failure  # type: ignore[attr-defined]
    return exc


def failure_of(exc: UpstreamError) -> Failure:
    failure: Failure = exc.failure  # type: ignore[attr-defined]
    return failure


class _ConnectionBroken(Exception):
    """The connection failed. `before_response`: no response byte had arrived; `protocol`:
    the peer sent something that is not HTTP."""

    def __init__(self, reason: str, before_response: bool, protocol: bool = False) -> None:
        super().__init__(reason)
        self.before_response = before_response
        self.protocol = protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL resolved once at startup: where to connect and the request's fixed bytes."""

    origin: tuple[str, int, bool]  # host, port, tls
    host_header: str
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got `{url}`")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        default_port = port == (443 if tls else 80)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls((parts.hostname, port, tls), host if default_port else f"{host}:{port}", path)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; carries one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = True  # counted in its pool's `open` until discarded
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.header_list: list[tuple[str, str]] = []
        self.headers_done = False
        self.got_bytes = False
        self.complete = False
        self.keep_alive = False
        self.error: _ConnectionBroken | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.length_known = False

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"invalid HTTP response: {exc}", before_response=False, protocol=True)
            self.close()
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete:
            return
        if self.headers_done and not self.length_known and exc is None:
            # No Content-Length and not chunked: the body ends where the connection does.
            self.on_message_complete()
            return
        reason = "connection closed by the provider" if exc is None else _why(exc)
        self._fail(reason, before_response=not self.got_bytes)

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        for name, value in self.header_list:
            if name == "content-length" or (name == "transfer-encoding" and "chunked" in value.lower()):
                self.length_known = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- exchange ----------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, reason: str, before_response: bool, protocol: bool = False) -> None:
        if self.error is None:
            self.error = _ConnectionBroken(reason, before_response, protocol)
        self._wake()

    async def wait(self) -> None:
        """Wait for the next parser event (headers, a chunk, the end, or a failure)."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def take_chunk(self) -> bytes:
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Pool:
    """Idle connections to one origin, and a cap on how many may be open at once."""

    def __init__(self, origin: tuple[str, int, bool], limit: int, ssl_context: ssl.SSLContext | None) -> None:
        self.origin = origin
        self.limit = limit
        self.ssl_context = ssl_context
        self.idle: deque[_Connection] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, connect_timeout: float) -> tuple[_Connection, bool]:
        """A connection and whether it was reused from the pool."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self.idle:
                conn = self.idle.pop()  # most recently used first: the likeliest to be alive
                if not conn.closed and now - conn.idle_since < _POOL_IDLE_SECONDS:
                    return conn, True
                self.discard(conn)
            if self.open < self.limit:
                break
            waiter = loop.create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
        self.open += 1
        try:
            host, port, tls = self.origin
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=self.ssl_context if tls else None,
                    server_hostname=host if tls else None,
                )
        except BaseException:
            self.open -= 1
            self._notify()
            raise
        return conn, False

    def release(self, conn: _Connection) -> None:
        """Return a connection after an exchange: pooled if reusable, else closed."""
        if conn.closed or not conn.complete or not conn.keep_alive or conn.error is not None:
            self.discard(conn)
            return
        conn._reset()
        conn.idle_since = asyncio.get_running_loop().time()
        self.idle.append(conn)
        self._notify()

    def discard(self, conn: _Connection) -> None:
        if not conn.closed:
            conn.close()
        if conn.counted:
            conn.counted = False
            self.open -= 1
        self._notify()

    def _notify(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self.idle:
            self.discard(self.idle.pop())


class UpstreamResponse:
    """A response whose headers have arrived; read the body with `read` or `chunks`."""

    __slots__ = ("_conn", "_decoder", "_done", "_pool", "_provider", "headers", "status")

    def __init__(self, provider: str, conn: _Connection, pool: _Pool) -> None:
        self._provider = provider
        self._conn = conn
        self._pool = pool
        self._done = False
        self.status = conn.status
        headers: dict[str, str] = {}
        for name, value in conn.header_list:
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding == "identity":
            self._decoder = None
        else:
            self.close()
            raise upstream_failure(
                Failure(
                    FailureKind.BAD_RESPONSE,
                    provider,
                    f"provider `{provider}` sent a body encoded as `{encoding}`, which the gateway does not decode",
                )
            )

    async def _next(self, wait_until: float | None) -> bytes:
        conn = self._conn
        while True:
            if conn.chunks:
                chunk = conn.take_chunk()
                return self._decoder.decompress(chunk) if self._decoder is not None else chunk
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            if wait_until is None:
                await conn.wait()
            else:
                async with asyncio.timeout_at(wait_until):
                    await conn.wait()

    async def read(self, deadline: float, limit: int = 64 * 1024 * 1024) -> bytes:
        """The whole body, before the deadline."""
        provider = self._provider
        parts: list[bytes] = []
        size = 0
        try:
            while chunk := await self._next(deadline):
                size += len(chunk)
                if size > limit:
                    raise upstream_failure(
                        Failure(
                            FailureKind.BAD_RESPONSE, provider, f"provider `{provider}` sent a body over {limit} bytes"
                        )
                    )
                parts.append(chunk)
        except TimeoutError:
            raise upstream_failure(
                Failure(FailureKind.TIMEOUT, provider, f"provider `{provider}` did not finish its response in time")
            ) from None
        except _ConnectionBroken as exc:
            raise _body_failure(provider, exc) from None
        except zlib.error:
            raise upstream_failure(
                Failure(FailureKind.BAD_RESPONSE, provider, f"provider `{provider}` sent a corrupt compressed body")
            ) from None
        finally:
            self.close()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self, timeouts: Timeouts, deadline: float) -> AsyncIterator[bytes]:
        """Body chunks as they arrive, enforcing the idle timeout and the deadline.

        The timeout covers only the wait for the next chunk, never the consumer's work between
        chunks (a timeout around a `yield` would cancel the consumer instead).
        """
        provider = self._provider
        loop = asyncio.get_running_loop()
        while True:
            idle_limit = loop.time() + timeouts.idle
            try:
                chunk = await self._next(min(idle_limit, deadline))
            except TimeoutError:
                if idle_limit < deadline:
                    message = f"provider `{provider}` sent nothing for {timeouts.idle:g}s (idle timeout)"
                else:
                    message = f"provider `{provider}` did not finish within {timeouts.total:g}s (total timeout)"
                raise upstream_failure(Failure(FailureKind.TIMEOUT, provider, message)) from None
            except _ConnectionBroken as exc:
                raise _body_failure(provider, exc) from None
            except zlib.error:
                raise upstream_failure(
                    Failure(
                        FailureKind.BAD_RESPONSE, provider, f"provider `{provider}` sent a corrupt compressed stream"
                    )
                ) from None
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        """Done with the response: the connection is pooled if it was read to the end, or
        closed (ending the upstream request) if not. Safe to call more than once."""
        if not self._done:
            self._done = True
            self._pool.release(self._conn)


class UpstreamClient:
    """A pooled HTTP/1.1 client for one worker's event loop."""

    def __init__(self, max_connections_per_host: int = 256) -> None:
        self._limit = max_connections_per_host
        self._pools: dict[tuple[str, int, bool], _Pool] = {}
        self._ssl: ssl.SSLContext | None = None

    def _pool(self, origin: tuple[str, int, bool]) -> _Pool:
        pool = self._pools.get(origin)
        if pool is None:
            if origin[2] and self._ssl is None:
                self._ssl = ssl.create_default_context()
                self._ssl.set_alpn_protocols(["http/1.1"])
            pool = self._pools[origin] = _Pool(origin, self._limit, self._ssl)
        return pool

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    async def post(
        self,
        provider: str,
        endpoint: Endpoint,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
    ) -> tuple[UpstreamResponse, float]:
        """Send a POST and wait for the status line and headers.

        Returns the response and the attempt's deadline (event-loop time) for reading the body.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total
        head = _request_head(endpoint, headers, len(body))
        pool = self._pool(endpoint.origin)
        first_byte = min(timeouts.first_byte, timeouts.total)
        for attempt in (1, 2):
            try:
                conn, reused = await pool.acquire(timeouts.connect)
            except TimeoutError:
                raise upstream_failure(
                    Failure(
                        FailureKind.UNREACHABLE,
                        provider,
                        f"could not connect to provider `{provider}` within {timeouts.connect:g}s",
                    )
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise upstream_failure(
                    Failure(FailureKind.UNREACHABLE, provider, f"could not reach provider `{provider}`: {_why(exc)}")
                ) from None
            try:
                assert conn.transport is not None
                conn.transport.write(head + body if len(body) < 65536 else head)
                if len(body) >= 65536:
                    conn.transport.write(body)
                async with asyncio.timeout(first_byte):
                    while not conn.headers_done:
                        if conn.error is not None:
                            raise conn.error
                        await conn.wait()
            except TimeoutError:
                pool.discard(conn)
                raise upstream_failure(
                    Failure(
                        FailureKind.TIMEOUT,
                        provider,
                        f"provider `{provider}` sent no response within {first_byte:g}s (first-byte timeout)",
                    )
                ) from None
            except _ConnectionBroken as exc:
                pool.discard(conn)
                if reused and exc.before_response and attempt == 1:
                    continue  # the server closed an idle connection as we sent: once more, fresh
                if exc.protocol:
                    kind, what = FailureKind.BAD_RESPONSE, "answered with"
                elif exc.before_response:
                    kind, what = FailureKind.UNREACHABLE, "closed the connection before answering:"
                else:
                    kind, what = FailureKind.BROKEN_STREAM, "broke off its response:"
                raise upstream_failure(Failure(kind, provider, f"provider `{provider}` {what} {exc}")) from None
            except BaseException:
                pool.discard(conn)
                raise
            return UpstreamResponse(provider, conn, pool), deadline
        raise AssertionError("unreachable")


def _request_head(endpoint: Endpoint, headers: Mapping[str, str], length: int) -> bytes:
    lines = [f"POST {endpoint.path} HTTP/1.1\r\nhost: {endpoint.host_header}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"accept-encoding: identity\r\ncontent-length: {length}\r\n\r\n")
    return "".join(lines).encode("latin-1", "replace")


def _body_failure(provider: str, exc: _ConnectionBroken) -> UpstreamError:
    if exc.protocol:
        return upstream_failure(Failure(FailureKind.BAD_RESPONSE, provider, f"provider `{provider}` sent {exc}"))
    return upstream_failure(
        Failure(FailureKind.BROKEN_STREAM, provider, f"provider `{provider}` broke off its response: {exc}")
    )


def _why(exc: BaseException) -> str:
    """A short reason for a network failure; never includes headers or bodies."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
