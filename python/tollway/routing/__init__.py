"""Routing: aliases and strategies, retries with backoff and a budget, circuit breakers.

Pure decision logic, no I/O: the request pipeline asks `Router.plan` for a request's candidate
targets and `Plan.next_attempt` for each attempt, and reports outcomes with `Router.observe`.
The rules and guarantees are stated in each module's docstring and in docs/routing.md.
"""

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
