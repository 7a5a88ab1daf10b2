"""Routing: aliases and strategies, retries with backoff and a budget, circuit breakers.

Pure decision logic, no I/O: the request pipeline asks `Router.plan` for a request's candidate
targets and `Plan.next_attempt` for each attempt, and reports outcomes with `Router.observe`.
The rules and guarantees are stated in each module's docstring and in docs/routing.md.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollway.routing.breaker import CircuitBreaker, CircuitState, counts_against_circuit
    from tollway.routing.config import (
        CircuitConfig,
        LatencyConfig,
        RetryBudgetConfig,
        RetryConfig,
        RetryOverride,
        RouteConfig,
        RoutingConfig,
        TargetConfig,
        validate_routes,
        validate_routing,
    )
    from tollway.routing.retry import Backoff, RetryBudget, is_retryable, wait_hint
    from tollway.routing.router import (
        AttemptReason,
        Plan,
        PriceFn,
        Router,
        RoutingError,
        Skip,
        Step,
        StopReason,
        Target,
    )

# Imported on first use (PEP 562): `tollway.config.schema` embeds the routing config structs,
# and the router imports modules that import the schema, so an eager import here would be a
# cycle.
_EXPORTS = {
    "AttemptReason": "tollway.routing.router",
    "Backoff": "tollway.routing.retry",
    "CircuitBreaker": "tollway.routing.breaker",
    "CircuitConfig": "tollway.routing.config",
    "CircuitState": "tollway.routing.breaker",
    "LatencyConfig": "tollway.routing.config",
    "Plan": "tollway.routing.router",
    "PriceFn": "tollway.routing.router",
    "RetryBudget": "tollway.routing.retry",
    "RetryBudgetConfig": "tollway.routing.config",
    "RetryConfig": "tollway.routing.config",
    "RetryOverride": "tollway.routing.config",
    "RouteConfig": "tollway.routing.config",
    "Router": "tollway.routing.router",
    "RoutingConfig": "tollway.routing.config",
    "RoutingError": "tollway.routing.router",
    "Skip": "tollway.routing.router",
    "Step": "tollway.routing.router",
    "StopReason": "tollway.routing.router",
    "Target": "tollway.routing.router",
    "TargetConfig": "tollway.routing.config",
    "counts_against_circuit": "tollway.routing.breaker",
    "is_retryable": "tollway.routing.retry",
    "validate_routes": "tollway.routing.config",
    "validate_routing": "tollway.routing.config",
    "wait_hint": "tollway.routing.retry",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AttemptReason",
    "Backoff",
    "CircuitBreaker",
    "CircuitConfig",
    "CircuitState",
    "LatencyConfig",
    "Plan",
    "PriceFn",
    "RetryBudget",
    "RetryBudgetConfig",
    "RetryConfig",
    "RetryOverride",
    "RouteConfig",
    "Router",
    "RoutingConfig",
    "RoutingError",
    "Skip",
    "Step",
    "StopReason",
    "Target",
    "TargetConfig",
    "counts_against_circuit",
    "is_retryable",
    "validate_routes",
    "validate_routing",
    "wait_hint",
]
