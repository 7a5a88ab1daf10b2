"""A minimal Redis client for the request path: one pipelined connection, RESP2, hiredis.

The Redis backend sends two commands per request (`EVALSHA` to admit, `EVALSHA` to settle).
redis-py's asyncio client spends most of its time per command on things this path does not
need (a connection pool with locks, per-argument type dispatch when encoding); this client
writes pre-encoded arguments on a single connection and matches replies to callers in order
(Redis answers a connection's commands in the order it received them), so concurrent requests
share the connection, pipelined. Commands issued in the same event-loop iteration leave in one
write (a system call is a large part of a round trip's cost), and their replies mostly arrive
in one read.

Failure handling is the caller's circuit breaker's business; this client only guarantees that
nothing waits forever: `execute` takes a timeout (connecting included), and a timeout drops the
connection (a server that does not answer in time, or a dead peer, must not keep later commands
queued behind it), failing every command in flight on it; the next `execute` reconnects.

Used for a single Redis (a primary, or a replica set behind one address). Redis Cluster uses
redis-py's cluster client, which follows the slot map.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis


class RespError(Exception):
    """An error reply (`-ERR ...`), or a connection that failed or timed out."""


class NoScript(RespError):
    """`NOSCRIPT`: the server does not know the script (restarted, flushed, failed over)."""


class Unavailable(RespError, ConnectionError):
    """No answer: connecting failed, the connection was lost, or the timeout passed."""


def pack(args: Sequence[bytes]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.WriteTransport | None = None
        self.closed = False
        self._outgoing: list[bytes] = []

    def send(self, command: bytes, future: asyncio.Future[Any]) -> None:
        """Queue a command; the queue is written at the end of this event-loop iteration."""
        if not self._outgoing:
            future.get_loop().call_soon(self._write)
        self._outgoing.append(command)
        self.waiting.append(future)

    def _write(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's, only alike.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.abort()
                return
            future = self.waiting.popleft()
            if not future.done():  # a caller that gave up has a cancelled future
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = Unavailable(f"connection to Redis lost: {exc}" if exc else "connection to Redis closed")
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class RespClient:
    """`redis://[user@]host[:port][/db]`, `rediss://...` (TLS) or `unix:///path[?db=N]`."""

    def __init__(self, url: str, password: str | None = None, tls: bool = False) -> None:
        parts = urlsplit(url)
        self._unix = parts.scheme == "unix"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._path = parts.path
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if tls or parts.scheme == "rediss" else None
        if self._unix:
            db = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", "0")
        else:
            db = parts.path.strip("/") or "0"
        self._setup: list[bytes] = []
        if password is not None:
            user = unquote(parts.username) if parts.username else None
            auth = [b"AUTH", user.encode(), password.encode()] if user else [b"AUTH", password.encode()]
            self._setup.append(pack(auth))
        if db != "0":
            self._setup.append(pack([b"SELECT", db.encode()]))
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def execute(self, args: Sequence[bytes], timeout: float) -> Any:
        """Send one command and return its reply; raise `NoScript`, `RespError` for another
        error reply, or `Unavailable` (then the connection is dropped)."""
        try:
            async with asyncio.timeout(timeout):
                protocol = self._protocol
                if protocol is None or protocol.closed:
                    protocol = await self._connect()
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                protocol.send(pack(args), future)
                reply = await future
        except TimeoutError:
            self.close()
            raise Unavailable(f"Redis did not answer within {timeout * 1000:.0f} ms") from None
        if isinstance(reply, hiredis.ReplyError):
            message = str(reply)
            raise NoScript(message) if message.startswith("NOSCRIPT") else RespError(message)
        return reply

    async def _connect(self) -> _Protocol:
        """One connection attempt at a time; concurrent callers wait for it."""
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = connecting = loop.create_future()
        try:
            protocol = _Protocol()
            try:
                if self._unix:
                    await loop.create_unix_connection(lambda: protocol, self._path, ssl=self._ssl)
                else:
                    await loop.create_connection(lambda: protocol, self._host, self._port, ssl=self._ssl)
            except OSError as exc:
                raise Unavailable(f"cannot connect to Redis: {exc}") from None
            replies = []
            for command in self._setup:
                future: asyncio.Future[Any] = loop.create_future()
                protocol.send(command, future)
                replies.append(future)
            for reply in await asyncio.gather(*replies):
                if isinstance(reply, hiredis.ReplyError):
                    protocol.abort()
                    raise RespError(f"Redis refused the connection setup: {reply}")
            self._protocol = protocol
            connecting.set_result(protocol)
            return protocol
        except BaseException as exc:
            connecting.set_exception(exc if isinstance(exc, Exception) else Unavailable("connecting was cancelled"))
            connecting.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._connecting = None

    def close(self) -> None:
        """Drop the connection (commands in flight fail); the next `execute` reconnects."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort()
