"""Routing: config validation, backoff and wait hints, the retry budget, circuit breakers, the
strategies and the attempt loop.

Everything runs on an injected clock and a seeded random source: no test sleeps or depends on
timing. The properties at the end drive the attempt loop with arbitrary failure sequences and
check the promises users rely on: each target at most once, at most `max_attempts`, never every
target skipped, retries within the budget, nothing after the first byte or past the deadline.
"""

from __future__ import annotations

import itertools
import random
import tomllib
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.auth import Identity
from tollway.config.schema import ModelConfig, Timeouts
from tollway.errors import ConfigError
from tollway.routing import (
    Backoff,
    CircuitBreaker,
    CircuitConfig,
    CircuitState,
    LatencyConfig,
    Plan,
    RetryBudget,
    RetryBudgetConfig,
    RetryConfig,
    RetryOverride,
    RouteConfig,
    Router,
    RoutingConfig,
    RoutingError,
    Skip,
    Step,
    Target,
    TargetConfig,
    counts_against_circuit,
    is_retryable,
    validate_routes,
    validate_routing,
    wait_hint,
)
from tollway.routing.config import Problem
from tollway.routing.retry import parse_duration, parse_retry_after, parse_rfc3339
from tollway.upstream import Failure, FailureKind

NOW_EPOCH = 1_735_689_600.0  # 2025-01-01T00:00:00Z
ALICE = Identity("alice", team="research")
BOB = Identity("bob", team="sales")
PROVIDERS = ("openai", "anthropic", "azure")
MODELS = [
    ModelConfig("gpt", "openai", "gpt-4o"),
    ModelConfig("gpt-azure", "azure", "gpt-4o-deploy"),
    ModelConfig("claude", "anthropic", "claude-sonnet"),
    ModelConfig("mini", "openai", "gpt-4o-mini"),
    ModelConfig("long", "anthropic", "claude-1m"),
]


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def route(name: str, *models: str, **options: object) -> RouteConfig:
    return msgspec.convert(
        {"name": name, "targets": [{"model": m} for m in models], **options}, RouteConfig, strict=False
    )


def make_router(
    routes: Sequence[RouteConfig],
    settings: RoutingConfig | None = None,
    *,
    clock: FakeClock | None = None,
    seed: int = 7,
    price: object = None,
) -> Router:
    return Router(
        routes,
        MODELS,
        PROVIDERS,
        settings,
        price=price,  # type: ignore[arg-type]
        clock=clock or FakeClock(),
        wall_clock=lambda: NOW_EPOCH,
        rng=random.Random(seed),
    )


def fail(kind: FailureKind, provider: str = "openai", retry_after: str | None = None) -> Failure:
    return Failure(kind, provider, f"{kind.value} from {provider}", retry_after=retry_after)


def names(targets: Sequence[Target]) -> list[str]:
    return [t.name for t in targets]


def first(plan: Plan) -> Step:
    step = plan.next_attempt()
    assert step is not None
    return step


NO_BUDGET_LIMIT = RetryBudgetConfig(ratio=1.0, min_per_second=1000.0)


# -- config ----------------------------------------------------------------------------------


class Doc(msgspec.Struct, forbid_unknown_fields=True):
    routing: RoutingConfig = RoutingConfig()
    routes: list[RouteConfig] = []


def test_config_decodes_from_toml_with_documented_defaults() -> None:
    text = """
    [routing]
    max_attempts = 4
    retry = { max_retries = 1 }

    [[routes]]
    name = "smart"
    strategy = "weighted"
    targets = [{ model = "gpt", weight = 3 }, { model = "anthropic/claude-haiku", only_teams = ["research"] }]
    fallback_on_context_length = "long"
    retry = { base_delay_ms = 50 }
    """
    doc = msgspec.convert(tomllib.loads(text), Doc)
    assert doc.routing.max_attempts == 4
    assert doc.routing.retry == RetryConfig(max_retries=1)
    assert doc.routing.retry_budget == RetryBudgetConfig(ratio=0.2, min_per_second=1.0, window_s=10.0)
    assert doc.routing.circuit.consecutive_failures == 5 and doc.routing.circuit.half_open_probes == 1
    assert doc.routing.latency.ewma_alpha == 0.3 and doc.routing.deadline_s == 600.0
    smart = doc.routes[0]
    assert smart.strategy == "weighted" and not smart.allow_key_override
    assert smart.targets[0] == TargetConfig("gpt", weight=3.0)
    assert smart.targets[1].only_teams == ["research"] and smart.targets[1].only_keys is None
    # A route's retry replaces only the keys it sets.
    assert smart.retry is not None
    assert smart.retry.over(doc.routing.retry) == RetryConfig(max_retries=1, base_delay_ms=50.0)
    assert validate_routes(doc.routes, {m.name for m in MODELS}, PROVIDERS) == []
    assert validate_routing(doc.routing) == []


def test_documented_routing_defaults_are_the_defaults() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "routing.md").read_text()
    block = next(b for b in docs.split("```toml")[1:] if b.lstrip().startswith("[routing]"))
    assert msgspec.convert(tomllib.loads(block.split("```")[0]), Doc).routing == RoutingConfig()


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(msgspec.ValidationError, match="wieght"):
        msgspec.convert({"name": "r", "targets": [{"model": "gpt", "wieght": 2}]}, RouteConfig)
    with pytest.raises(msgspec.ValidationError, match="strategy"):
        msgspec.convert({"name": "r", "targets": [], "strategy": "random"}, RouteConfig)


def check(*routes: RouteConfig, keys: Sequence[str] | None = None) -> list[tuple[str, str]]:
    problems = validate_routes(list(routes), {m.name for m in MODELS}, PROVIDERS, key_names=keys)
    return [(dotted(path), message) for path, message in problems]


def dotted(path: tuple[str | int, ...]) -> str:
    from tollway.config._toml_lines import format_path

    return format_path(path)


def test_validation_of_target_names() -> None:
    problems = check(route("r", "gpt", "openai/o3", "nope", "openia/gpt-4o", "openai/", "r2"))
    assert [p for p, _ in problems] == [f"routes[0].targets[{i}].model" for i in (2, 3, 4, 5)]
    assert "unknown model `nope`; expected a [[models]] name, a route name, or `provider/model`" in problems[0][1]
    # A nested route is a known name.
    assert check(route("r", "gpt", "r2"), route("r2", "claude")) == []


