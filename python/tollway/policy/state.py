"""Where policy counters live: the state backend.

The policy engine turns a request into a list of `Take`s (one per limit rule that applies:
which limit, which partition, how much) and hands them to the backend in **one call**, which
admits or denies them together. The memory backend (this module) holds native limiters in the
worker process; the Redis backend (`tollway.state.redis`) runs the same semantics as one server
script per request, so a fleet shares its counters.

Semantics every backend keeps (the engine and the tests rely on them):

- Takes are applied in order. An *enforcing* take that is denied denies the request: the takes
  already made for it are given back (released), so a refused request consumes nothing.
- A *shadow* take that would be denied is reported and not taken (as if the policy had
  blocked); one that fits is taken and settled like an enforcing one, so shadow counters see
  the traffic enforcement would see.
- Request rates are token buckets of amount 1, settled at 1 as soon as the request is
  admitted; token rates and budgets reserve an estimate, settled at the actual amount when the
  request ends (or released when it made no model call); concurrency takes a lease, released
  when it ends. Reservations and leases never settled expire (the limiters' time to live).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from tollway._native import BudgetWindow, ConcurrencyLimiter, Denial, Grant, TokenBucket

LimitKind = Literal["rate", "tokens", "concurrency", "budget"]


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """One limit, as configured: its identity across reloads is the whole spec (a changed
    number is a new limit with fresh counters; an unchanged one keeps its counters)."""

    policy: str
    kind: LimitKind
    limit: int
    period_s: float = 0.0  # rates and rolling budgets
    burst: int = 0  # rates
    calendar: str | None = None  # budgets: `day`, `week`, `month`
    utc_offset_s: int = 0
    unit: str = "requests"  # `requests`, `tokens`, `usd` (amounts in micro-USD), `in-flight`
    per: tuple[str, ...] = ()


@dataclass(slots=True)
class Take:
    """One limit's part in one request's admission."""

    spec: LimitSpec
    partition: str
    amount: int
    enforce: bool  # False: shadow mode
    # Filled by the backend:
    answer: Grant | Denial | None = None

    @property
    def admitted(self) -> bool:
        return isinstance(self.answer, Grant)


class Held(NamedTuple):
    """What an admitted take holds until the request ends (a tuple: made on every request)."""

    spec: LimitSpec
    partition: str
    id: int | None


class MemoryLimit:
    """One configured limit in this process: a native limiter over every partition."""

    def __init__(self, spec: LimitSpec, lease_ttl_s: float) -> None:
        self.spec = spec
        self.bucket: TokenBucket | None = None
        self.leases: ConcurrencyLimiter | None = None
        self.budget: BudgetWindow | None = None
        if spec.kind in ("rate", "tokens"):
            self.bucket = TokenBucket(spec.limit, spec.period_s, spec.burst or spec.limit, reservation_ttl=lease_ttl_s)
        elif spec.kind == "concurrency":
            self.leases = ConcurrencyLimiter(spec.limit, lease_ttl=lease_ttl_s)
        elif spec.calendar is not None:
            self.budget = BudgetWindow.calendar(
                spec.limit, spec.calendar, utc_offset=spec.utc_offset_s, reservation_ttl=lease_ttl_s
            )
        else:
            window = spec.period_s
            buckets = 60 if (window * 1000) % 60 == 0 else 1
            self.budget = BudgetWindow.rolling(spec.limit, window, buckets, reservation_ttl=lease_ttl_s)

    def take(self, partition: str, amount: int, now: float) -> Grant | Denial:
        if self.bucket is not None:
            return self.bucket.reserve(partition, amount, now)
        if self.leases is not None:
            return self.leases.acquire(partition, now)
        assert self.budget is not None
        return self.budget.reserve(partition, amount, now)

    def settle(self, id: int, actual: int, now: float) -> None:
        if self.bucket is not None:
            self.bucket.settle(id, actual, now)
        elif self.budget is not None:
            self.budget.settle(id, actual, now)

    def release(self, id: int, now: float) -> None:
        if self.bucket is not None:
            self.bucket.release(id, now)
        elif self.leases is not None:
            self.leases.release(id, now)
        elif self.budget is not None:
            self.budget.release(id, now)

    def debit(self, partition: str, amount: int, now: float) -> None:
        if self.bucket is not None:
            self.bucket.debit(partition, amount, now)
        elif self.budget is not None:
            self.budget.debit(partition, amount, now)

    def used(self, partition: str, now: float) -> int:
        if self.bucket is not None:
            return self.bucket.used(partition, now)
        if self.leases is not None:
            return self.leases.used(partition, now)
        assert self.budget is not None
        return self.budget.used(partition, now)


class MemoryBackend:
    """Counters in this process (the embedded default; one worker)."""

    name = "memory"

    def __init__(self, lease_ttl_s: float = 900.0, clock: Callable[[], float] = time.time) -> None:
        self.lease_ttl_s = lease_ttl_s
        self.clock = clock
        self._limits: dict[LimitSpec, MemoryLimit] = {}
        # The same, by object identity: hashing a spec (a dataclass of nine fields) on every
        # lookup costs more than the limiter call. The spec is kept in the entry, so its id
        # cannot be reused by another object while the entry exists.
        self._by_id: dict[int, tuple[LimitSpec, MemoryLimit]] = {}

    def prepare(self, specs: Sequence[LimitSpec]) -> None:
        """Make sure every limit of a (new) configuration exists; keep the counters of limits
        that did not change; drop the rest."""
        kept = {spec: self._limits.get(spec) or MemoryLimit(spec, self.lease_ttl_s) for spec in specs}
        self._limits = kept
        self._by_id = {id(spec): (spec, kept[spec]) for spec in specs}

    def limit(self, spec: LimitSpec) -> MemoryLimit:
        entry = self._by_id.get(id(spec))
        if entry is not None and entry[0] is spec:
            return entry[1]
        found = self._limits.get(spec)
        if found is None:
            found = self._limits[spec] = MemoryLimit(spec, self.lease_ttl_s)
        self._by_id[id(spec)] = (spec, found)
        return found

    def admit(self, takes: Sequence[Take]) -> bool:
        """Apply the takes in order (see the module docstring); False if the request is denied."""
        now = self.clock()
        made: list[tuple[MemoryLimit, int]] = []
        for take in takes:
            limit = self.limit(take.spec)
            answer = limit.take(take.partition, take.amount, now)
            take.answer = answer
            if isinstance(answer, Grant):
                if answer.id is not None:
                    made.append((limit, answer.id))
            elif take.enforce:
                for held_limit, id in made:
                    held_limit.release(id, now)
                return False
        return True

    def used(self, spec: LimitSpec, partition: str) -> int:
        return self.limit(spec).used(partition, self.clock())

    def settle(self, items: Sequence[tuple[Held, int | None]]) -> None:
        """End holds: `(held, actual)` settles at `actual`; `(held, None)` releases."""
        now = self.clock()
        for held, actual in items:
            limit = self.limit(held.spec)
            if held.id is None:
                if actual:
                    limit.debit(held.partition, actual, now)
            elif actual is None or held.spec.kind == "concurrency":
                limit.release(held.id, now)
            else:
                limit.settle(held.id, actual, now)

    def debit(self, spec: LimitSpec, partition: str, amount: int) -> None:
        self.limit(spec).debit(partition, amount, self.clock())
