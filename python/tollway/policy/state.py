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
- A take may ask the backend to `clip` its amount to what is left under the limit (truncating
  budgets), or only to `peek` at what is used (audit budgets: nothing is taken), so that a
  request's every look at its counters is the one backend call.

Answers are the native `Grant` and `Denial`, or, from a backend that is not the native
limiters, `StoreGrant` and `StoreDenial` with the same attributes (`AnyGrant`, `AnyDenial`).
A backend whose store could not decide a take answers as the policy's `on_store_unavailable`
says and marks the take `degraded` with that mode: `fail_open` grants, `fail_closed` answers
`StoreUnavailable` (the engine refuses with a 503), `local` answers from a local share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from tollway._native import BudgetWindow, ConcurrencyLimiter, Denial, Grant, TokenBucket
from tollway.policy.config import StoreFailure

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
    # The policy's `on_store_unavailable`, resolved (a shared-store backend's concern; not part
    # of the limit's identity: changing it keeps the counters).
    store_failure: StoreFailure = field(default="fail_open", compare=False)


@dataclass(frozen=True, slots=True)
class StoreGrant:
    """An admission from a backend other than the native limiters (same attributes as `Grant`)."""

    id: int | None
    remaining: int
    reset_after: float


@dataclass(frozen=True, slots=True)
class StoreDenial:
    """A refusal from a backend other than the native limiters (same attributes as `Denial`)."""

    kind: str
    limit: int
    window_seconds: float | None
    burst: int
    used: int
    requested: int
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class StoreUnavailable:
    """The shared store could not decide, and the policy fails closed."""


AnyGrant = Grant | StoreGrant
AnyDenial = Denial | StoreDenial


@dataclass(slots=True)
class Take:
    """One limit's part in one request's admission."""

    spec: LimitSpec
    partition: str
    amount: int  # the backend lowers it when `clip` asks
    enforce: bool  # False: shadow mode
    clip: bool = False  # budgets: take at most what is left under the limit (when some is left)
    peek: bool = False  # take nothing; report what is used in `used`
    # Filled by the backend:
    answer: Grant | Denial | StoreGrant | StoreDenial | StoreUnavailable | None = None
    used: int | None = None
    degraded: StoreFailure | None = None  # the store could not decide: what the policy did

    @property
    def admitted(self) -> bool:
        return isinstance(self.answer, AnyGrant)


class StateBackend(Protocol):
    """What the policy engine needs from a backend (`MemoryBackend`, `tollway.state.redis.RedisBackend`)."""

    name: str

    def prepare(self, specs: Sequence[LimitSpec]) -> None:
        """A (new) configuration's limits: counters of unchanged limits are kept."""

    async def admit_async(self, takes: Sequence[Take]) -> bool:
        """Apply a request's takes, all or none; False if the request is denied."""
        ...

    def settle(self, items: Sequence[tuple[Held, int | None]]) -> None:
        """End holds: `(held, actual)` settles at `actual`; `(held, None)` releases. Never waits."""

    def status(self) -> dict[str, Any]:
        """The backend and whether its store is available, for `/readyz`."""
        ...


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
        made: list[tuple[MemoryLimit, int, bool]] = []  # (limit, id, is a request rate)
        for take in takes:
            limit = self.limit(take.spec)
            if take.peek:
                take.used = limit.used(take.partition, now)
                continue
            if take.clip:
                left = take.spec.limit - limit.used(take.partition, now)
                if 0 < left < take.amount:
                    take.amount = left
            answer = limit.take(take.partition, take.amount, now)
            take.answer = answer
            if isinstance(answer, Grant):
                if answer.id is not None:
                    made.append((limit, answer.id, take.spec.kind == "rate"))
            elif take.enforce:
                for held_limit, id, _ in made:
                    held_limit.release(id, now)
                return False
        # Admitted: request rates are final now (a request is a request, whatever it uses).
        for limit, id, final in made:
            if final:
                limit.settle(id, 1, now)
        return True

    async def admit_async(self, takes: Sequence[Take]) -> bool:
        """`admit`, for callers that serve any backend (this one never waits)."""
        return self.admit(takes)

    def used(self, spec: LimitSpec, partition: str) -> int:
        return self.limit(spec).used(partition, self.clock())

    def status(self) -> dict[str, Any]:
        """For `/readyz`."""
        return {"backend": self.name, "available": True}

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
