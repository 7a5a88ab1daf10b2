"""The upstream HTTP client: pooled keep-alive connections, timeouts, header hygiene.

One `UpstreamClient` per worker process holds one aiohttp session, so connections to each
provider host are reused across requests. Timeouts (see `tollway.config.schema.Timeouts`):

- `connect`: enforced by aiohttp on the socket connect (and TLS handshake);
- `first_byte`: from sending the request to receiving the response status and headers;
- `idle`: the longest wait for the next chunk of a body;
- `total`: a deadline for the whole attempt, headers and body.

Every failure is raised as `UpstreamError` with a `kind` the server maps to a status code;
aiohttp's own exceptions never escape this module.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

import aiohttp

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


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    provider: str
    message: str
    upstream_status: int | None = None
    retry_after: str | None = None
    # The provider's own error body, when it sent one we could read (for CLIENT_ERROR).
    upstream_message: str | None = None


def upstream_failure(failure: Failure) -> UpstreamError:
    exc = UpstreamError(failure.message)
    exc.failure = failure  # type: ignore[attr-defined]
    return exc


def failure_of(exc: UpstreamError) -> Failure:
    failure: Failure = exc.failure  # type: ignore[attr-defined]
    return failure


class UpstreamClient:
    """A pooled HTTP client for one worker. Create it inside the running event loop."""

    def __init__(self, max_connections_per_host: int = 256) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0,
                limit_per_host=max_connections_per_host,
                keepalive_timeout=30.0,
                ttl_dns_cache=300,
            ),
            # Per-attempt deadlines are enforced here with asyncio timeouts; aiohttp's own
            # defaults (5 minutes total) must not cut a long generation short.
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        await self._session.close()

    async def post(
        self,
        provider: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
    ) -> tuple[aiohttp.ClientResponse, float]:
        """Send a POST and wait for the status line and headers.

        Returns the response and the attempt's deadline (event-loop time) for reading the body.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total
        try:
            async with asyncio.timeout(min(timeouts.first_byte, timeouts.total)):
                resp = await self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect),
                    allow_redirects=False,
                )
        except TimeoutError:
            raise upstream_failure(
                Failure(
                    FailureKind.TIMEOUT,
                    provider,
                    f"provider `{provider}` sent no response within "
                    f"{min(timeouts.first_byte, timeouts.total):g}s (first-byte timeout)",
                )
            ) from None
        except aiohttp.ServerTimeoutError:
            raise upstream_failure(
                Failure(
                    FailureKind.UNREACHABLE,
                    provider,
                    f"could not connect to provider `{provider}` within {timeouts.connect:g}s",
                )
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise upstream_failure(
                Failure(FailureKind.UNREACHABLE, provider, f"could not reach provider `{provider}`: {_why(exc)}")
            ) from None
        return resp, deadline

    @staticmethod
    async def read_body(
        provider: str, resp: aiohttp.ClientResponse, deadline: float, limit: int = 64 * 1024 * 1024
    ) -> bytes:
        """Read a whole (non-streamed) body before the deadline."""
        try:
            async with asyncio.timeout_at(deadline):
                length = resp.content_length
                if length is not None and length > limit:
                    raise upstream_failure(
                        Failure(
                            FailureKind.BAD_RESPONSE, provider, f"provider `{provider}` sent a body over {limit} bytes"
                        )
                    )
                return await resp.read()
        except TimeoutError:
            resp.close()
            raise upstream_failure(
                Failure(FailureKind.TIMEOUT, provider, f"provider `{provider}` did not finish its response in time")
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            resp.close()
            raise upstream_failure(
                Failure(
                    FailureKind.BROKEN_STREAM,
                    provider,
                    f"provider `{provider}` broke off its response: {_why(exc)}",
                )
            ) from None

    @staticmethod
    async def iter_chunks(
        provider: str, resp: aiohttp.ClientResponse, timeouts: Timeouts, deadline: float
    ) -> AsyncIterator[bytes]:
        """Yield body chunks as they arrive, enforcing the idle timeout and the deadline.

        The timeout scope covers only the wait for the next chunk, never the consumer's work
        between chunks (a timeout around a `yield` would cancel the consumer instead).
        """
        loop = asyncio.get_running_loop()
        content = resp.content
        while True:
            now = loop.time()
            idle_limit = now + timeouts.idle
            try:
                async with asyncio.timeout_at(min(idle_limit, deadline)):
                    chunk = await content.readany()
            except TimeoutError:
                if idle_limit < deadline:
                    message = f"provider `{provider}` sent nothing for {timeouts.idle:g}s (idle timeout)"
                else:
                    message = f"provider `{provider}` did not finish within {timeouts.total:g}s (total timeout)"
                raise upstream_failure(Failure(FailureKind.TIMEOUT, provider, message)) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise upstream_failure(
                    Failure(
                        FailureKind.BROKEN_STREAM, provider, f"provider `{provider}` broke off the stream: {_why(exc)}"
                    )
                ) from None
            if not chunk:
                return
            yield chunk


def _why(exc: BaseException) -> str:
    """A short reason for a network failure; never includes headers or bodies."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