def test_validation_of_route_names() -> None:
    problems = check(route("r", "gpt"), route("gpt", "claude"), route("r", "claude"), route("openai/x", "gpt"))
    assert problems == [
        ("routes[1].name", "route `gpt` has the name of a model in [[models]]"),
        ("routes[2].name", "duplicate route name `r` (first at routes[0])"),
        ("routes[3].name", "route `openai/x` hides the direct address `provider/model` of `openai`"),
    ]


def test_validation_of_weights_and_targets() -> None:
    bad_weights = RouteConfig(
        "w",
        [TargetConfig("gpt", weight=-1), TargetConfig("claude", weight=float("nan")), TargetConfig("mini")],
    )
    assert check(bad_weights) == [
        ("routes[0].targets[0].weight", "expected a finite weight >= 0, got -1"),
        ("routes[0].targets[1].weight", "expected a finite weight >= 0, got nan"),
    ]
    zero = [TargetConfig("gpt", weight=0), TargetConfig("claude", weight=0)]
    assert check(RouteConfig("w", zero, strategy="weighted")) == [
        ("routes[0].targets", "every weight is 0; a `weighted` route needs a positive weight")
    ]
    assert check(RouteConfig("w", zero)) == []  # weights only matter to `weighted`
    assert check(RouteConfig("e", [])) == [("routes[0].targets", "expected at least one target")]
    assert check(route("d", "gpt", "claude", "gpt")) == [
        ("routes[0].targets[2].model", "`gpt` is already a target (targets[0])")
    ]


def test_validation_of_restrictions() -> None:
    nobody = RouteConfig("r", [TargetConfig("gpt", only_keys=[]), TargetConfig("claude", only_keys=["bob", "eve"])])
    assert check(nobody, keys=["alice", "bob"]) == [
        ("routes[0].targets[0]", "`only_keys` and `only_teams` admit nobody; remove them to admit everyone"),
        ("routes[0].targets[1].only_keys[1]", "unknown key `eve`; it is not in [[keys]]"),
    ]
    # Without key names, keys are not checked; teams are free-form.
    assert check(RouteConfig("r", [TargetConfig("gpt", only_keys=["eve"], only_teams=["x"])])) == []


def test_validation_of_fallback_and_retry_override() -> None:
    r = route("r", "gpt", fallback_on_context_length="huge", retry={"max_retries": -1, "max_delay_ms": float("inf")})
    assert check(r) == [
        ("routes[0].fallback_on_context_length", "unknown model `huge`; expected a [[models]] name, a route name, "
         "or `provider/model` with a configured provider"),
        ("routes[0].retry.max_retries", "expected a count >= 0, got -1"),
        ("routes[0].retry.max_delay_ms", "expected a finite number >= 0, got inf"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([route("a", "a")], [("routes[0].targets[0].model", "a -> a")]),
        ([route("a", "gpt", "b"), route("b", "claude", "a")], [("routes[1].targets[1].model", "a -> b -> a")]),
        (
            [
                route("a", "gpt", fallback_on_context_length="b"),
                route("b", "c"),
                route("c", "claude", fallback_on_context_length="a"),
            ],
            [("routes[2].fallback_on_context_length", "a -> b -> c -> a")],
        ),
        ([route("a", "gpt", fallback_on_context_length="a")], [("routes[0].fallback_on_context_length", "a -> a")]),
    ],
)
def test_cycles_are_rejected_with_their_path(routes: list[RouteConfig], expected: list[tuple[str, str]]) -> None:
    problems = check(*routes)
    assert [(path, msg.split("`")[1]) for path, msg in problems] == expected
    assert all("a route may not lead back to itself" in msg for _, msg in problems)


def test_shared_subroutes_are_not_cycles() -> None:
    # A diamond: a -> b -> d and a -> c -> d. Plenty of paths, no cycle.
    routes = [route("a", "b", "c"), route("b", "d"), route("c", "d", fallback_on_context_length="d"), route("d", "gpt")]
    assert check(*routes) == []


