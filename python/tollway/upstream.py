"""The upstream client as the request path sees it: each provider's way out (`Egress`), the
worker's bridge to the native transport (`UpstreamClient`), how an attempt failed (`Failure`),
and which client headers may go upstream.

The HTTP work is native (`rust/net`, hyper on a runtime thread of the worker's own: pooled
HTTP/1.1 and HTTP/2, TLS, proxies, timeouts, size bounds, the stream pump's byte side); see
`tollway._native.Upstream`. Python hands a request over with an asyncio future and awaits it;
the answer arrives whole (`post`) or, for a successful stream, as batches already framed
natively (`stream`: bytes, server-sent events, or AWS event-stream messages).

Timeouts (see `tollway.config.schema.Timeouts`):

- `connect`: TCP, a proxy's tunnel and TLS of a new connection;
- `first_byte`: from sending the request to the final response's head (a wait for a free
  connection, `max_connections_per_host`, is bounded by it too);
- `idle`: the longest wait for the next chunk of a body;
- `total`: a deadline for the whole attempt, headers and body.

Every failure is raised as `UpstreamError` carrying a `Failure` whose `kind` the server maps to
a status code; nothing else escapes (the native client's `TransportError` is converted here).
A caller whose task is cancelled (its client left) cancels the exchange: a request still
waiting is never sent, and a connection in use is closed, never reused half-read.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollway._native import Endpoint as Endpoint
from tollway._native import Transport, Upstream, UpstreamStream
from tollway.config.schema import ProviderConfig, Timeouts, UpstreamLimits
from tollway.config.secrets import resolve_secret
from tollway.errors import CallerGone, ConfigError, TransportError, UpstreamError

log = logging.getLogger("tollway")

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
# headers the upstream client sets itself; `Expect` (the gateway sends whole bodies: an interim
# `100 Continue` has nothing to continue); and headers that tell a server where a request came
# from or which URL to route it to, which a provider must learn from the gateway, not from a
# client (`Forwarded`, `X-Forwarded-*`, `X-Original-URL`, ...). `x-tollway-*` are the gateway's own.
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
    "expect",
    "forwarded",
    "via",
    "x-real-ip",
    "true-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-method-override",
}
_NOT_FORWARDED_PREFIXES = ("x-forwarded-", "x-tollway-")


def forwardable_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Client request headers that may be passed upstream.

    Drops hop-by-hop headers, every header named in `Connection`, the caller's credentials,
    client-routing headers, and headers the upstream client computes itself.
    """
    items = [(k.lower(), v) for k, v in headers]
    dropped = set(_NOT_FORWARDED)
    for k, v in items:
        if k == "connection":
            dropped.update(token.strip().lower() for token in v.split(","))
    return {k: v for k, v in items if k not in dropped and not k.startswith(_NOT_FORWARDED_PREFIXES)}


class FailureKind(enum.Enum):
    """How an upstream attempt failed. The server turns each into a status code."""

    UNREACHABLE = "unreachable"  # connect refused, DNS, TLS, proxy, connection closed before a response
    TIMEOUT = "timeout"  # pool wait, first byte, idle or total timeout
    SERVER_ERROR = "server_error"  # upstream answered 5xx
    RATE_LIMITED = "rate_limited"  # upstream answered 429
    CREDENTIALS = "credentials"  # upstream answered 401/403: the gateway's provider key is wrong
    CLIENT_ERROR = "client_error"  # upstream answered another 4xx: the request itself is wrong
    BAD_RESPONSE = "bad_response"  # upstream answered something that is not its protocol, or over a bound
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


# Where the request being served came from, set by the request's task: `(listener port, client
# address, client port)`. A request that has to wait for a connection is not sent once that
# client has left (see `tollway_net::transport::Transport::send`).
CALLER: contextvars.ContextVar[tuple[int, str, int] | None] = contextvars.ContextVar("caller", default=None)


def transport_failure(provider: str, exc: TransportError) -> UpstreamError:
    return upstream_failure(Failure(FailureKind(exc.kind), provider, f"provider `{provider}` {exc.detail}"))


