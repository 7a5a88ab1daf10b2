"""The client side of a streamed answer: `ClientStream` (the HTTP response, started on the first
send), `Pace` (keeping a slow client's backlog bounded) and `OutputGuard` (a truncating
budget's live count).

Backpressure. The stream pump reads from the provider only as fast as this side takes batches
(`tollway.upstream.Egress.batches`), and this side takes the next batch only once its last send
returned. But Granian's RSGI transport accepts every `send_bytes` at once (an unbounded queue in
front of the socket), so a client that reads slowly would make the worker hold everything the
provider sends. `Pace` measures what left: the kernel counts the bytes the server wrote to the
client's socket (`ClientSocket.state`: acknowledged plus still queued). Once a stream has handed
the server `PROBE` bytes more than it last saw leave, it checks; while more than the bound
(`[server] stream_buffer_bytes`, default 1 MiB) is still inside the process, it waits, polling
with a growing delay, so reading from the provider stops too. A client that takes nothing for
the provider's idle timeout while its backlog is full is treated as gone. Streams that never
reach `PROBE` bytes (most answers) cost nothing.

The estimate counts the HTTP/1.1 chunk framing Granian adds to each send; framing it cannot see
(HTTP/2 frames, TLS records) makes the socket's count grow faster, so the backlog is at worst
underestimated by that overhead, never overestimated. Should it drift the other way, a socket
with nothing left in its send queue and no progress proves the server holds nothing back, and
the estimate is reset to it. Where the socket cannot be found (not Linux, not TCP), streams go
unpaced and this is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tollway._native import ClientSocket
from tollway.providers.base import StreamMeter

log = logging.getLogger("tollway")


class ClientGone(Exception):
    """Writing to the client failed: it has disconnected, or stopped reading."""


class CapReached(Exception):
    """A truncating budget's output allowance is used up: the stream must end here."""


class OutputGuard:
    """Counts a stream's output as it is sent, for a budget with `on_exceed = "truncate"`."""

    __slots__ = ("cap", "meter", "policy")

    def __init__(self, cap: int, policy: str, meter: StreamMeter) -> None:
        self.cap = cap
        self.policy = policy
        self.meter = meter

    def check(self) -> None:
        if self.meter.count() >= self.cap:
            raise CapReached()


# The event that ends a complete stream in each client API, at the start of a line (an SSE
# payload cannot hold a raw line feed, so these bytes after one are that event and nothing else).
STREAM_ENDS = {
    "openai": (b"\ndata: [DONE]", b"\ndata:[DONE]"),
    "anthropic": (b"\nevent: message_stop", b"\nevent:message_stop"),
    "responses": (b"\nevent: response.completed", b"\nevent:response.completed"),
}


def _ends_stream(data: bytes, markers: tuple[bytes, ...]) -> bool:
    """Whether `data` (whole SSE events) carries the stream's end event. It is the last event,
    so only the tail is searched."""
    tail = data[-300:] if len(data) > 300 else b"\n" + data
    return any(marker in tail for marker in markers)


_warned_unpaced = False


def caller_of(scope: Any) -> tuple[int, str, int] | None:
    """`(listener port, client address, client port)` of a request, from the RSGI scope's
    `server` and `client` (`"1.2.3.4:80"`, `"[::1]:80"`); `None` when they are not TCP's."""
    try:
        _, _, local_port = str(scope.server).rpartition(":")
        host, _, port = str(scope.client).rpartition(":")
        return int(local_port), host.strip("[]"), int(port)
    except (AttributeError, ValueError):
        return None