@given(st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_cycle_detection_matches_reachability(graph: list[list[int]]) -> None:
    """Routes `r0..rN` whose targets are other routes: a problem is reported exactly when some
    route can reach itself, and every reported path is a real cycle."""
    n = len(graph)
    routes = [RouteConfig(f"r{i}", [TargetConfig("gpt")] + [TargetConfig(f"r{j}") for j in set(edges) if j < n])
              for i, edges in enumerate(graph)]  # fmt: skip
    edges = {f"r{i}": {f"r{j}" for j in e if j < n} for i, e in enumerate(graph)}

    def reaches(src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt == dst:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    problems = check(*routes)
    assert bool(problems) == any(reaches(r, r) for r in edges)
    for _, message in problems:
        cycle = message.split("`")[1].split(" -> ")
        assert cycle[0] == cycle[-1]
        assert all(b in edges[a] for a, b in itertools.pairwise(cycle))


def test_validation_skips_items_that_did_not_decode() -> None:
    partial: list[RouteConfig | None] = [None, route("r", "gpt")]
    assert validate_routes(partial, {"gpt"}, ()) == []


def test_routing_settings_out_of_range() -> None:
    bad = RoutingConfig(
        max_attempts=0,
        deadline_s=0,
        retry_budget=RetryBudgetConfig(ratio=-0.1, window_s=0),
        circuit=CircuitConfig(error_rate=1.5, half_open_probes=0, max_open_for_s=10),
        latency=LatencyConfig(ewma_alpha=0, explore=2),
    )
    problems: list[Problem] = validate_routing(bad)
    assert [dotted(p) for p, _ in problems] == [
        "routing.max_attempts",
        "routing.deadline_s",
        "routing.retry_budget.ratio",
        "routing.retry_budget.window_s",
        "routing.circuit.error_rate",
        "routing.circuit.half_open_probes",
        "routing.circuit.max_open_for_s",
        "routing.latency.ewma_alpha",
        "routing.latency.explore",
    ]
    assert problems[6][1] == "expected at least `open_for_s` (30.0), got 10"


def test_router_refuses_an_invalid_config() -> None:
    with pytest.raises(ConfigError) as info:
        make_router([route("a", "b"), route("b", "a")], RoutingConfig(max_attempts=0))
    assert info.value.problems == [
        "routes[1].targets[0].model: cyclic routes `a -> b -> a`; a route may not lead back to itself",
        "routing.max_attempts: expected at least 1, got 0",
    ]


# -- retryable failures, backoff, wait hints ---------------------------------------------------

RETRYABLE = {
    FailureKind.UNREACHABLE: True,
    FailureKind.TIMEOUT: True,
    FailureKind.SERVER_ERROR: True,
    FailureKind.RATE_LIMITED: True,
    FailureKind.BROKEN_STREAM: True,
    FailureKind.CREDENTIALS: False,
    FailureKind.CLIENT_ERROR: False,
    FailureKind.BAD_RESPONSE: False,
    FailureKind.CONTEXT_LENGTH: False,
}
COUNTS_AGAINST_CIRCUIT = {
    **dict.fromkeys(FailureKind, True),
    FailureKind.CLIENT_ERROR: False,
    FailureKind.CONTEXT_LENGTH: False,
}


def test_every_failure_kind_has_a_decision() -> None:
    assert set(RETRYABLE) == set(FailureKind) == set(COUNTS_AGAINST_CIRCUIT)
    assert {k: is_retryable(k) for k in FailureKind} == RETRYABLE
    assert {k: counts_against_circuit(k) for k in FailureKind} == COUNTS_AGAINST_CIRCUIT
    assert counts_against_circuit(None) is False  # success


@given(
    base=st.floats(0, 10),
    cap=st.floats(0, 60),
    retry=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=300, deadline=None)
def test_backoff_stays_within_full_jitter_bounds(base: float, cap: float, retry: int, seed: int) -> None:
    backoff = Backoff(base, cap, random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(retry, 64))
    assert backoff.ceiling(retry) == ceiling
    assert 0.0 <= backoff.delay(retry) <= ceiling


def test_backoff_doubles_to_its_cap_and_spreads_over_the_interval() -> None:
    backoff = Backoff(0.1, 5.0, random.Random(3))
    assert [backoff.ceiling(n) for n in range(8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    draws = [backoff.delay(6) for _ in range(2000)]
    assert min(draws) < 0.1 and max(draws) > 4.9  # full jitter: the whole [0, cap]
    assert sum(draws) / len(draws) == pytest.approx(2.5, rel=0.06)


def http_date(epoch: float) -> str:
    from email.utils import formatdate

    return formatdate(epoch, usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("0", 0.0),
        (http_date(NOW_EPOCH + 30), 30.0),
        (http_date(NOW_EPOCH - 30), 0.0),  # in the past: no wait
        ("Wednesday, 01-Jan-25 00:01:00 GMT", 60.0),  # RFC 850
        ("Wed Jan  1 00:00:10 2025", None),  # asctime has no zone: not trusted
        ("-5", None),
        ("soon", None),
        ("", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value, NOW_EPOCH) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("7.66s", 7.66),
        ("150us", 150e-6),
        ("2", 2.0),
        ("", None),
        ("s", None),
        ("1x", None),
        ("1s2", None),
        ("1s 2m", None),
        ("-1s", None),
    ],
)
def test_parse_openai_duration(value: str, expected: float | None) -> None:
    result = parse_duration(value)
    assert result == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-01-01T00:00:30Z", 30.0),
        ("2025-01-01T00:00:00.250Z", 0.25),
        ("2025-01-01T01:00:30+01:00", 30.0),
        ("2024-12-31T23:59:00Z", 0.0),
        ("2025-01-01T00:00:30", None),  # no offset: not RFC 3339
        ("tomorrow", None),
    ],
)
def test_parse_anthropic_reset(value: str, expected: float | None) -> None:
    assert parse_rfc3339(value, NOW_EPOCH) == expected


def test_wait_hint_prefers_explicit_retry_after() -> None:
    assert wait_hint({"retry-after-ms": "250", "retry-after": "3"}, NOW_EPOCH) == 0.25
    assert wait_hint({"retry-after-ms": "junk", "retry-after": "3"}, NOW_EPOCH) == 3.0
    assert wait_hint({"retry-after": "3", "x-ratelimit-reset-requests": "1m"}, NOW_EPOCH) == 3.0
    assert wait_hint({}, NOW_EPOCH) is None
    assert wait_hint({"retry-after": "later"}, NOW_EPOCH) is None


def test_wait_hint_uses_resets_of_exhausted_limits_only() -> None:
    openai = {
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert wait_hint(openai, NOW_EPOCH) == 360.0
    # Nothing exhausted: the refusal was not about these limits.
    assert wait_hint({**openai, "x-ratelimit-remaining-tokens": "10"}, NOW_EPOCH) is None
    # Without `remaining` headers, every reset counts; the longest wins.
    assert wait_hint({"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "2s"}, NOW_EPOCH) == 2.0
    anthropic = {
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:12Z",
        "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2025-01-01T00:00:40Z",
        "anthropic-ratelimit-input-tokens-remaining": "5000",
        "anthropic-ratelimit-input-tokens-reset": "2025-01-01T00:05:00Z",
    }
    assert wait_hint(anthropic, NOW_EPOCH) == 40.0
    assert wait_hint({"x-ratelimit-reset-tokens": "garbage"}, NOW_EPOCH) is None


# -- retry budget --------------------------------------------------------------------------------


def test_budget_floor_alone_allows_min_per_second_over_the_window() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_second=1.0, window_s=10.0), clock)
    assert sum(budget.can_retry() for _ in range(50)) == 10
    clock.advance(10.0)  # the withdrawals are forgotten with their window
    assert sum(budget.can_retry() for _ in range(50)) == 10


def test_budget_ratio_of_requests() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_per_second=0.0, window_s=10.0), clock)
    assert not budget.can_retry()
    for _ in range(100):
        budget.deposit()
    assert sum(budget.can_retry() for _ in range(100)) == 20  # exact: tokens are integers
    clock.advance(10.0)
    assert not budget.can_retry()  # deposits expire too


def test_budget_of_zero_refuses_every_retry() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.0, min_per_second=0.0), FakeClock())
    for _ in range(100):
        budget.deposit()
    assert not budget.can_retry()


@given(
    ratio=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
    floor=st.sampled_from([0.0, 0.5, 1.0, 5.0]),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=25, deadline=None)
