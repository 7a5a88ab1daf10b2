"""The router: which targets serve a request, in which order, and when to try the next one.

`Router` is built once per worker from `[[routes]]`, the model table and `[routing]`. For each
request, `Router.plan` resolves the requested model into an ordered list of candidate targets,
and the attempt loop asks the returned `Plan` for each attempt:

```python
plan = router.plan(body_model, identity, override=headers.get("x-tollway-target"), stream=stream)
failure = None
while (step := plan.next_attempt(failure, headers=..., started_streaming=...)) is not None:
    await asyncio.sleep(step.delay_s)
    ...  # call step.target with plan.timeouts(provider_timeouts); on failure set `failure`
    router.observe(step.target, kind_or_none, ttft_s=..., latency_s=...)
```

**Resolution.** A route name resolves to its targets, a nested route's targets taking its place
in its own order; a configured model name to itself; `provider/model` (configured provider) to
that model directly. A concrete target is `(provider, upstream model)`: it appears at most once
in a plan, at its first position, however many routes lead to it. Targets a route restricts
(`only_keys`, `only_teams`) to other callers are left out.

**Strategies** order a route's entries (a nested route counts as one entry, ranked by the target
it would try first; its weight is the entry's):

- `failover`: config order.
- `weighted`: the first pick is drawn with probability proportional to weight (weight 0: never
  first, still a fallback); the rest follow by descending weight, ties in config order.
- `latency`: lowest moving average first, of time to first token for streamed requests and of
  total latency otherwise. Exploration: targets without a sample come first (config order), so
  each gets measured; and with probability `explore` a uniformly drawn other target goes
  first, so an average measured during a slow spell does not keep a target out for ever.
- `cost`: cheapest first by the price function (prompt, output USD per million tokens), blended
  3:1 (prompt:output, the usual token mix of chat traffic); unpriced targets last, ties and
  unpriced targets in config order.

**Circuits.** Targets whose circuit is open are skipped. A plan never skips every target: if all
are open, the one whose open period ends first gets the request, as its probe.

**The attempt loop** (`Plan.next_attempt`), after a failed attempt, in this order:

1. once a byte of the answer reached the client (`started_streaming`), no further attempt;
2. at most `max_attempts` attempts per request;
3. a context-length error (`FailureKind.CONTEXT_LENGTH`) switches to the
   `fallback_on_context_length` of the innermost route the failed target came through (a route
   or a model; no backoff, no budget): the targets of the fallback replace the remaining ones;
4. a retryable failure (`tollway.routing.retry.is_retryable`) moves to the next target after
   a backoff (`retry`), within the route's `max_retries`; a failure of the target itself that
   is not transient (rejected credentials, a response that is not the protocol) moves on
   without backoff (`fallback`); any other failure (an invalid request) ends the request;
5. a provider's wait hint (`Retry-After`, rate-limit resets) holds that provider's other
   targets until it passes, or rules them out if it exceeds `honour_retry_after_up_to_s`;
6. the attempt must start before the request's deadline (`deadline_s` after planning);
7. a `retry` or `fallback` withdraws from the process-wide retry budget, or the request ends.

A target is never tried twice in a request: retries always go to the next target. Each of
these ends is reported as `Plan.stop_reason`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from tollway.auth import Identity
from tollway.config._toml_lines import format_path
from tollway.config.schema import ModelConfig, Timeouts
from tollway.errors import ConfigError, TollwayError
from tollway.routing.breaker import CircuitBreaker, CircuitState, counts_against_circuit
from tollway.routing.config import (
    RetryConfig,
    RouteConfig,
    RoutingConfig,
    Strategy,
    validate_routes,
    validate_routing,
)
from tollway.routing.retry import Backoff, RetryBudget, is_retryable, wait_hint
from tollway.upstream import Failure, FailureKind

AttemptReason = Literal["primary", "retry", "fallback", "context_length_fallback"]
StopReason = Literal[
    "streaming_started",  # a byte reached the client: failing over would mix two answers
    "not_retryable",  # the request itself is invalid; another target would refuse it too
    "no_context_fallback",  # the prompt is too long and no larger-context fallback applies
    "max_attempts",
    "max_retries",
    "deadline",  # the next attempt could not start before the request's deadline
    "retry_budget",  # the process-wide retry budget is spent
    "exhausted",  # every candidate was tried or skipped
]
SkipReason = Literal[
    "restricted",  # `only_keys` / `only_teams` admit other callers only
    "circuit_open",
    "provider_waiting",  # the provider asked to wait longer than `honour_retry_after_up_to_s`
]
RoutingErrorCode = Literal["model_not_found", "no_allowed_target", "override_not_allowed", "override_unknown"]
# (provider, upstream model) -> (prompt, output) USD per million tokens, or None if unpriced.
PriceFn = Callable[[str, str], tuple[float, float] | None]

# Failures of the target itself that another attempt at the same target would meet again, but
# another target may not: moved past without backoff.
_FAILOVER = frozenset({FailureKind.CREDENTIALS, FailureKind.BAD_RESPONSE})
# Memory bound for circuits of `provider/model` targets named by requests, not by config.
_MAX_DIRECT_BREAKERS = 1024


class RoutingError(TollwayError, LookupError):
    """A request names a model or target that the router cannot serve it; `code` says which."""

    def __init__(self, code: RoutingErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Target:
    """A concrete target: a provider and the model name it is sent."""

    name: str  # as configured or requested: a [[models]] name, or `provider/model`
    provider: str
    model: str  # the upstream model name

    @property
    def key(self) -> tuple[str, str]:
        """What makes two targets the same: circuits and averages are kept per key."""
        return (self.provider, self.model)


@dataclass(frozen=True, slots=True)
class Step:
    """The next attempt: where, why, and how long to wait before it."""

    target: Target
    reason: AttemptReason
    delay_s: float
    number: int  # 1 for the first attempt of the request


@dataclass(frozen=True, slots=True)
class Skip:
    """A target (or nested route) left out of a request, and why."""

    name: str
    reason: SkipReason


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    target: Target | None  # None: `name` is a nested route
    weight: float
    only_keys: frozenset[str] | None
    only_teams: frozenset[str] | None

    def admits(self, identity: Identity) -> bool:
        if self.only_keys is None and self.only_teams is None:
            return True
        return identity.key_name in (self.only_keys or ()) or (
            identity.team is not None and identity.team in (self.only_teams or ())
        )


@dataclass(frozen=True, slots=True)
class _Route:
    name: str
    strategy: Strategy
    entries: tuple[_Entry, ...]
    fallback: str | None
    allow_override: bool
    retry: RetryConfig


@dataclass(frozen=True, slots=True)
class _Candidate:
    target: Target
    routes: tuple[str, ...]  # the routes it was reached through, outermost first


_Unit = tuple[_Entry, list[_Candidate]]


class Router:
    """Routing state of one worker: routes, circuits, latency averages, the retry budget.

    Not thread-safe: one per event loop. `clock` is monotonic seconds (circuits, budget,
    deadlines); `wall_clock` is Unix time (only to read timestamps in providers' headers).
    """

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        models: Sequence[ModelConfig],
        providers: Collection[str],
        settings: RoutingConfig | None = None,
        *,
        price: PriceFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        by_catalog: Callable[[str], Target | None] | None = None,
    ) -> None:
        settings = settings or RoutingConfig()
        problems = validate_routes(routes, {m.name for m in models}, providers) + validate_routing(settings)
        if problems:
            raise ConfigError([f"{format_path(path)}: {message}" for path, message in problems])
        self.settings = settings
        self._providers = frozenset(providers)
        self._models = {m.name: Target(m.name, m.provider, m.upstream_model) for m in models}
        self._price = price
        # Last resort for a name that is no route, model or `provider/model`: the model catalog's
        # provider kind for it, served by a configured provider of that kind.
        self._by_catalog = by_catalog
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._budget = RetryBudget(settings.retry_budget, clock)
        route_names = {r.name for r in routes}
        self._routes: dict[str, _Route] = {}
        for route in routes:
            entries = tuple(
                _Entry(
                    t.model,
                    None if t.model in route_names else self.resolve(t.model),
                    t.weight,
                    None if t.only_keys is None else frozenset(t.only_keys),
                    None if t.only_teams is None else frozenset(t.only_teams),
                )
                for t in route.targets
            )
            retry = route.retry.over(settings.retry) if route.retry is not None else settings.retry
            self._routes[route.name] = _Route(
                route.name, route.strategy, entries, route.fallback_on_context_length, route.allow_key_override, retry
            )
        self._configured = {t.key for t in self._models.values()} | {
            e.target.key for r in self._routes.values() for e in r.entries if e.target is not None
        }
        # Circuits exist only for targets that have failed; no entry means closed.
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._direct_breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self._ttft: dict[tuple[str, str], float] = {}
        self._latency: dict[tuple[str, str], float] = {}

    def resolve(self, name: str) -> Target | None:
        """The target a model name or `provider/model` denotes (not a route), or `None`: a
        [[models]] name, then `provider/model`, then a well-known model of the catalog served by
        a configured provider of its kind."""
        target = self._models.get(name)
        if target is not None:
            return target
        provider, sep, model = name.partition("/")
        if sep and model and provider in self._providers:
            return Target(name, provider, model)
        return self._by_catalog(name) if self._by_catalog is not None else None

    def first_target(self, name: str) -> Target | None:
        """The target a name denotes before any strategy or failure: a route's first target
        (nested routes followed; cycles are refused by validation), else `resolve`. For
        questions about a model that make no call (counting tokens): no plan, no retry budget."""
        route = self._routes.get(name)
        if route is None:
            return self.resolve(name)
        for entry in route.entries:
            found = entry.target if entry.target is not None else self.first_target(entry.name)
            if found is not None:
                return found
        return None

    def plan(
        self, requested_model: str, identity: Identity, *, override: str | None = None, stream: bool = False
    ) -> Plan:
        """The ordered candidates for one request, ready for its attempt loop.

        `override`: the `x-tollway-target` header, a target's name (or `provider/model`) that
        then is the only candidate; the route must allow it. Raises `RoutingError` for an
        unknown model, a route with no target open to the caller, or a refused override.
        Every plan deposits into the retry budget.
        """
        skipped: list[Skip] = []
        notes: list[str] = []
        route = self._routes.get(requested_model)
        if route is None:
            target = self.resolve(requested_model)
            if target is None:
                raise RoutingError("model_not_found", f"model `{requested_model}` does not exist on this gateway")
            if override is not None:
                raise RoutingError(
                    "override_not_allowed",
                    f"`x-tollway-target` applies to routes only, and `{requested_model}` is a model",
                )
            pool = [_Candidate(target, ())]
            retry = self.settings.retry
        else:
            pool = self._expand(route, identity, stream, (), skipped, notes)
            if not pool:
                raise RoutingError(
                    "no_allowed_target", f"route `{route.name}` has no target open to key `{identity.key_name}`"
                )
            if override is not None:
                pool = [self._pin(route, pool, override)]
                notes.append(f"`x-tollway-target` picked `{override}`")
            retry = route.retry
        self._budget.deposit()
        return Plan(self, requested_model, identity, stream, pool, skipped, notes, retry)

    def observe(
        self,
        target: Target,
        failure: FailureKind | None,
        *,
        ttft_s: float | None = None,
        latency_s: float | None = None,
    ) -> None:
        """Report how an attempt ended (`failure=None`: success) to the target's circuit and,
        for successes, its moving averages of time to first token and total latency.

        Do not report attempts that ended because the client left: they say nothing about the
        target (a probe that is never reported is written off after one open period).
        """
        failed = counts_against_circuit(failure)
        breaker = self._breaker(target.key, create=failed)
        if breaker is not None:
            breaker.record(failed)
        if failure is None and target.key in self._configured:
            alpha = self.settings.latency.ewma_alpha
            for sample, averages in ((ttft_s, self._ttft), (latency_s, self._latency)):
                if sample is not None:
                    old = averages.get(target.key)
                    averages[target.key] = sample if old is None else alpha * sample + (1 - alpha) * old

    def circuit_state(self, target: Target) -> CircuitState:
        """The circuit of a target, for metrics and `/readyz`."""
        breaker = self._breaker(target.key, create=False)
        return CircuitState.CLOSED if breaker is None else breaker.state

    # -- internals ---------------------------------------------------------------------------
    def _breaker(self, key: tuple[str, str], *, create: bool) -> CircuitBreaker | None:
        configured = key in self._configured
        table = self._breakers if configured else self._direct_breakers
        breaker = table.get(key)
        if breaker is None and create:
            if not configured and len(table) >= _MAX_DIRECT_BREAKERS:
                del table[next(iter(table))]  # the oldest
            breaker = table[key] = CircuitBreaker(self.settings.circuit, self._clock)
        return breaker

    def _expand(
        self,
        route: _Route,
        identity: Identity,
        stream: bool,
        via: tuple[str, ...],
        skipped: list[Skip],
        notes: list[str],
    ) -> list[_Candidate]:
        """A route's concrete candidates in strategy order, nested routes flattened in place,
        each target once (first position wins)."""
        via = (*via, route.name)
        units: list[_Unit] = []
        for entry in route.entries:
            if not entry.admits(identity):
                skipped.append(Skip(entry.name, "restricted"))
                continue
            if entry.target is not None:
                members = [_Candidate(entry.target, via)]
            else:
                members = self._expand(self._routes[entry.name], identity, stream, via, skipped, notes)
            if members:
                units.append((entry, members))
        out: list[_Candidate] = []
        seen: set[tuple[str, str]] = set()
        for _, members in self._order(route, units, stream, notes):
            for candidate in members:
                if candidate.target.key not in seen:
                    seen.add(candidate.target.key)
                    out.append(candidate)
        return out

    def _order(self, route: _Route, units: list[_Unit], stream: bool, notes: list[str]) -> list[_Unit]:
        if len(units) < 2 or route.strategy == "failover":
            return units
        if route.strategy == "weighted":
            by_weight = sorted(units, key=lambda u: -u[0].weight)  # stable: ties in config order
            draw = self._rng.random() * sum(entry.weight for entry, _ in units)
            first = by_weight[0]  # also when every weight is 0, or rounding leaves `draw` unspent
            for unit in units:
                draw -= unit[0].weight
                if draw < 0:
                    first = unit
                    break
            return [first, *(u for u in by_weight if u is not first)]
        # A nested route is ranked by the target it would try first.
        if route.strategy == "latency":
            averages = self._ttft if stream else self._latency
            scores = [averages.get(members[0].target.key) for _, members in units]
        else:
            scores = [self._blended_price(members[0].target) for _, members in units]
        ranked = sorted((score, i) for i, score in enumerate(scores) if score is not None)
        unscored = [u for u, score in zip(units, scores, strict=True) if score is None]
        if route.strategy == "cost":
            return [units[i] for _, i in ranked] + unscored
        ordered = unscored + [units[i] for _, i in ranked]
        if self._rng.random() < self.settings.latency.explore:
            explored = ordered.pop(self._rng.randrange(1, len(ordered)))
            ordered.insert(0, explored)
            notes.append(f"route `{route.name}`: exploring `{explored[0].name}` first")
        return ordered

    def _blended_price(self, target: Target) -> float | None:
        prices = self._price(target.provider, target.model) if self._price is not None else None
        return None if prices is None else (3 * prices[0] + prices[1]) / 4

    def _pin(self, route: _Route, pool: list[_Candidate], override: str) -> _Candidate:
        if not route.allow_override:
            raise RoutingError("override_not_allowed", f"route `{route.name}` does not allow `x-tollway-target`")
        for candidate in pool:
            t = candidate.target
            if override in (t.name, f"{t.provider}/{t.model}"):
                return candidate
        names = ", ".join(f"`{c.target.name}`" for c in pool)
        raise RoutingError(
            "override_unknown",
            f"`{override}` is not a target of route `{route.name}` open to you; expected one of {names}",
        )

    def _stage(
        self, name: str, identity: Identity, stream: bool, skipped: list[Skip], notes: list[str]
    ) -> list[_Candidate]:
        """The candidates of a context-length fallback: a route's, or one model's."""
        route = self._routes.get(name)
        if route is not None:
            return self._expand(route, identity, stream, (), skipped, notes)
        target = self.resolve(name)
        assert target is not None, "validate_routes checked every fallback name"
        return [_Candidate(target, ())]


class Plan:
    """One request's routing: the candidates, and the decisions of its attempt loop.

    `candidates` is the order at planning time, open circuits skipped; `skipped` lists what was
    left out and why; `notes` explains choices worth recording (override, exploration, forced
    probes). After the loop, `stop_reason` says why no further attempt was made (`None` if the
    loop ended on a success).
    """

    def __init__(
        self,
        router: Router,
        requested_model: str,
        identity: Identity,
        stream: bool,
        pool: list[_Candidate],
        skipped: list[Skip],
        notes: list[str],
        retry: RetryConfig,
    ) -> None:
        self._router = router
        self.requested_model = requested_model
        self._identity = identity
        self._stream = stream
        self._pool = pool  # the current stage's candidates (replaced by a context-length fallback)
        self._stage_attempts = 0
        self.skipped = skipped
        self.notes = notes
        self._retry = retry
        self._backoff = Backoff(retry.base_delay_ms / 1000, retry.max_delay_ms / 1000, router._rng)
        self.deadline = router._clock() + router.settings.deadline_s
        self.attempts = 0
        self.retries = 0
        self.stop_reason: StopReason | None = None
        self._tried: set[tuple[str, str]] = set()
        self._last: _Candidate | None = None
        self._not_before: dict[str, float] = {}  # provider -> clock time its wait hint ends
        self._ruled_out: set[str] = set()  # providers whose wait hint exceeded the cap
        available = [c.target for c in pool if not self._circuit_open(c)]
        self.candidates: tuple[Target, ...] = tuple(available) if available else (self._earliest(pool).target,)
        for c in pool:
            if c.target not in self.candidates:
                self._skip(c.target.name, "circuit_open")

    def remaining_s(self) -> float:
        """Seconds left before the request's deadline (negative once passed)."""
        return self.deadline - self._router._clock()

    def timeouts(self, base: Timeouts) -> Timeouts:
        """A provider's per-attempt timeouts, each cut to the time left before the deadline."""
        left = max(0.0, self.remaining_s())
        return msgspec.structs.replace(
            base,
            connect=min(base.connect, left),
            first_byte=min(base.first_byte, left),
            idle=min(base.idle, left),
            total=min(base.total, left),
        )

    def next_attempt(
        self,
        last_failure: Failure | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        started_streaming: bool = False,
    ) -> Step | None:
        """The next attempt, or `None` when the request is done (`stop_reason` says why).

        Call it with no failure for the first attempt, then with each failed attempt's
        `Failure`, the failed response's `headers` (lower-case names; for wait hints; without
        them `Failure.retry_after` is used), and `started_streaming=True` once any byte of the
        answer reached the client.
        """
        if self.stop_reason is not None:
            return None
        decision = self._decide(last_failure, headers, started_streaming)
        if isinstance(decision, Step):
            return decision
        self.stop_reason = decision
        return None

    # -- internals ---------------------------------------------------------------------------
    def _decide(
        self,
        last_failure: Failure | None,
        headers: Mapping[str, str] | None,
        started_streaming: bool,
    ) -> Step | StopReason:
        router = self._router
        now = router._clock()
        if self._last is None:
            if last_failure is not None:
                raise ValueError("the first call of next_attempt has no failure to report")
            picked = self._pick(now)
            assert picked is not None, "a new plan always has an untried candidate"
            return self._start(picked[0], "primary", picked[1])
        if last_failure is None:
            raise ValueError("next_attempt needs the failure of the last attempt; after a success the request is done")
        if started_streaming:
            return "streaming_started"
        if self.attempts >= router.settings.max_attempts:
            return "max_attempts"
        if last_failure.kind is FailureKind.CONTEXT_LENGTH:
            return self._context_length_fallback(now)
        reason: AttemptReason
        if is_retryable(last_failure.kind):
            if self.retries >= self._retry.max_retries:
                return "max_retries"
            reason = "retry"
            if headers is None:
                headers = {"retry-after": last_failure.retry_after} if last_failure.retry_after else {}
            hint = wait_hint(headers, router._wall_clock())
            if hint is not None:
                self._hold(self._last.target.provider, now, hint)
            delay = self._backoff.delay(self.retries)
        elif last_failure.kind in _FAILOVER:
            reason, delay = "fallback", 0.0
        else:
            return "not_retryable"
        picked = self._pick(now)
        if picked is None:
            return "exhausted"
        candidate, wait = picked
        delay = max(delay, wait)
        if now + delay >= self.deadline:
            return "deadline"
        if not router._budget.can_retry():
            return "retry_budget"
        if reason == "retry":
            self.retries += 1
        return self._start(candidate, reason, delay)

    def _context_length_fallback(self, now: float) -> Step | StopReason:
        assert self._last is not None
        fallback = next(
            (fb for name in reversed(self._last.routes) if (fb := self._router._routes[name].fallback) is not None),
            None,
        )
        if fallback is None:
            return "no_context_fallback"
        pool = self._router._stage(fallback, self._identity, self._stream, self.skipped, self.notes)
        if not pool:
            return "no_context_fallback"
        self._pool = pool
        self._stage_attempts = 0
        self.notes.append(f"prompt too long for `{self._last.target.name}`: falling back to `{fallback}`")
        picked = self._pick(now)
        if picked is None:
            return "exhausted"
        candidate, wait = picked
        if now + wait >= self.deadline:
            return "deadline"
        return self._start(candidate, "context_length_fallback", wait)

    def _pick(self, now: float) -> tuple[_Candidate, float] | None:
        """The first untried candidate the circuits and wait hints allow, with its wait; for
        the first attempt of a stage, never none while an untried one is left."""
        untried = [
            c for c in self._pool if c.target.key not in self._tried and c.target.provider not in self._ruled_out
        ]
        for c in self._pool:
            if c.target.key not in self._tried and c.target.provider in self._ruled_out:
                self._skip(c.target.name, "provider_waiting")
        chosen = None
        for c in untried:
            if not self._circuit_open(c):
                chosen = c
                break
            self._skip(c.target.name, "circuit_open")
        if chosen is None:
            if self._stage_attempts > 0 or not untried:
                return None
            chosen = self._earliest(untried)
            self.notes.append(f"every circuit is open: probing `{chosen.target.name}`, the first to reopen")
        return chosen, max(0.0, self._not_before.get(chosen.target.provider, now) - now)

    def _circuit_open(self, candidate: _Candidate) -> bool:
        breaker = self._router._breaker(candidate.target.key, create=False)
        return breaker is not None and not breaker.available()

    def _earliest(self, candidates: list[_Candidate]) -> _Candidate:
        def ready_at(c: _Candidate) -> float:
            breaker = self._router._breaker(c.target.key, create=False)
            return breaker.ready_at() if breaker is not None else float("-inf")

        return min(candidates, key=ready_at)

    def _hold(self, provider: str, now: float, hint: float) -> None:
        if hint > self._retry.honour_retry_after_up_to_s:
            self._ruled_out.add(provider)
        else:
            self._not_before[provider] = max(self._not_before.get(provider, now), now + hint)

    def _start(self, candidate: _Candidate, reason: AttemptReason, delay: float) -> Step:
        breaker = self._router._breaker(candidate.target.key, create=False)
        if breaker is not None:
            breaker.admit()
        self._tried.add(candidate.target.key)
        self._last = candidate
        self.attempts += 1
        self._stage_attempts += 1
        return Step(candidate.target, reason, delay, self.attempts)

    def _skip(self, name: str, reason: SkipReason) -> None:
        skip = Skip(name, reason)
        if skip not in self.skipped:
            self.skipped.append(skip)
