"""The one exception hierarchy of tollway.

Everything tollway raises on purpose derives from `TollwayError`. Where the meaning matches a
standard exception, the class subclasses it too, so callers can catch either. The native
extension (`tollway._native`) raises these same classes.
"""

from __future__ import annotations


class TollwayError(Exception):
    """Base class of every error tollway raises on purpose."""


class ConfigError(TollwayError, ValueError):
    """A configuration could not be loaded; `problems` lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems) if problems else "invalid configuration")


class PolicyError(TollwayError, ValueError):
    """A policy selector that cannot be compiled (unknown attribute, wrong operator, bad value)."""


class SseError(TollwayError, ValueError):
    """An event stream violated a limit of the parser (for example a line over the size cap)."""


class StreamFormatError(TollwayError, ValueError):
    """A streamed response the gateway cannot relay faithfully (an event that should be JSON is not)."""


class TokenizerError(TollwayError, ValueError):
    """A tokenizer name (or file) that cannot be used."""


class TokenCountError(TollwayError, ValueError):
    """A request body whose tokens cannot be counted (not the JSON a chat request is)."""


class LimiterConfigError(TollwayError, ValueError):
    """A limiter or budget configured with numbers it cannot use (a zero period or burst, a rolling
    window its bucket count does not divide, a UTC offset of a day or more, an unknown period name)."""


class LimiterFullError(TollwayError, RuntimeError):
    """A limiter holds `max_keys` keys, none of which may be evicted (usage in the current budget
    window, or leases in flight), so it cannot take a new key. The call is refused (fail closed)."""


class UpstreamError(TollwayError):
    """An upstream provider call failed; `kind` says how (see `tollway.upstream`)."""


class TransportError(UpstreamError):
    """How the native upstream client's exchange failed (`tollway._native.Upstream`): `kind`, a
    `FailureKind` value (`unreachable`, `timeout`, `bad_response`, `broken_stream`), and
    `detail`, a message that follows "provider `NAME` " (it never holds a header value, a body
    or a credential). `tollway.upstream` turns it into an `UpstreamError` with its `Failure`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


class CallerGone(TollwayError):
    """The gateway's own client left while its request waited for a connection to the provider:
    the request was not sent (nobody would read the answer)."""


class TranslationError(TollwayError, ValueError):
    """A request the chosen provider's API cannot express (a feature it lacks, such as a tool type
    or an input kind), or an answer the client's API cannot express. Never a silent change of
    meaning: the adapter turns it into an upstream failure with a message naming the feature."""


class EventStreamError(TollwayError, ValueError):
    """An AWS event stream (`application/vnd.amazon.eventstream`) that cannot be decoded: a CRC
    mismatch, inconsistent lengths, a message over the size cap, or an unknown header type."""