def test_budget_caps_retries_over_a_long_random_run(ratio: float, floor: float, seed: int) -> None:
    """Every request fails and asks for retries (an outage). Over a long run the retries stay
    within `ratio * requests + floor * duration` (plus one window of slack), and a budget with
    room is actually used: the cap is not a refusal of everything."""
    rng = random.Random(seed)
    clock = FakeClock(0.0)
    window = 10.0
    budget = RetryBudget(RetryBudgetConfig(ratio=ratio, min_per_second=floor, window_s=window), clock)
    requests = retries = 0
    duration = 120.0
    while clock.now < duration:
        clock.advance(rng.expovariate(100.0))  # ~100 requests/s, bursty
        budget.deposit()
        requests += 1
        for _ in range(rng.randint(0, 3)):
            retries += budget.can_retry()
    assert retries <= ratio * requests + floor * (duration + window)
    assert retries >= 0.8 * ratio * requests  # the budget is used when there is demand


# -- circuit breaker --------------------------------------------------------------------------------

CIRCUIT = CircuitConfig(
    consecutive_failures=3, error_rate=0.5, min_requests=10, window_s=30, open_for_s=10, max_open_for_s=35
)


def test_breaker_opens_on_consecutive_failures() -> None:
    clock = FakeClock()
    b = CircuitBreaker(CIRCUIT, clock)
    b.record(True)
    b.record(True)
    b.record(False)  # a success resets the run
    b.record(True)
    b.record(True)
    assert b.state is CircuitState.CLOSED and b.available()
    b.record(True)
    assert b.state is CircuitState.OPEN and not b.available()
    assert b.ready_at() == clock.now + 10


def test_breaker_opens_on_error_rate_after_min_requests() -> None:
    clock = FakeClock()
    b = CircuitBreaker(CIRCUIT, clock)
    for i in range(9):  # alternate: never three in a row
        b.record(i % 2 == 0)
        clock.advance(1)
    assert b.state is CircuitState.CLOSED  # 5 of 9 failed, but under `min_requests`
    b.record(False)
    assert b.state is CircuitState.CLOSED  # a success never opens
    b.record(True)  # 6 of 11
    assert b.state is CircuitState.OPEN


def test_breaker_forgets_failures_older_than_its_window() -> None:
    clock = FakeClock()
    b = CircuitBreaker(CIRCUIT, clock)
    for _ in range(8):
        b.record(True)
        b.record(False)
    clock.advance(31)
    for _ in range(9):
        b.record(False)
    b.record(True)  # 1 of 10 in the window
    assert b.state is CircuitState.CLOSED


def test_breaker_half_open_probe_success_closes() -> None:
    clock = FakeClock()
    b = CircuitBreaker(CIRCUIT, clock)
    for _ in range(3):
        b.record(True)
    b.record(False)  # outcomes of attempts that started before it opened are ignored
    assert b.state is CircuitState.OPEN
    clock.advance(9.99)
    assert not b.available()
    clock.advance(0.01)
    assert b.state is CircuitState.HALF_OPEN and b.available()
    b.admit()  # the probe
    assert not b.available()  # one probe at a time
    b.record(False)
    assert b.state is CircuitState.CLOSED and b.available()
    # Counts start afresh: it takes three new failures to open again.
    b.record(True)
    b.record(True)
    assert b.state is CircuitState.CLOSED


def test_breaker_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    clock = FakeClock()
    b = CircuitBreaker(CIRCUIT, clock)
    for _ in range(3):
        b.record(True)
    periods = []
    for _ in range(4):
        opened = clock.now
        clock.now = b.ready_at()
        periods.append(clock.now - opened)
        b.admit()
        b.record(True)
        assert b.state is CircuitState.OPEN
    assert periods == [10, 20, 35, 35]
    clock.now = b.ready_at()
    b.admit()
    b.record(False)
    for _ in range(3):
        b.record(True)
    assert b.ready_at() - clock.now == 10  # back to `open_for_s` after closing


def test_breaker_lets_half_open_probes_through_and_writes_off_lost_ones() -> None:
    clock = FakeClock()
    b = CircuitBreaker(msgspec.structs.replace(CIRCUIT, half_open_probes=2), clock)
    for _ in range(3):
        b.record(True)
    clock.advance(10)
    b.admit()
    assert b.available()
    b.admit()
    assert not b.available()
    # The probes never report back (their requests were cancelled): after one open period
    # they are written off and new probes may go.
    clock.advance(9)
    assert not b.available()
    clock.advance(1)
    assert b.available() and b.state is CircuitState.HALF_OPEN


def test_breaker_forced_probe_turns_open_into_half_open() -> None:
    clock = FakeClock()
    b = CircuitBreaker(CIRCUIT, clock)
    for _ in range(3):
        b.record(True)
    b.admit()  # the router's last resort
    assert b.state is CircuitState.HALF_OPEN
    b.record(False)
    assert b.state is CircuitState.CLOSED


@given(steps=st.lists(st.tuples(st.floats(0, 5), st.booleans()), max_size=300))
@settings(max_examples=200, deadline=None)
def test_breaker_limits_traffic_to_a_dead_target(steps: list[tuple[float, bool]]) -> None:
    """A target that fails every request: callers that respect `available` send it at most
    `consecutive_failures` requests, then one probe per open period (which only grows), even
    when probes are cancelled and never report (they are written off after an open period)."""
    clock = FakeClock(0.0)
    b = CircuitBreaker(CIRCUIT, clock)
    sent = 0
    for gap, report in steps:
        clock.advance(gap)
        if b.available():
            b.admit()
            sent += 1
            if report or b.state is CircuitState.CLOSED:
                b.record(True)
    assert sent <= CIRCUIT.consecutive_failures + clock.now / CIRCUIT.open_for_s + 1


# -- router: resolution, strategies, restrictions ------------------------------------------------


def test_resolution_of_models_routes_and_provider_addresses() -> None:
    router = make_router([route("smart", "gpt", "claude")])
    assert router.resolve("gpt") == Target("gpt", "openai", "gpt-4o")
    assert router.resolve("openai/o3") == Target("openai/o3", "openai", "o3")
    assert router.resolve("openia/o3") is None and router.resolve("smart") is None
    assert names(router.plan("smart", ALICE).candidates) == ["gpt", "claude"]
    assert names(router.plan("anthropic/claude-haiku", ALICE).candidates) == ["anthropic/claude-haiku"]
    with pytest.raises(RoutingError) as info:
        router.plan("gpt-5", ALICE)
    assert info.value.code == "model_not_found" and isinstance(info.value, LookupError)


