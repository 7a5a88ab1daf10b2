"""Retries: which failures are retryable, how long to back off, provider wait hints, and the
fleet-wide retry budget.

**Retryable** (`is_retryable`): failures that another attempt may well not meet: unreachable
(connect refused, DNS, TLS, reset before a response), timeouts, 429, 5xx, and a response body
that broke off. Never an invalid request (other 4xx), a prompt too long for the context,
rejected provider credentials or a response that is not the provider's protocol: the router
fails those over without a retry's backoff, to a larger-context fallback, or not at all (see
`tollway.routing.router`).

**Backoff** (`Backoff`): exponential with full jitter, the n-th retry (n = 0, 1, ...) waits
`uniform(0, min(max_delay, base * 2**n))` seconds, drawn from an injected random source.
Full jitter spreads retries of many clients that failed together over the whole interval.

**Wait hints** (`wait_hint`), from a failed response's headers (names in lower case):

- `retry-after-ms: 250` (OpenAI's milliseconds form, preferred when present);
- `retry-after: 2` (delay-seconds; decimals are accepted) or
  `retry-after: Wed, 21 Oct 2015 07:28:00 GMT` (an HTTP-date, RFC 9110 section 10.2.3);
- OpenAI's `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`: a Go-style duration such
  as `1s`, `6m0s`, `20ms`, `1h2m3.5s` (a bare number is read as seconds);
- Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`: an
  RFC 3339 timestamp such as `2025-01-01T12:00:30Z`.

An explicit `retry-after(-ms)` wins. Otherwise the longest reset among the limits that are
exhausted is used; a reset whose matching `...-remaining-...` header is above zero describes a
limit that did not cause the refusal and is ignored. Values that do not parse are ignored.
Timestamps are turned into delays against the caller's wall clock; delays are never negative.

**Retry budget** (`RetryBudget`, one per process): Finagle's rule. Each request deposits `ratio`
of a token, each retry withdraws one whole token, and deposits and withdrawals are forgotten
after `window_s`; on top, a reserve of `min_per_second * window_s` tokens lets a quiet gateway
retry at all. Because a withdrawal is granted only while the balance covers it, in any window
the retries are at most `ratio * requests + min_per_second * window_s`: during an outage, when
every request fails, retries add at most `ratio` to the upstream traffic instead of multiplying
it by the number of attempts. Tokens are counted in thousandths, so the arithmetic is exact.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from tollway.routing._window import RollingSum
from tollway.routing.config import RetryBudgetConfig
from tollway.upstream import FailureKind

_RETRYABLE = frozenset(
    {
        FailureKind.UNREACHABLE,
        FailureKind.TIMEOUT,
        FailureKind.RATE_LIMITED,
        FailureKind.SERVER_ERROR,
        FailureKind.BROKEN_STREAM,
    }
)


def is_retryable(kind: FailureKind) -> bool:
    """Whether a failure of this kind is worth another attempt after a backoff."""
    return kind in _RETRYABLE


class Backoff:
    """Exponential backoff with full jitter."""

    def __init__(self, base_s: float, max_s: float, rng: random.Random) -> None:
        self._base = base_s
        self._max = max_s
        self._rng = rng

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number `retry` (0 for the first retry)."""
        # 2.0 ** 1024 overflows a float; by 2 ** 64 any base has passed any sensible maximum.
        return min(self._max, self._base * 2.0 ** min(retry, 64))

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry`, uniform in [0, ceiling]."""
        return self._rng.uniform(0.0, self.ceiling(retry))


def parse_retry_after(value: str, now_epoch: float) -> float | None:
    """Seconds to wait from a `Retry-After` value (delay-seconds or an HTTP-date), or `None`."""
    value = value.strip()
    seconds = _number(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; `-0000` parses as naive
        return None
    return max(0.0, when.timestamp() - now_epoch)


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float | None:
    """Seconds from a Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`) or a bare number
    of seconds, or `None`."""
    value = value.strip()
    seconds = _number(value)
    if seconds is not None:
        return seconds
    total = 0.0
    pos = 0
    for m in _DURATION_PART.finditer(value):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if pos == len(value) and pos > 0 else None


def parse_rfc3339(value: str, now_epoch: float) -> float | None:
    """Seconds until an RFC 3339 timestamp (with its offset), or `None`."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_epoch)


def _number(value: str) -> float | None:
    if not value or not (value[0].isdigit() or value[0] == "."):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


_OPENAI_LIMITS = ("requests", "tokens")
_ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


def wait_hint(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """How long the provider asks to wait before it is called again, from a failed
    response's headers (lower-case names), or `None` if it does not say."""
    if (ms := headers.get("retry-after-ms")) is not None and (value := _number(ms.strip())) is not None:
        return value / 1000
    if (ra := headers.get("retry-after")) is not None and (value := parse_retry_after(ra, now_epoch)) is not None:
        return value
    resets: list[float] = []
    for limit in _OPENAI_LIMITS:
        if _exhausted(headers.get(f"x-ratelimit-remaining-{limit}")):
            reset = headers.get(f"x-ratelimit-reset-{limit}")
            if reset is not None and (value := parse_duration(reset)) is not None:
                resets.append(value)
    for limit in _ANTHROPIC_LIMITS:
        if _exhausted(headers.get(f"anthropic-ratelimit-{limit}-remaining")):
            reset = headers.get(f"anthropic-ratelimit-{limit}-reset")
            if reset is not None and (value := parse_rfc3339(reset, now_epoch)) is not None:
                resets.append(value)
    return max(resets) if resets else None


def _exhausted(remaining: str | None) -> bool:
    """Whether a limit's `remaining` header allows that the limit caused a refusal: it is
    absent, unreadable, or zero."""
    if remaining is None:
        return True
    value = _number(remaining.strip())
    return value is None or value <= 0


_MILLI = 1000  # tokens are counted in thousandths


class RetryBudget:
    """The process-wide retry budget (see the module docstring). Not thread-safe: one per
    event loop, shared by every request of it."""

    def __init__(self, settings: RetryBudgetConfig, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._deposit = round(settings.ratio * _MILLI)
        self._reserve = round(settings.min_per_second * settings.window_s * _MILLI)
        self._net = RollingSum(settings.window_s)

    def deposit(self) -> None:
        """Credit one request (the router does this once per planned request)."""
        if self._deposit:
            self._net.add(self._clock(), self._deposit)

    def can_retry(self) -> bool:
        """Withdraw one retry if the budget allows it; `False` (and nothing taken) if not."""
        now = self._clock()
        if self._net.total(now) + self._reserve < _MILLI:
            return False
        self._net.add(now, -_MILLI)
        return True