class Framing(enum.IntEnum):
    """How a streamed answer arrives from `Egress.stream` (the native framings)."""

    BYTES = 1  # decoded body bytes
    SSE = 2  # lists of `SseEvent`
    OPENAI_CHAT = 3  # OpenAI chat relayed natively: the bytes to forward (`UpstreamStream.done`, `usage_json`)
    EVENT_STREAM = 4  # lists of `EventStreamMessage` (AWS)


@dataclass(slots=True)
class UpstreamResponse:
    """A provider's answer: `body` is the whole body, or, for a successful answer asked for as
    a stream, the `UpstreamStream` its batches come from (`Egress.batches`)."""

    status: int
    headers: dict[str, str]
    body: bytes | UpstreamStream
    # How long the request waited for a free connection to its origin (seconds).
    pool_wait: float

    @property
    def payload(self) -> bytes:
        """The whole body (a streamed answer has none)."""
        return self.body if isinstance(self.body, bytes) else b""

    @property
    def stream(self) -> UpstreamStream:
        """The stream of a successful answer asked for as one (`Egress.stream`)."""
        if isinstance(self.body, bytes):
            raise TypeError("this answer was read whole: it has no stream")
        return self.body

    def close(self) -> None:
        """Stop a streamed answer: its connection is closed unless it was read to its end."""
        if not isinstance(self.body, bytes):
            self.body.close()


class Egress:
    """One provider's way out: its native transport (pool, TLS, proxy), the bounds on what it
    may send, and the worker's bridge. Adapters resolve their URLs with `endpoint` once."""

    __slots__ = ("_client", "_limits", "_transport")

    def __init__(self, client: UpstreamClient, transport: Transport, limits: UpstreamLimits) -> None:
        self._client = client
        self._transport = transport
        self._limits = limits

    def endpoint(self, url: str) -> Endpoint:
        """Raise `ConfigError` for a URL the transport cannot use."""
        return self._transport.endpoint(url)

    async def post(
        self, provider: str, endpoint: Endpoint, body: bytes, headers: Mapping[str, str], timeouts: Timeouts
    ) -> UpstreamResponse:
        """Send a POST and read the whole answer."""
        return await self._client.exchange(provider, endpoint, body, headers, timeouts, self._limits, None, False)

    async def stream(
        self,
        provider: str,
        endpoint: Endpoint,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        framing: Framing,
        strip_usage: bool = False,
    ) -> UpstreamResponse:
        """Send a POST whose successful answer is a stream: its `body` is the `UpstreamStream`
        (close it, or `UpstreamResponse.close`, when done). Another status is read whole."""
        return await self._client.exchange(
            provider, endpoint, body, headers, timeouts, self._limits, framing, strip_usage
        )

    async def batches(self, provider: str, stream: UpstreamStream) -> AsyncIterator[Any]:
        """What a stream delivers, batch by batch, as it arrives; ends at the stream's end;
        raises `UpstreamError` for a stream that failed (after its last whole batch)."""
        client = self._client
        while True:
            try:
                batch = stream.take()
            except TransportError as exc:
                raise transport_failure(provider, exc) from None
            if batch is not None:
                yield batch
                continue
            if stream.ended:
                return
            await client.ready(stream)