def test_nested_routes_flatten_in_place_each_target_once() -> None:
    router = make_router(
        [
            route("outer", "gpt", "inner", "claude", "openai/gpt-4o"),  # `openai/gpt-4o` is `gpt` again
            route("inner", "mini", "gpt", "long"),
        ]
    )
    assert names(router.plan("outer", ALICE).candidates) == ["gpt", "mini", "long", "claude"]


def test_weighted_split_follows_the_weights() -> None:
    targets = [TargetConfig("gpt", weight=3), TargetConfig("claude", weight=1), TargetConfig("mini", weight=0)]
    router = make_router([RouteConfig("w", targets, strategy="weighted")], seed=11)
    firsts: dict[str, int] = {}
    for _ in range(4000):
        plan = router.plan("w", ALICE)
        firsts[plan.candidates[0].name] = firsts.get(plan.candidates[0].name, 0) + 1
        # The rest follow by weight; weight 0 is never first but still a fallback.
        assert names(plan.candidates[1:]) == (
            ["claude", "mini"] if plan.candidates[0].name == "gpt" else ["gpt", "mini"]
        )
    assert "mini" not in firsts
    assert firsts["gpt"] / 4000 == pytest.approx(0.75, abs=0.025)


def test_weighted_with_only_zero_weights_left_uses_config_order() -> None:
    targets = [
        TargetConfig("gpt", weight=5, only_keys=["bob"]),
        TargetConfig("claude", weight=0),
        TargetConfig("mini", weight=0),
    ]
    router = make_router([RouteConfig("w", targets, strategy="weighted")])
    assert names(router.plan("w", ALICE).candidates) == ["claude", "mini"]


def test_latency_measures_untried_targets_then_prefers_the_faster() -> None:
    settings = RoutingConfig(latency=LatencyConfig(ewma_alpha=0.5, explore=0.0))
    router = make_router([route("fast", "gpt", "claude", "mini", strategy="latency")], settings)
    gpt, claude, mini = router.plan("fast", ALICE).candidates
    router.observe(gpt, None, ttft_s=0.9, latency_s=4.0)
    # Targets without a sample go first, in config order.
    assert names(router.plan("fast", ALICE).candidates) == ["claude", "mini", "gpt"]
    router.observe(claude, None, ttft_s=0.2, latency_s=6.0)
    router.observe(mini, None, ttft_s=0.5, latency_s=1.0)
    # Streams rank by time to first token, other requests by total latency.
    assert names(router.plan("fast", ALICE, stream=True).candidates) == ["claude", "mini", "gpt"]
    assert names(router.plan("fast", ALICE).candidates) == ["mini", "gpt", "claude"]
    # Moving averages: claude gets faster (6.0 -> 3.5 -> 2.25 -> 1.625 -> 1.3125 -> 1.15625 ...).
    for _ in range(6):
        router.observe(claude, None, latency_s=1.0)
    assert names(router.plan("fast", ALICE).candidates) == ["mini", "claude", "gpt"]
    for _ in range(3):
        router.observe(claude, None, latency_s=0.5)
    assert names(router.plan("fast", ALICE).candidates)[0] == "claude"
    # Failures do not move the averages (circuits deal with failures).
    router.observe(mini, FailureKind.TIMEOUT, latency_s=120.0)
    assert names(router.plan("fast", ALICE).candidates) == ["claude", "mini", "gpt"]


def test_latency_exploration_puts_another_target_first() -> None:
    settings = RoutingConfig(latency=LatencyConfig(explore=1.0))
    router = make_router([route("fast", "gpt", "claude", "mini", strategy="latency")], settings)
    for name, seconds in (("gpt", 0.1), ("claude", 0.2), ("mini", 0.3)):
        target = router.resolve(name)
        assert target is not None
        router.observe(target, None, latency_s=seconds)
    seen = set()
    for _ in range(50):
        plan = router.plan("fast", ALICE)
        assert plan.candidates[0].name != "gpt"
        assert plan.notes == [f"route `fast`: exploring `{plan.candidates[0].name}` first"]
        seen.add(plan.candidates[0].name)
    assert seen == {"claude", "mini"}


def test_cost_orders_by_blended_price_unpriced_last() -> None:
    prices = {"gpt-4o": (2.5, 10.0), "claude-sonnet": (3.0, 15.0), "gpt-4o-mini": (0.15, 0.6)}
    router = make_router(
        [route("cheap", "gpt", "long", "claude", "mini", strategy="cost")],
        price=lambda provider, model: prices.get(model),
    )
    assert names(router.plan("cheap", ALICE).candidates) == ["mini", "gpt", "claude", "long"]
    # Without a price function every target is unpriced: config order.
    assert names(make_router([route("cheap", "gpt", "long", strategy="cost")]).plan("cheap", ALICE).candidates) == [
        "gpt",
        "long",
    ]


def test_cost_ranks_a_nested_route_by_its_first_target() -> None:
    prices = {"gpt-4o": (2.5, 10.0), "gpt-4o-mini": (0.15, 0.6), "claude-sonnet": (3.0, 15.0)}
    router = make_router(
        [route("cheap", "claude", "pool", strategy="cost"), route("pool", "gpt", "mini", strategy="cost")],
        price=lambda provider, model: prices.get(model),
    )
    assert names(router.plan("cheap", ALICE).candidates) == ["mini", "gpt", "claude"]


def test_targets_restricted_per_key_or_team() -> None:
    targets = [
        TargetConfig("gpt", only_keys=["bob"]),
        TargetConfig("claude", only_teams=["research"]),
        TargetConfig("mini", only_keys=["carol"], only_teams=["sales"]),  # either admits
        TargetConfig("long"),
    ]
    router = make_router([RouteConfig("r", targets)])
    alice = router.plan("r", ALICE)
    assert names(alice.candidates) == ["claude", "long"]
    assert alice.skipped == [Skip("gpt", "restricted"), Skip("mini", "restricted")]
    assert names(router.plan("r", BOB).candidates) == ["gpt", "mini", "long"]
    assert names(router.plan("r", Identity("carol")).candidates) == ["mini", "long"]
    only = make_router([RouteConfig("r", targets[:1])])
    with pytest.raises(RoutingError) as info:
        only.plan("r", ALICE)
    assert info.value.code == "no_allowed_target"
    assert str(info.value) == "route `r` has no target open to key `alice`"


