"""Routing configuration: `[[routes]]` (aliases and their targets) and `[routing]` (globals).

A route is a model name clients send that maps to targets. A target's `model` is one of

- a configured model name (`[[models]] name`),
- another route's name (a nested route: its targets are tried in its own order, in place),
- `provider/model` with a configured provider (any model of that provider, addressed directly).

Names resolve in that order; `validate_routes` makes sure they cannot be ambiguous: a route
name may not equal a model name nor look like `provider/model` for a configured provider.

```toml
[routing]
max_attempts = 3
deadline_s = 600
retry = { max_retries = 2, base_delay_ms = 100, max_delay_ms = 5000, honour_retry_after_up_to_s = 30 }

[[routes]]
name = "smart"
strategy = "weighted"
targets = [
  { model = "gpt-4o", weight = 3 },
  { model = "anthropic/claude-sonnet-4-5", weight = 1, only_teams = ["research"] },
]
fallback_on_context_length = "long-context"
```

Invariants `validate_routes` guarantees (the router relies on them): every target and
`fallback_on_context_length` resolves; names are unique and unambiguous; weights are finite and
`>= 0`, and a `weighted` route has a positive one; no route reaches itself through nested
targets or context-length fallbacks, so resolving a name always terminates.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Literal

import msgspec

from tollway.config._toml_lines import Path

Strategy = Literal["failover", "weighted", "latency", "cost"]


class RetryConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Retries after retryable failures (see `tollway.routing.retry`).

    `max_retries`: retries per request (each to another target); `base_delay_ms` and
    `max_delay_ms`: the full-jitter backoff; `honour_retry_after_up_to_s`: a provider's
    `Retry-After` (or rate-limit reset) up to this long is waited for before another target of
    that provider; a longer one rules that provider out for the rest of the request.
    """

    max_retries: int = 2
    base_delay_ms: float = 100.0
    max_delay_ms: float = 5000.0
    honour_retry_after_up_to_s: float = 30.0


class RetryOverride(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A route's `retry`: the keys it sets replace the global `[routing.retry]` ones."""

    max_retries: int | None = None
    base_delay_ms: float | None = None
    max_delay_ms: float | None = None
    honour_retry_after_up_to_s: float | None = None

    def over(self, base: RetryConfig) -> RetryConfig:
        changed = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not None}
        return msgspec.structs.replace(base, **changed)


class RetryBudgetConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Retries (and fallbacks) may add at most `ratio` of the requests of the last `window_s`
    seconds, plus `min_per_second` so that a quiet gateway can still retry."""

    ratio: float = 0.2
    min_per_second: float = 1.0
    window_s: float = 10.0


class CircuitConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Circuit breaking per target (see `tollway.routing.breaker`)."""

    consecutive_failures: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    window_s: float = 30.0
    open_for_s: float = 30.0
    half_open_probes: int = 1
    # Each failed probe doubles the open period, up to this.
    max_open_for_s: float = 300.0


class LatencyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The `latency` strategy: `ewma_alpha` weighs the newest sample of the moving averages;
    `explore` is the share of requests whose first pick is a random other target, so that a
    target's average does not go stale once it has been measured slow."""

    ewma_alpha: float = 0.3
    explore: float = 0.05


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`[routing]`: limits that apply to every request."""

    max_attempts: int = 3
    deadline_s: float = 600.0
    retry: RetryConfig = RetryConfig()
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    circuit: CircuitConfig = CircuitConfig()
    latency: LatencyConfig = LatencyConfig()


class TargetConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One target of a route. `only_keys` / `only_teams`: when either is set, only callers
    whose key is listed or whose team is listed may be routed to this target."""

    model: str
    weight: float = 1.0
    only_keys: list[str] | None = None
    only_teams: list[str] | None = None


class RouteConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`[[routes]]`: a model name clients use, and how it maps to targets."""

    name: str
    targets: list[TargetConfig]
    strategy: Strategy = "failover"
    # A route or model to switch to when a target says the prompt is too long for it.
    fallback_on_context_length: str | None = None
    # Whether a request may pick one of the targets with the `x-tollway-target` header.
    allow_key_override: bool = False
    retry: RetryOverride | None = None


Problem = tuple[Path, str]


def validate_routes(
    routes: Sequence[RouteConfig | None],
    model_names: Collection[str],
    provider_names: Collection[str],
    *,
    key_names: Collection[str] | None = None,
) -> list[Problem]:
    """Every problem of `[[routes]]`, as (path, message); the path is the loader's tuple form
    (`("routes", 1, "targets", 0, "model")`, shown as `routes[1].targets[0].model`).

    Items that failed to decode may be `None` (the loader's partial config); they are skipped.
    With `key_names`, `only_keys` entries must name configured keys.
    """
    problems: list[Problem] = []
    route_index: dict[str, int] = {}
    for i, route in enumerate(routes):
        if route is None:
            continue
        at: Path = ("routes", i)
        if route.name in route_index:
            problems.append(
                ((*at, "name"), f"duplicate route name `{route.name}` (first at routes[{route_index[route.name]}])")
            )
            continue
        route_index[route.name] = i
        if route.name in model_names:
            problems.append(((*at, "name"), f"route `{route.name}` has the name of a model in [[models]]"))
        provider, sep, _ = route.name.partition("/")
        if sep and provider in provider_names:
            problems.append(
                ((*at, "name"), f"route `{route.name}` hides the direct address `provider/model` of `{provider}`")
            )

    def known(name: str) -> bool:
        provider, sep, model = name.partition("/")
        return name in route_index or name in model_names or bool(sep and model and provider in provider_names)

    def unknown(name: str) -> str:
        return (
            f"unknown model `{name}`; expected a [[models]] name, a route name, "
            "or `provider/model` with a configured provider"
        )

    for i, route in enumerate(routes):
        if route is None or route_index.get(route.name) != i:
            continue
        at = ("routes", i)
        if not route.targets:
            problems.append(((*at, "targets"), "expected at least one target"))
        seen: dict[str, int] = {}
        for j, target in enumerate(route.targets):
            if target is None:
                continue
            t_at: Path = (*at, "targets", j)
            if target.model in seen:
                first = seen[target.model]
                problems.append(((*t_at, "model"), f"`{target.model}` is already a target (targets[{first}])"))
            seen.setdefault(target.model, j)
            if not known(target.model):
                problems.append(((*t_at, "model"), unknown(target.model)))
            if not math.isfinite(target.weight) or target.weight < 0:
                problems.append(((*t_at, "weight"), f"expected a finite weight >= 0, got {target.weight}"))
            if target.only_keys is not None or target.only_teams is not None:
                if not target.only_keys and not target.only_teams:
                    problems.append((t_at, "`only_keys` and `only_teams` admit nobody; remove them to admit everyone"))
                for k, key in enumerate(target.only_keys or []):
                    if key_names is not None and key not in key_names:
                        problems.append(((*t_at, "only_keys", k), f"unknown key `{key}`; it is not in [[keys]]"))
        weights = [t.weight for t in route.targets if t is not None]
        if route.strategy == "weighted" and weights and all(w == 0 for w in weights):
            problems.append(((*at, "targets"), "every weight is 0; a `weighted` route needs a positive weight"))
        fallback = route.fallback_on_context_length
        if fallback is not None and not known(fallback):
            problems.append(((*at, "fallback_on_context_length"), unknown(fallback)))
        if route.retry is not None:
            problems.extend(_check_retry(route.retry, (*at, "retry")))

    problems.extend(_cycles(routes, route_index))
    return problems


def _cycles(routes: Sequence[RouteConfig | None], route_index: dict[str, int]) -> list[Problem]:
    """Routes that reach themselves through nested targets or context-length fallbacks.

    An iterative depth-first search over the route graph: a back edge (to a route on the
    current path) closes a cycle, reported once at the edge that closes it, as `a -> b -> a`.
    """

    def edges(name: str) -> list[tuple[str, Path]]:
        i = route_index[name]
        route = routes[i]
        assert route is not None
        out: list[tuple[str, Path]] = [
            (t.model, ("routes", i, "targets", j, "model"))
            for j, t in enumerate(route.targets)
            if t is not None and t.model in route_index
        ]
        if route.fallback_on_context_length in route_index:
            out.append((route.fallback_on_context_length, ("routes", i, "fallback_on_context_length")))
        return out

    problems: list[Problem] = []
    done: set[str] = set()
    for root in route_index:
        if root in done:
            continue
        path = [root]
        on_path = {root}
        stack = [iter(edges(root))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
                continue
            name, at = step
            if name in on_path:
                cycle = [*path[path.index(name) :], name]
                problems.append((at, f"cyclic routes `{' -> '.join(cycle)}`; a route may not lead back to itself"))
            elif name not in done:
                path.append(name)
                on_path.add(name)
                stack.append(iter(edges(name)))
    return problems


def validate_routing(settings: RoutingConfig) -> list[Problem]:
    """Every out-of-range number of `[routing]`, as (path, message)."""
    problems: list[Problem] = []
    at: Path = ("routing",)

    def need(ok: bool, path: Path, expected: str, got: float) -> None:
        if not ok:
            problems.append((path, f"expected {expected}, got {got}"))

    need(settings.max_attempts >= 1, (*at, "max_attempts"), "at least 1", settings.max_attempts)
    need(_positive(settings.deadline_s), (*at, "deadline_s"), "a positive number of seconds", settings.deadline_s)
    problems.extend(_check_retry(settings.retry, (*at, "retry")))
    budget = settings.retry_budget
    b_at: Path = (*at, "retry_budget")
    need(math.isfinite(budget.ratio) and budget.ratio >= 0, (*b_at, "ratio"), "a ratio >= 0", budget.ratio)
    need(
        math.isfinite(budget.min_per_second) and budget.min_per_second >= 0,
        (*b_at, "min_per_second"),
        "a rate >= 0",
        budget.min_per_second,
    )
    need(_positive(budget.window_s), (*b_at, "window_s"), "a positive number of seconds", budget.window_s)
    circuit = settings.circuit
    c_at: Path = (*at, "circuit")
    need(circuit.consecutive_failures >= 1, (*c_at, "consecutive_failures"), "at least 1", circuit.consecutive_failures)
    need(0 < circuit.error_rate <= 1, (*c_at, "error_rate"), "a rate in (0, 1]", circuit.error_rate)
    need(circuit.min_requests >= 1, (*c_at, "min_requests"), "at least 1", circuit.min_requests)
    need(_positive(circuit.window_s), (*c_at, "window_s"), "a positive number of seconds", circuit.window_s)
    need(_positive(circuit.open_for_s), (*c_at, "open_for_s"), "a positive number of seconds", circuit.open_for_s)
    need(circuit.half_open_probes >= 1, (*c_at, "half_open_probes"), "at least 1", circuit.half_open_probes)
    need(
        math.isfinite(circuit.max_open_for_s) and circuit.max_open_for_s >= circuit.open_for_s,
        (*c_at, "max_open_for_s"),
        f"at least `open_for_s` ({circuit.open_for_s})",
        circuit.max_open_for_s,
    )
    latency = settings.latency
    l_at: Path = (*at, "latency")
    need(0 < latency.ewma_alpha <= 1, (*l_at, "ewma_alpha"), "a weight in (0, 1]", latency.ewma_alpha)
    need(0 <= latency.explore <= 1, (*l_at, "explore"), "a share in [0, 1]", latency.explore)
    return problems


def _check_retry(retry: RetryConfig | RetryOverride, at: Path) -> list[Problem]:
    problems: list[Problem] = []
    if retry.max_retries is not None and retry.max_retries < 0:
        problems.append(((*at, "max_retries"), f"expected a count >= 0, got {retry.max_retries}"))
    for name in ("base_delay_ms", "max_delay_ms", "honour_retry_after_up_to_s"):
        value = getattr(retry, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            problems.append(((*at, name), f"expected a finite number >= 0, got {value}"))
    return problems


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0