class Pace:
    """Keeps what a client has not taken yet under `bound` bytes (see the module's docstring)."""

    # Bytes handed to the server between two looks at the socket.
    PROBE = 64 * 1024
    _FIRST_DELAY = 0.002
    _MAX_DELAY = 0.05
    # How long a socket with an empty send queue must stay unchanged to prove the server holds
    # nothing back for it.
    _SETTLED = 0.02

    __slots__ = ("_chunked", "_local_port", "_offset", "_peer", "_socket", "bound", "handed", "next_check", "stall_s")

    def __init__(self, local_port: int, peer: tuple[str, int], chunked: bool, bound: int, stall_s: float) -> None:
        self._local_port = local_port
        self._peer = peer
        self._chunked = chunked
        self._socket: ClientSocket | None = None
        # The socket's count of bytes written when this stream had handed over none.
        self._offset: int | None = None
        self.bound = bound
        self.stall_s = stall_s
        self.handed = 0
        self.next_check = self.PROBE

    @classmethod
    def of(cls, scope: Any, bound: int, stall_s: float) -> Pace | None:
        """A pace for the request's connection (`None` when its addresses are not TCP's)."""
        caller = caller_of(scope)
        if caller is None:
            return None
        local_port, host, port = caller
        return cls(local_port, (host, port), scope.http_version == "1.1", bound, stall_s)

    def sent(self, size: int) -> None:
        # HTTP/1.1 chunked framing: the size in hex, CRLF, the data, CRLF.
        self.handed += size + (len(f"{size:x}") + 4 if self._chunked else 0)

    async def keep_up(self) -> None:
        """Wait while more than `bound` bytes handed to the server have not left the process."""
        socket = self._socket
        if socket is None:
            socket = self._socket = ClientSocket.find(self._local_port, *self._peer)
            if socket is None:
                _warn_unpaced()
                self.next_check = 1 << 62
                return
        loop = asyncio.get_running_loop()
        delay = self._FIRST_DELAY
        last_written = -1
        quiet_since = loop.time()
        while True:
            state = socket.state()
            if state is None:
                raise ClientGone("the client's connection closed")
            written, queued = state
            if self._offset is None:
                # First look: everything handed so far is taken to have left (an error of at
                # most one probe's worth, toward letting more through).
                self._offset = written - self.handed
            backlog = self.handed - (written - self._offset)
            now = loop.time()
            if written != last_written:
                last_written, quiet_since = written, now
            elif queued == 0 and backlog > 0 and now - quiet_since >= self._SETTLED:
                # Nothing in the socket and nothing moving: the server holds nothing back.
                self._offset = written - self.handed
                backlog = 0
            if backlog <= self.bound:
                self.next_check = self.handed + self.PROBE
                return
            if now - quiet_since > self.stall_s:
                raise ClientGone(f"the client took nothing for {self.stall_s:g}s with {backlog} bytes waiting")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._MAX_DELAY)


def _warn_unpaced() -> None:
    global _warned_unpaced
    if not _warned_unpaced:
        _warned_unpaced = True
        log.warning("streams cannot be paced to slow clients here (no TCP socket information); memory is unbounded")


class ClientStream:
    """The client side of a streamed response; the HTTP response starts on the first send.

    `ended` turns true when the client API's end event (`data: [DONE]`, `message_stop`) is
    sent: the client then has the whole answer, and may close the connection at once (the
    OpenAI SDK does) while the gateway still reads the end of the upstream response.
    """

    __slots__ = (
        "_ends",
        "_headers",
        "_proto",
        "_transport",
        "ended",
        "first_send_at",
        "guard",
        "meter",
        "pace",
        "sent_bytes",
    )

    def __init__(
        self,
        proto: Any,
        headers: list[tuple[str, str]],
        guard: OutputGuard | None = None,
        ends: tuple[bytes, ...] = (),
        meter: StreamMeter | None = None,
        pace: Pace | None = None,
    ) -> None:
        self._proto = proto
        self._headers = headers
        self._transport: Any = None
        self.first_send_at: float | None = None  # perf_counter time of the first byte
        self.sent_bytes = 0
        self.guard = guard
        self.meter = meter
        self.pace = pace
        self._ends = ends
        self.ended = False

    @property
    def started(self) -> bool:
        return self._transport is not None

    async def send(self, data: bytes) -> None:
        if self._transport is None:
            self.first_send_at = time.perf_counter()
            self._transport = self._proto.response_stream(200, self._headers)
        if self._ends and _ends_stream(data, self._ends):
            self.ended = True
        try:
            await self._transport.send_bytes(data)
        except Exception as exc:  # Granian raises its own protocol errors for a closed peer
            raise ClientGone(str(exc)) from None
        self.sent_bytes += len(data)
        if self.meter is not None:
            self.meter.after_send()
        if self.guard is not None:
            self.guard.check()
        pace = self.pace
        if pace is not None:
            pace.sent(len(data))
            if pace.handed >= pace.next_check:
                await pace.keep_up()

    def close(self) -> None:
        """End the response body. Granian ends a streamed body when its transport is released;
        the stream's objects may outlive the request in exception tracebacks (reference cycles
        that only the garbage collector frees), so the reference is dropped explicitly."""
        self._transport = None


__all__ = ["STREAM_ENDS", "CapReached", "ClientGone", "ClientStream", "OutputGuard", "Pace", "caller_of"]