def test_restricting_a_nested_route_restricts_its_targets() -> None:
    router = make_router(
        [RouteConfig("r", [TargetConfig("pool", only_teams=["sales"]), TargetConfig("long")]), route("pool", "gpt")]
    )
    assert names(router.plan("r", ALICE).candidates) == ["long"]
    assert names(router.plan("r", BOB).candidates) == ["gpt", "long"]


def test_override_picks_one_target_where_allowed() -> None:
    router = make_router(
        [
            route("open", "gpt", "claude", "azure/gpt-4o-deploy", allow_key_override=True),
            route("closed", "gpt", "claude"),
        ]
    )
    plan = router.plan("open", ALICE, override="claude")
    assert names(plan.candidates) == ["claude"]
    assert plan.notes == ["`x-tollway-target` picked `claude`"]
    # `provider/model` of a configured model names the same target.
    assert names(router.plan("open", ALICE, override="openai/gpt-4o").candidates) == ["gpt"]
    for model, override, code in [
        ("closed", "claude", "override_not_allowed"),
        ("open", "mini", "override_unknown"),
        ("gpt", "gpt", "override_not_allowed"),
    ]:
        with pytest.raises(RoutingError) as info:
            router.plan(model, ALICE, override=override)
        assert info.value.code == code


# -- router: circuits ----------------------------------------------------------------------------------


def open_circuit(router: Router, target: Target, failures: int = 5) -> None:
    for _ in range(failures):
        router.observe(target, FailureKind.SERVER_ERROR)


def test_open_circuits_are_skipped() -> None:
    clock = FakeClock()
    router = make_router([route("r", "gpt", "claude", "mini")], clock=clock)
    gpt, claude, _ = router.plan("r", ALICE).candidates
    open_circuit(router, gpt)
    assert router.circuit_state(gpt) is CircuitState.OPEN
    plan = router.plan("r", ALICE)
    assert names(plan.candidates) == ["claude", "mini"]
    assert plan.skipped == [Skip("gpt", "circuit_open")]
    assert first(plan).target == claude
    # Client errors say nothing about health.
    for _ in range(10):
        router.observe(claude, FailureKind.CLIENT_ERROR)
    assert router.circuit_state(claude) is CircuitState.CLOSED
    # After the open period the next request probes it; a success closes it.
    clock.advance(30)
    probe = router.plan("r", ALICE)
    assert first(probe).target == gpt
    assert names(router.plan("r", ALICE).candidates) == ["claude", "mini"]  # one probe at a time
    router.observe(gpt, None, latency_s=1.0)
    assert router.circuit_state(gpt) is CircuitState.CLOSED


def test_when_every_circuit_is_open_the_first_to_reopen_is_probed() -> None:
    clock = FakeClock()
    router = make_router([route("r", "gpt", "claude", "mini")], clock=clock)
    gpt, claude, mini = router.plan("r", ALICE).candidates
    open_circuit(router, claude)
    clock.advance(1)
    open_circuit(router, gpt)
    open_circuit(router, mini)
    plan = router.plan("r", ALICE)
    assert names(plan.candidates) == ["claude"]
    step = first(plan)
    assert step.target == claude and step.reason == "primary"
    assert plan.notes == ["every circuit is open: probing `claude`, the first to reopen"]
    # A full outage gets one attempt per request, never more.
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR, "anthropic")) is None
    assert plan.stop_reason == "exhausted"


def test_circuits_of_unconfigured_targets_are_bounded() -> None:
    router = make_router([route("r", "gpt")])
    first_direct = Target("openai/m0", "openai", "m0")
    for i in range(1025):
        open_circuit(router, Target(f"openai/m{i}", "openai", f"m{i}"))
    assert router.circuit_state(first_direct) is CircuitState.CLOSED  # the oldest was dropped
    assert router.circuit_state(Target("openai/m1024", "openai", "m1024")) is CircuitState.OPEN


# -- router: the attempt loop ---------------------------------------------------------------------------


def test_failover_retries_go_to_the_next_target_with_backoff() -> None:
    router = make_router([route("r", "gpt", "claude", "mini")])
    plan = router.plan("r", ALICE)
    step = first(plan)
    assert (step.target.name, step.reason, step.delay_s, step.number) == ("gpt", "primary", 0.0, 1)
    step2 = plan.next_attempt(fail(FailureKind.SERVER_ERROR))
    assert step2 is not None and (step2.target.name, step2.reason, step2.number) == ("claude", "retry", 2)
    assert 0 <= step2.delay_s <= 0.1
    step3 = plan.next_attempt(fail(FailureKind.TIMEOUT, "anthropic"))
    assert step3 is not None and (step3.target.name, step3.reason) == ("mini", "retry")
    assert 0 <= step3.delay_s <= 0.2
    assert plan.next_attempt(fail(FailureKind.UNREACHABLE)) is None
    assert plan.stop_reason == "max_attempts" and plan.attempts == 3 and plan.retries == 2


def test_a_single_target_is_never_tried_twice() -> None:
    plan = make_router([]).plan("gpt", ALICE)
    assert first(plan).target.name == "gpt"
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is None
    assert plan.stop_reason == "exhausted"


def test_invalid_requests_are_not_retried() -> None:
    plan = make_router([route("r", "gpt", "claude")]).plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.CLIENT_ERROR)) is None
    assert plan.stop_reason == "not_retryable"
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is None  # done is done


@pytest.mark.parametrize("kind", [FailureKind.CREDENTIALS, FailureKind.BAD_RESPONSE])
def test_target_faults_fail_over_without_backoff(kind: FailureKind) -> None:
    plan = make_router([route("r", "gpt", "claude")]).plan("r", ALICE)
    first(plan)
    step = plan.next_attempt(fail(kind))
    assert step is not None and (step.target.name, step.reason, step.delay_s) == ("claude", "fallback", 0.0)
    assert plan.retries == 0


def test_max_retries_of_a_route_and_max_attempts() -> None:
    router = make_router(
        [route("r", "gpt", "claude", "mini", "long", retry={"max_retries": 1}), route("r5", "gpt", "claude", "mini")],
        RoutingConfig(max_attempts=2, retry_budget=NO_BUDGET_LIMIT),
    )
    plan = router.plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is not None
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is None
    assert plan.stop_reason == "max_attempts"
    plan = router.plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.CREDENTIALS)) is not None  # a fallback is not a retry
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is None
    assert plan.stop_reason == "max_attempts"
    strict = make_router([route("r", "gpt", "claude", "mini", retry={"max_retries": 0})])
    plan = strict.plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is None
    assert plan.stop_reason == "max_retries"