class UpstreamClient:
    """The worker's upstream client: the bridge between its event loop and the native runtime
    thread, and the transports of its providers (shared between providers with the same
    settings, and kept across reloads, so warm connections survive a configuration change)."""

    def __init__(self, max_connections_per_host: int = 256, stream_buffer_bytes: int = 1 << 20) -> None:
        self.max_connections_per_host = max_connections_per_host
        # The native queue of a stream holds at most a quarter of what its client side may.
        self._stream_bound = max(16 * 1024, stream_buffer_bytes // 4)
        self._native = Upstream()
        self._transports: dict[tuple[Any, ...], Transport] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Told how long each request waited for a free connection (the gateway's metrics).
        self.on_pool_wait: Callable[[str, float], None] | None = None

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_reader(self._native.fileno(), self._native.drain)
        return loop

    async def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._native.fileno())
        self._loop = None
        self._transports.clear()

    def egress(
        self, provider: ProviderConfig, timeouts: Timeouts, limits: UpstreamLimits, base_dir: Path | None
    ) -> Egress:
        """The way out for a provider's settings; raise `ConfigError` (naming the provider) for
        certificates or a proxy the transport cannot use."""
        key_pem = password = None
        try:
            if provider.client_key is not None:
                key_pem = resolve_secret(provider.client_key, base_dir).reveal().encode()
            if provider.proxy_password is not None:
                password = resolve_secret(provider.proxy_password, base_dir).reveal()
        except LookupError as exc:
            raise ConfigError([f"provider `{provider.name}`: {exc}"]) from None
        ca = _read(provider.ca_file, base_dir, provider.name)
        cert = _read(provider.client_cert, base_dir, provider.name)
        settings = (
            provider.http2,
            ca,
            cert,
            key_pem,
            provider.proxy,
            provider.proxy_username,
            password,
            timeouts.connect,
            limits.max_header_bytes,
        )
        transport = self._transports.get(settings)
        if transport is None:
            try:
                transport = Transport(
                    http2=provider.http2 == "auto",
                    connect_timeout=timeouts.connect,
                    max_connections=self.max_connections_per_host,
                    max_header_bytes=limits.max_header_bytes,
                    ca_pem=ca,
                    client_cert_pem=cert,
                    client_key_pem=key_pem,
                    proxy=provider.proxy,
                    proxy_username=provider.proxy_username,
                    proxy_password=password,
                )
            except ConfigError as exc:
                raise ConfigError([f"provider `{provider.name}`: {p}" for p in exc.problems]) from None
            self._transports[settings] = transport
        return Egress(self, transport, limits)

    async def exchange(
        self,
        provider: str,
        endpoint: Endpoint,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        limits: UpstreamLimits,
        framing: Framing | None,
        strip_usage: bool,
    ) -> UpstreamResponse:
        loop = self._bind()
        future = loop.create_future()
        try:
            call = self._native.request(
                future,
                endpoint,
                list(headers.items()),
                body,
                timeouts.first_byte,
                timeouts.idle,
                timeouts.total,
                limits.max_body_bytes,
                limits.max_decompressed_ratio,
                stream=0 if framing is None else int(framing),
                stream_bound=self._stream_bound,
                strip_usage=strip_usage,
                max_line_bytes=limits.max_sse_line_bytes,
                caller=CALLER.get(),
            )
        except ValueError as exc:  # a header the HTTP library refuses (a line break in a value)
            raise upstream_failure(
                Failure(
                    FailureKind.CLIENT_ERROR, provider, f"provider `{provider}`: cannot send the request: {exc}", 400
                )
            ) from None
        try:
            status, response_headers, payload, pool_wait = await future
        except asyncio.CancelledError:
            call.cancel()
            raise
        except TransportError as exc:
            if exc.kind == "caller_gone":
                raise CallerGone(exc.detail) from None
            raise transport_failure(provider, exc) from None
        if self.on_pool_wait is not None:
            self.on_pool_wait(provider, pool_wait)
        return UpstreamResponse(status, response_headers, payload, pool_wait)

    async def ready(self, stream: UpstreamStream) -> None:
        """Wait until `stream` has something to take (a batch, or its end)."""
        future = self._bind().create_future()
        self._native.wait(future, stream)
        await future


def _read(name: str | None, base_dir: Path | None, provider: str) -> bytes | None:
    if name is None:
        return None
    path = Path(name).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"provider `{provider}`: cannot read `{path}`: {exc.strerror or exc}"]) from None


def warn_without_trusted_roots() -> None:
    """Log once when the system has no trusted roots: every TLS provider then needs `ca_file`."""
    if Transport.system_root_count() == 0:
        log.warning(
            "no trusted root certificates found on this system (install the `ca-certificates` package);"
            " TLS connections to providers will fail unless they set `ca_file`"
        )
