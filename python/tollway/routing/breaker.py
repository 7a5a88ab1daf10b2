"""Circuit breaking per target: stop sending requests to a target that keeps failing.

States and transitions (times from the injected monotonic clock):

- **closed**: requests flow. Each outcome is counted; the circuit opens on a failure that makes
  `consecutive_failures` failures in a row, or that brings the error rate over the last
  `window_s` seconds to `error_rate` or more once at least `min_requests` outcomes are in the
  window.
- **open**: requests skip the target for the open period (`open_for_s` at first). Outcomes
  reported while open (attempts that started before it opened) are ignored.
- **half-open**: once the open period has passed, up to `half_open_probes` requests are let
  through as probes. A probe success closes the circuit (counts start afresh, the open period
  is back to `open_for_s`); a probe failure opens it again for twice the previous period, up to
  `max_open_for_s`, so a target that stays down is probed less and less often. A probe whose
  outcome never arrives (its request was cancelled) is written off after one open period, so
  the circuit cannot stay half-open for ever.

Which outcomes count as failures (`counts_against_circuit`): the target's own troubles, that is
server errors, timeouts, unreachable, broken streams, bad responses, rejected credentials, and
rate limits. A 429 counts like a 5xx on purpose: a target that keeps refusing for quota is as
unusable as one that is down, and skipping it spares the quota; the `Retry-After` of a single
429 is honoured per request by the retry rules, not here. Client errors (400, a prompt too long
for the context) say nothing about the target's health: they count as successes, since the
target answered as its protocol says.

The router never lets the breakers skip every target of a request: when all are open, it forces
a probe (`admit` while open) on the one whose open period ends first.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from tollway.routing._window import RollingSum
from tollway.routing.config import CircuitConfig
from tollway.upstream import FailureKind

_COUNTED = frozenset(
    {
        FailureKind.UNREACHABLE,
        FailureKind.TIMEOUT,
        FailureKind.SERVER_ERROR,
        FailureKind.RATE_LIMITED,
        FailureKind.CREDENTIALS,
        FailureKind.BAD_RESPONSE,
        FailureKind.BROKEN_STREAM,
    }
)


def counts_against_circuit(failure: FailureKind | None) -> bool:
    """Whether an attempt's outcome (`None`: success) counts as a failure of the target."""
    return failure in _COUNTED


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """The circuit of one target. Not thread-safe: one per target per event loop."""

    def __init__(self, settings: CircuitConfig, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._requests = RollingSum(settings.window_s)
        self._failures = RollingSum(settings.window_s)
        self._consecutive = 0
        self._open_for = settings.open_for_s
        self._opened_at = 0.0
        self._probes = 0  # probes let through in this half-open period
        self._last_probe_at = 0.0

    @property
    def state(self) -> CircuitState:
        self._advance(self._clock())
        return self._state

    def _advance(self, now: float) -> None:
        if self._state is CircuitState.OPEN and now >= self._opened_at + self._open_for:
            self._state = CircuitState.HALF_OPEN
            self._probes = 0

    def ready_at(self) -> float:
        """The clock time from which the circuit lets a request through (now, if it does)."""
        now = self._clock()
        self._advance(now)
        if self._state is CircuitState.OPEN:
            return self._opened_at + self._open_for
        if self._state is CircuitState.HALF_OPEN and self._probes >= self._settings.half_open_probes:
            return max(now, self._last_probe_at + self._open_for)
        return now

    def available(self) -> bool:
        """Whether a request may go to the target now (takes nothing; see `admit`)."""
        return self.ready_at() <= self._clock()

    def admit(self) -> None:
        """A request is going to the target. Unless the circuit is closed, it is a probe: it
        takes one of the half-open probes, or, when the router forces it because every target
        of a request is open, it turns an open circuit half-open early with itself as probe."""
        now = self._clock()
        self._advance(now)
        if self._state is CircuitState.CLOSED:
            return
        if self._state is CircuitState.OPEN:
            self._state = CircuitState.HALF_OPEN
            self._probes = 0
        elif self._probes >= self._settings.half_open_probes and now >= self._last_probe_at + self._open_for:
            self._probes = 0  # the earlier probes never reported back: written off
        self._probes += 1
        self._last_probe_at = now

    def record(self, failed: bool) -> None:
        """Report an attempt's outcome (see `counts_against_circuit`)."""
        now = self._clock()
        self._advance(now)
        if self._state is CircuitState.OPEN:
            return
        if self._state is CircuitState.HALF_OPEN:
            if failed:
                self._open(now, min(self._open_for * 2, self._settings.max_open_for_s))
            else:
                self._close()
            return
        self._requests.add(now, 1)
        if not failed:
            self._consecutive = 0
            return
        self._consecutive += 1
        self._failures.add(now, 1)
        s = self._settings
        requests = self._requests.total(now)
        if self._consecutive >= s.consecutive_failures or (
            requests >= s.min_requests and self._failures.total(now) >= s.error_rate * requests
        ):
            self._open(now, s.open_for_s)

    def _open(self, now: float, period: float) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = now
        self._open_for = period

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._open_for = self._settings.open_for_s
        self._consecutive = 0
        self._requests.clear()
        self._failures.clear()