def test_no_failover_once_the_answer_started_streaming() -> None:
    plan = make_router([route("r", "gpt", "claude")]).plan("r", ALICE, stream=True)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.BROKEN_STREAM), started_streaming=True) is None
    assert plan.stop_reason == "streaming_started"


def test_retry_after_holds_the_same_provider_only() -> None:
    plan = make_router([route("r", "gpt", "mini", "claude")]).plan("r", ALICE)
    first(plan)
    # `mini` is on the same provider (openai) as the 429: wait what it asked for.
    step = plan.next_attempt(fail(FailureKind.RATE_LIMITED), headers={"retry-after": "2"})
    assert step is not None and step.target.name == "mini" and step.delay_s == 2.0
    # `claude` is elsewhere: only the backoff.
    step = plan.next_attempt(fail(FailureKind.RATE_LIMITED), headers={"retry-after": "2"})
    assert step is not None and step.target.name == "claude" and step.delay_s <= 0.2


def test_retry_after_is_read_from_the_failure_without_headers() -> None:
    plan = make_router([route("r", "gpt", "mini")]).plan("r", ALICE)
    first(plan)
    step = plan.next_attempt(fail(FailureKind.RATE_LIMITED, retry_after="3"))
    assert step is not None and step.delay_s == 3.0


def test_a_wait_longer_than_the_cap_rules_the_provider_out() -> None:
    plan = make_router([route("r", "gpt", "mini", "claude")]).plan("r", ALICE)
    first(plan)
    step = plan.next_attempt(
        fail(FailureKind.RATE_LIMITED),
        headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"},
    )
    assert step is not None and step.target.name == "claude"
    assert Skip("mini", "provider_waiting") in plan.skipped


def test_the_retry_budget_stops_retries() -> None:
    router = make_router([route("r", "gpt", "claude")], RoutingConfig(retry_budget=RetryBudgetConfig(0.0, 0.0)))
    plan = router.plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is None
    assert plan.stop_reason == "retry_budget"
    plan = router.plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.CREDENTIALS)) is None  # fallbacks spend it too
    assert plan.stop_reason == "retry_budget"


def test_the_deadline_bounds_every_attempt() -> None:
    clock = FakeClock()
    router = make_router([route("r", "gpt", "mini", "claude")], RoutingConfig(deadline_s=60), clock=clock)
    plan = router.plan("r", ALICE)
    first(plan)
    clock.advance(45)
    assert plan.remaining_s() == 15
    timeouts = plan.timeouts(Timeouts(connect=5, first_byte=120, idle=60, total=600))
    assert timeouts == Timeouts(connect=5, first_byte=15, idle=15, total=15)
    clock.advance(15)
    assert plan.timeouts(Timeouts()).total == 0.0
    assert plan.next_attempt(fail(FailureKind.TIMEOUT)) is None
    assert plan.stop_reason == "deadline"
    # A wait (here for the same provider) that would end past the deadline stops the request too.
    plan = router.plan("r", ALICE)
    first(plan)
    clock.advance(58)
    assert plan.next_attempt(fail(FailureKind.RATE_LIMITED), headers={"retry-after": "5"}) is None
    assert plan.stop_reason == "deadline"


def test_context_length_falls_back_to_the_larger_model() -> None:
    settings = RoutingConfig(retry_budget=RetryBudgetConfig(0.0, 0.0))  # not spent by this fallback
    router = make_router([route("r", "gpt", "claude", fallback_on_context_length="long")], settings)
    plan = router.plan("r", ALICE)
    first(plan)
    step = plan.next_attempt(fail(FailureKind.CONTEXT_LENGTH))
    assert step is not None and (step.target.name, step.reason, step.delay_s) == ("long", "context_length_fallback", 0)
    assert plan.notes == ["prompt too long for `gpt`: falling back to `long`"]
    # The fallback replaces the rest of the route: `claude` is not tried after it.
    assert plan.next_attempt(fail(FailureKind.SERVER_ERROR, "anthropic")) is None
    assert plan.stop_reason == "exhausted"


def test_context_length_uses_the_innermost_fallback_and_chains() -> None:
    router = make_router(
        [
            route("outer", "inner", "claude", fallback_on_context_length="mini"),
            route("inner", "gpt", fallback_on_context_length="bigger"),
            route("bigger", "gpt-azure", fallback_on_context_length="long"),
        ],
        RoutingConfig(max_attempts=5),
    )
    plan = router.plan("outer", ALICE)
    assert first(plan).target.name == "gpt"
    steps = [plan.next_attempt(fail(FailureKind.CONTEXT_LENGTH)) for _ in range(2)]
    assert [(s.target.name, s.reason) for s in steps if s is not None] == [
        ("gpt-azure", "context_length_fallback"),
        ("long", "context_length_fallback"),
    ]
    assert plan.next_attempt(fail(FailureKind.CONTEXT_LENGTH)) is None
    assert plan.stop_reason == "no_context_fallback"
    # Without a fallback anywhere, a prompt too long ends the request.
    plan = make_router([route("r", "gpt", "claude")]).plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.CONTEXT_LENGTH)) is None
    assert plan.stop_reason == "no_context_fallback"


def test_context_length_fallback_respects_restrictions() -> None:
    router = make_router(
        [
            route("r", "gpt", fallback_on_context_length="big"),
            RouteConfig("big", [TargetConfig("long", only_teams=["sales"])]),
        ]
    )
    plan = router.plan("r", ALICE)
    first(plan)
    assert plan.next_attempt(fail(FailureKind.CONTEXT_LENGTH)) is None
    assert plan.stop_reason == "no_context_fallback"
    assert Skip("long", "restricted") in plan.skipped


def test_next_attempt_misuse_is_an_error() -> None:
    plan = make_router([route("r", "gpt", "claude")]).plan("r", ALICE)
    with pytest.raises(ValueError, match="first call"):
        plan.next_attempt(fail(FailureKind.SERVER_ERROR))
    first(plan)
    with pytest.raises(ValueError, match="after a success"):
        plan.next_attempt()


# -- properties of the attempt loop ------------------------------------------------------------------

KINDS = list(FailureKind)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Router, FakeClock, list[str], list[RouteConfig]]:
    pool = ["gpt", "gpt-azure", "claude", "mini", "long", "openai/o3", "azure/gpt-4o-deploy", "anthropic/haiku"]
    n_routes = draw(st.integers(1, 3))
    routes = []
    for i in range(n_routes):
        # Later routes may nest earlier ones (no cycles by construction).
        choices = pool + [f"r{j}" for j in range(i)]
        models = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=6, unique=True))
        targets = [
            TargetConfig(
                m,
                weight=draw(st.sampled_from([0.0, 1.0, 2.5])) or 1.0,
                only_teams=draw(st.sampled_from([None, None, ["research"], ["sales"]])),
            )
            for m in models
        ]
        fallback = draw(st.sampled_from([None, *pool, *(f"r{j}" for j in range(i))]))
        routes.append(
            RouteConfig(
                f"r{i}",
                targets,
                strategy=draw(st.sampled_from(["failover", "weighted", "latency", "cost"])),
                fallback_on_context_length=fallback,
                retry=RetryOverride(max_retries=draw(st.integers(0, 6))),
            )
        )
    settings = RoutingConfig(
        max_attempts=draw(st.integers(1, 8)),
        deadline_s=draw(st.sampled_from([5.0, 60.0, 600.0])),
        retry_budget=draw(st.sampled_from([RetryBudgetConfig(), RetryBudgetConfig(0.0, 0.0), NO_BUDGET_LIMIT])),
        circuit=CircuitConfig(consecutive_failures=draw(st.integers(1, 3)), open_for_s=5),
    )
    clock = FakeClock()
    router = make_router(
        routes, settings, clock=clock, seed=draw(st.integers(0, 2**16)), price=lambda p, m: (len(m), 1)
    )
    # Some circuits start open.
    for name in draw(st.lists(st.sampled_from(pool), max_size=5)):
        target = router.resolve(name)
        assert target is not None
        open_circuit(router, target, 3)
    return router, clock, [r.name for r in routes] + ["gpt", "anthropic/haiku"], routes


@given(
    scenario=scenarios(),
    outcomes=st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.sampled_from([0, 0, 0, 1]),  # started streaming (rarely)
            st.sampled_from([None, "0", "1", "3600"]),  # retry-after
            st.floats(0, 3),  # time the attempt took
        ),
        max_size=12,
    ),
    pick=st.integers(0, 100),
    team=st.sampled_from([None, "research", "sales"]),
)
@settings(max_examples=400, deadline=None)
def test_attempt_loop_guarantees(
    scenario: tuple[Router, FakeClock, list[str], list[RouteConfig]],
    outcomes: list[tuple[FailureKind, int, str | None, float]],
    pick: int,
    team: str | None,
) -> None:
    router, clock, requestable, _ = scenario
    model = requestable[pick % len(requestable)]
    try:
        plan = router.plan(model, Identity("k", team=team))
    except RoutingError as exc:
        assert exc.code == "no_allowed_target"  # every target restricted to other teams
        return
    max_attempts = router.settings.max_attempts
    step = plan.next_attempt()
    assert step is not None, "never are all targets skipped"
    assert step.reason == "primary" and step.delay_s == 0
    seen = set()
    steps = [step]
    for kind, streaming, retry_after, took in outcomes:
        assert step.target.key not in seen, "a target is tried at most once per request"
        seen.add(step.target.key)
        clock.advance(took)
        router.observe(step.target, kind, latency_s=took)
        failure = Failure(kind, step.target.provider, "x", retry_after=retry_after)
        step = plan.next_attempt(failure, started_streaming=bool(streaming))
        if step is None:
            break
        assert step.reason in ("retry", "fallback", "context_length_fallback")
        assert step.delay_s >= 0 and clock.now + step.delay_s < plan.deadline
        assert (step.reason == "context_length_fallback") == (kind is FailureKind.CONTEXT_LENGTH)
        if step.reason == "retry":
            assert is_retryable(kind)
        assert not streaming
        clock.advance(step.delay_s)
        steps.append(step)
    else:
        if step is not None:
            seen.add(step.target.key)
    assert len(steps) <= max_attempts and plan.attempts == len(steps)
    assert len({s.target.key for s in steps}) == len(steps)
    assert [s.number for s in steps] == list(range(1, len(steps) + 1))
    assert sum(s.reason == "retry" for s in steps) == plan.retries
    if step is None:
        assert plan.stop_reason is not None
        assert plan.next_attempt(fail(FailureKind.SERVER_ERROR)) is None


@given(seed=st.integers(0, 2**32))
@settings(max_examples=10, deadline=None)
def test_retries_through_the_router_stay_within_the_budget(seed: int) -> None:
    """An outage of every target, with routes of many targets and generous retry settings:
    the retries and fallbacks the router grants stay within the budget over a long run."""
    rng = random.Random(seed)
    clock = FakeClock(0.0)
    budget = RetryBudgetConfig(ratio=0.2, min_per_second=1.0, window_s=10.0)
    settings = RoutingConfig(
        max_attempts=5,
        retry=RetryConfig(max_retries=4, base_delay_ms=0, max_delay_ms=0),
        retry_budget=budget,
        circuit=CircuitConfig(consecutive_failures=10**6, min_requests=10**6),  # circuits out of the way
    )
    router = make_router([route("r", "gpt", "gpt-azure", "claude", "mini", "long")], settings, clock=clock, seed=seed)
    requests = extra = 0
    while clock.now < 120:
        clock.advance(rng.expovariate(50.0))
        plan = router.plan("r", ALICE)
        requests += 1
        step = plan.next_attempt()
        while step is not None:
            step = plan.next_attempt(fail(rng.choice([FailureKind.SERVER_ERROR, FailureKind.CREDENTIALS])))
            extra += step is not None
    assert extra <= budget.ratio * requests + budget.min_per_second * (120 + budget.window_s)
    assert extra >= 0.15 * requests


def test_first_target_follows_nested_routes_without_planning() -> None:
    router = make_router([route("outer", "inner", "mini"), route("inner", "claude", "gpt")])
    assert router.first_target("outer") == Target("claude", "anthropic", "claude-sonnet")
    assert router.first_target("gpt") == Target("gpt", "openai", "gpt-4o")
    assert router.first_target("openai/o3") == Target("openai/o3", "openai", "o3")
    assert router.first_target("nowhere") is None
