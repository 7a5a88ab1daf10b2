"""The Redis state backend against a real `redis-server`: the same answers as the memory backend
(property tests on random sequences at controlled times), scripts reloaded after `SCRIPT
FLUSH`, per-call timeouts with a frozen server, the circuit breaker, the degraded modes, budget
windows rebuilt from the ledger after `FLUSHALL`, and keys that expire when idle."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RedisCluster, RedisServer
from tollway._native import Denial, Grant
from tollway.policy.config import PolicyConfig
from tollway.policy.engine import PolicyEngine
from tollway.policy.state import Held, LimitSpec, MemoryBackend, StoreDenial, StoreGrant, StoreUnavailable, Take
from tollway.state.config import StateConfig
from tollway.state.redis import RedisBackend, compile_limit, partition_tag
from tollway.usage.ledger import Ledger, LedgerConfig
from tollway.usage.record import PolicyVerdict, UsageRecord

T = TypeVar("T")
T0 = 1_767_225_600_000 - 3 * 3_600_000  # 2025-12-31T21:00Z: windows turn over within reach
TTL_S = 30.0

SPECS = [
    LimitSpec("rpm", "rate", 5, 10.0, 3),
    LimitSpec("odd-rate", "rate", 3, 1.0, 1),
    LimitSpec("tpm", "tokens", 1000, 60.0, 400, unit="tokens"),
    LimitSpec("inflight", "concurrency", 2, unit="in-flight"),
    LimitSpec("daily", "budget", 3000, calendar="day", utc_offset_s=7200, unit="tokens"),
    LimitSpec("weekly", "budget", 2500, calendar="week", utc_offset_s=-18000, unit="tokens"),
    LimitSpec("monthly", "budget", 6000, calendar="month", unit="usd"),
    LimitSpec("rolling", "budget", 3000, period_s=120.0, unit="tokens"),
    LimitSpec("rolling-one", "budget", 3000, period_s=7.001, unit="tokens"),
]
PARTITIONS = ["*", "key=a", "team=b,model=c"]


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(_timed(coro))


async def _timed(coro: Awaitable[T]) -> T:
    async with asyncio.timeout(30):
        return await coro


def backend(server: RedisServer, clock: list[int] | None = None, **config: Any) -> RedisBackend:
    state = StateConfig(backend="redis", url=server.url, **{"timeout_ms": 1000, **config})
    now_ms = (lambda: clock[0]) if clock is not None else None
    return RedisBackend(state, lease_ttl_s=TTL_S, now_ms=now_ms)


# -- the same answers as the memory backend ---------------------------------------------------


def describe(take: Take) -> tuple[Any, ...]:
    """What a caller can see of a take's answer (reservation ids differ between backends)."""
    a = take.answer
    if isinstance(a, Grant | StoreGrant):
        has_id = a.id is not None and take.spec.kind != "rate"
        return ("grant", has_id, a.remaining, a.reset_after, take.amount)
    if isinstance(a, Denial | StoreDenial):
        return ("deny", a.kind, a.limit, a.window_seconds, a.burst, a.used, a.requested, a.retry_after)
    return ("none", take.used, take.amount)


take_strategy = st.tuples(
    st.integers(0, len(SPECS) - 1),
    st.integers(0, len(PARTITIONS) - 1),
    st.one_of(st.integers(0, 60), st.integers(400, 3000)),
    st.booleans(),  # enforce
    st.sampled_from(["", "", "", "clip", "peek"]),
)
op_strategy = st.one_of(
    st.tuples(st.just("admit"), st.lists(take_strategy, min_size=1, max_size=4)),
    st.tuples(st.just("settle"), st.integers(0, 50), st.one_of(st.none(), st.integers(0, 3000))),
    st.tuples(st.just("debit"), st.integers(0, len(SPECS) - 1), st.integers(0, 2), st.integers(1, 2000)),
    st.tuples(
        st.just("advance"),
        st.one_of(st.integers(0, 400), st.integers(0, 40_000), st.integers(0, 3 * 86_400_000)),
    ),
    st.tuples(st.just("used"), st.integers(0, len(SPECS) - 1), st.integers(0, 2)),
)


@dataclass
class Pair:
    memory: MemoryBackend
    redis: RedisBackend
    clock: list[int]
    holds: list[tuple[Held, Held]] = field(default_factory=list)

    def takes(self, spec_i: int, part_i: int, amount: int, enforce: bool, how: str) -> Take:
        spec = SPECS[spec_i]
        if how == "clip" and spec.kind != "budget":
            how = ""
        if spec.kind in ("rate", "concurrency"):
            amount = 1  # as the engine asks
        return Take(spec, PARTITIONS[part_i], amount, enforce, clip=how == "clip", peek=how == "peek")


async def compare(server: RedisServer, ops: list[tuple[Any, ...]]) -> None:
    server.client().flushall()
    clock = [T0]
    memory = MemoryBackend(lease_ttl_s=TTL_S, clock=lambda: clock[0] / 1000)
    redis = backend(server, clock, rebuild_wait_ms=0)
    memory.prepare(SPECS)
    redis.prepare(SPECS)
    pair = Pair(memory, redis, clock)
    try:
        for step, op in enumerate(ops):
            await apply(pair, op, step)
    finally:
        await redis.close()


async def apply(pair: Pair, op: tuple[Any, ...], step: int) -> None:
    memory, redis = pair.memory, pair.redis
    kind = op[0]
    if kind == "advance":
        pair.clock[0] += op[1]
    elif kind == "admit":
        m_takes = [pair.takes(*t) for t in op[1]]
        r_takes = [pair.takes(*t) for t in op[1]]
        m_ok = memory.admit(m_takes)
        r_ok = await redis.admit_async(r_takes)
        assert (step, m_ok, [describe(t) for t in m_takes]) == (step, r_ok, [describe(t) for t in r_takes])
        if m_ok:
            now_rates = []
            for m, r in zip(m_takes, r_takes, strict=True):
                if isinstance(m.answer, Grant) and m.answer.id is not None:
                    assert isinstance(r.answer, StoreGrant)
                    m_held = Held(m.spec, m.partition, m.answer.id)
                    if m.spec.kind == "rate":
                        now_rates.append((m_held, 1))  # as the engine does: final at admission
                    else:
                        pair.holds.append((m_held, Held(r.spec, r.partition, r.answer.id)))
            memory.settle(now_rates)
    elif kind == "settle":
        if pair.holds:
            m_held, r_held = pair.holds.pop(op[1] % len(pair.holds))
            memory.settle([(m_held, op[2])])
            redis.settle([(r_held, op[2])])
            await redis.drain()
    elif kind == "debit":
        spec, partition = SPECS[op[1]], PARTITIONS[op[2]]
        memory.debit(spec, partition, op[3])
        await redis.debit_async(spec, partition, op[3])
    else:
        spec, partition = SPECS[op[1]], PARTITIONS[op[2]]
        assert (step, memory.used(spec, partition)) == (step, await redis.used_async(spec, partition))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_strategy, min_size=1, max_size=40))
def test_redis_backend_answers_as_the_memory_backend(redis_server: RedisServer, ops: list[tuple[Any, ...]]) -> None:
    run(compare(redis_server, ops))


def test_a_scripted_sequence_matches_across_window_boundaries(redis_server: RedisServer) -> None:
    """Fixed cases the random search might rarely hit: debt, expiry at its own time, a month
    boundary at an offset, a rolling window leaving sub-bucket by sub-bucket."""
    ops: list[tuple[Any, ...]] = [
        ("admit", [(2, 1, 400, True, ""), (4, 1, 3000, True, ""), (7, 1, 2000, True, "")]),
        ("settle", 0, 1500),  # tokens into debt
        ("admit", [(2, 1, 1, True, "")]),
        ("advance", 1500),
        ("admit", [(2, 1, 1, True, "")]),
        ("admit", [(3, 0, 0, True, ""), (3, 0, 0, True, ""), (3, 0, 0, True, "")]),
        ("advance", 31_000),  # leases and reservations expire
        ("admit", [(3, 0, 0, True, ""), (7, 1, 1500, True, "clip")]),
        ("used", 7, 1),
        ("advance", 61_000),
        ("used", 7, 1),
        ("admit", [(6, 2, 5999, True, ""), (6, 2, 2, False, ""), (0, 2, 1, True, "")]),
        ("advance", 3 * 3_600_000),  # past midnight UTC: a new month
        ("admit", [(6, 2, 5999, True, ""), (5, 0, 2500, True, ""), (4, 0, 10, True, "peek")]),
        ("debit", 8, 0, 2999),
        ("admit", [(8, 0, 2, True, "")]),
        ("advance", 7_001),
        ("admit", [(8, 0, 2, True, "")]),
    ]
    run(compare(redis_server, ops))


# -- scripts, timeouts, the breaker --------------------------------------------------------------


def test_a_forgotten_script_is_reloaded_transparently(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        b = backend(redis_server)
        b.prepare(SPECS)
        try:
            assert await b.admit_async([Take(SPECS[0], "key=reload", 1, True)])
            redis_server.client().script_flush()
            take = Take(SPECS[0], "key=reload", 1, True)
            assert await b.admit_async([take])
            assert take.degraded is None and isinstance(take.answer, StoreGrant)
            assert take.answer.remaining == 1
        finally:
            await b.close()

    run(scenario())


def test_a_frozen_redis_costs_one_timeout_then_nothing_and_recovery_is_automatic(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        b = backend(own_redis, timeout_ms=50, breaker_failures=2, breaker_reset_ms=300)
        b.prepare(SPECS)
        try:
            await b.start()
            assert await b.admit_async([Take(SPECS[0], "key=f", 1, True)])
            os.kill(own_redis.proc.pid, signal.SIGSTOP)
            try:
                timings = []
                for _ in range(5):
                    take = Take(SPECS[0], "key=f", 1, True)
                    began = time.perf_counter()
                    assert await b.admit_async([take])  # fail_open: admitted, marked degraded
                    timings.append(time.perf_counter() - began)
                    assert take.degraded == "fail_open"
                # Two calls wait for the timeout; then the breaker is open and nothing waits.
                assert all(t < 0.25 for t in timings), timings
                assert sum(t > 0.04 for t in timings) == 2, timings
                assert not b.breaker.closed
                assert b.status()["available"] is False and b.status()["degraded_since"] is not None
            finally:
                os.kill(own_redis.proc.pid, signal.SIGCONT)
            deadline = time.monotonic() + 5
            while True:
                take = Take(SPECS[0], "key=f", 1, True)
                await b.admit_async([take])
                if take.degraded is None:
                    break
                assert time.monotonic() < deadline, "the breaker never closed again"
                await asyncio.sleep(0.05)
            assert b.status()["available"] is True
            assert b.degraded_decisions[("rpm", "fail_open")] >= 5
        finally:
            await b.close()

    run(scenario())


# -- degraded modes --------------------------------------------------------------------------------


def with_failure(spec: LimitSpec, failure: str) -> LimitSpec:
    from dataclasses import replace

    return replace(spec, store_failure=failure)  # type: ignore[arg-type]


def test_degraded_modes_when_redis_is_down(own_redis: RedisServer) -> None:
    async def scenario() -> None:
        b = backend(own_redis, timeout_ms=100, local_share_divisor=2)
        open_rate = with_failure(LimitSpec("open", "rate", 100, 60.0, 100), "fail_open")
        local_rate = with_failure(LimitSpec("local", "rate", 10, 60.0, 10), "local")
        closed_usd = with_failure(LimitSpec("money", "budget", 1_000_000, calendar="day", unit="usd"), "fail_closed")
        shadow_closed = with_failure(LimitSpec("shadow", "budget", 5, calendar="day", unit="usd"), "fail_closed")
        b.prepare([open_rate, local_rate, closed_usd, shadow_closed])
        own_redis.kill()
        try:
            # `local`: 10 / 2 = 5 per minute in this process; the sixth is a (429) denial.
            answers = []
            for _ in range(6):
                takes = [Take(open_rate, "*", 1, True), Take(local_rate, "*", 1, True)]
                answers.append(await b.admit_async(takes))
                assert takes[0].degraded == "fail_open" and takes[1].degraded == "local"
            assert answers == [True] * 5 + [False]
            assert isinstance(takes[1].answer, Denial) and takes[1].answer.limit == 5
            # `fail_closed`: refused, and what was taken locally before it is given back.
            takes = [Take(local_rate, "key=x", 1, True), Take(closed_usd, "*", 100, True)]
            assert not await b.admit_async(takes)
            assert isinstance(takes[1].answer, StoreUnavailable)
            assert b.local.used(b._limit(local_rate).local_spec, "key=x") == 0
            # A shadow policy that fails closed never blocks.
            takes = [Take(shadow_closed, "*", 100, False), Take(open_rate, "*", 1, True)]
            assert await b.admit_async(takes)
            assert isinstance(takes[0].answer, StoreUnavailable)
            # Settling a local grant goes back to the local limiter; remote settlements are counted lost.
            lease_spec = with_failure(LimitSpec("leases", "concurrency", 4), "local")
            b.prepare([open_rate, local_rate, closed_usd, shadow_closed, lease_spec])
            take = Take(lease_spec, "*", 1, True)
            assert await b.admit_async([take])
            assert isinstance(take.answer, StoreGrant) and take.answer.id is not None and take.answer.id < 0
            assert b.local.used(b._limit(lease_spec).local_spec, "*") == 1
            b.settle([(Held(lease_spec, "*", take.answer.id), None)])
            assert b.local.used(b._limit(lease_spec).local_spec, "*") == 0
        finally:
            await b.close()

    run(scenario())


# -- the key layout ----------------------------------------------------------------------------


def test_keys_share_a_hash_tag_per_partition_and_expire_when_idle(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        b = backend(redis_server)
        specs = [LimitSpec("kt-rate", "rate", 10, 1.0, 10), LimitSpec("kt-lease", "concurrency", 3)]
        b.prepare(specs)
        try:
            assert await b.admit_async([Take(specs[0], "key=kt", 1, True), Take(specs[1], "key=kt", 1, True)])
        finally:
            await b.close()
        client = redis_server.client()
        names = sorted(k.decode() for k in client.keys("tollway:{key=kt}:*"))
        # A rate's state, a concurrency limit's state and its leases (a rate holds nothing).
        assert len(names) == 3 and all(n.startswith("tollway:{key=kt}:") for n in names)
        for name in names:
            ttl = client.pttl(name)
            assert 0 < ttl <= 1000 + TTL_S * 1000, (name, ttl)
        assert partition_tag("team={x}") != "team={x}" and "{" not in partition_tag("team={x}")

    run(scenario())


def test_rates_too_fine_for_exact_lua_arithmetic_are_refused() -> None:
    from tollway.errors import ConfigError

    with pytest.raises(ConfigError, match="too fine-grained"):
        compile_limit(LimitSpec("huge", "tokens", 999_999_937, 86_400.0, 2_000_000_000, unit="tokens"), 1)
    compile_limit(LimitSpec("big", "tokens", 100_000_000, 86_400.0, unit="tokens"), 1)


# -- rebuild after a data loss ------------------------------------------------------------------


def budget_engine(backend_: RedisBackend) -> PolicyEngine:
    configs = [
        PolicyConfig(name="team-usd", per="team", budget=_budget(usd=50.0, per="month")),
        PolicyConfig(name="key-tokens", per="key", budget=_budget(tokens=100_000, per="day")),
        PolicyConfig(name="rolling-tokens", per="key", budget=_budget(tokens=100_000, per="1h")),
    ]
    return PolicyEngine(configs, backend=backend_)


def _budget(**fields: Any) -> Any:
    from tollway.policy.config import BudgetSpec

    return BudgetSpec(**fields)


def record(at: float, key: str, team: str, tokens: tuple[int, int], cost: float, *verdicts: tuple[str, str]) -> Any:
    return UsageRecord(
        request_id=f"req_{at:.6f}_{key}",
        received_at=at,
        key=key,
        team=team,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        completion_source="provider",
        prompt_source="provider",
        cost_usd=cost,
        cost_source="catalog",
        decisions=[PolicyVerdict(policy=p, kind="budget", verdict=v, partition=part) for p, v, part in verdicts],
    )


@pytest.mark.parametrize("seeds_per_call", [1000, 1])
def test_budgets_are_rebuilt_from_the_ledger_after_flushall(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seeds_per_call: int
) -> None:
    import tollway.state.redis

    monkeypatch.setattr(tollway.state.redis, "_SEEDS_PER_CALL", seeds_per_call)  # one seed per script call, too
    ledger = Ledger(LedgerConfig(path=str(tmp_path / "ledger.sqlite3"), flush_interval_ms=10))
    now = time.time()
    ledger.submit(
        record(
            now - 60,
            "alice",
            "research",
            (100, 50),
            1.25,
            ("team-usd", "allow", "team=research"),
            ("key-tokens", "allow", "key=alice"),
            ("rolling-tokens", "allow", "key=alice"),
        )
    )
    ledger.submit(
        record(now - 30, "bob", "research", (10, 5), 0.5, ("team-usd", "allow", "team=research")),
    )
    # Denied, or released without a model call: not counted.
    ledger.submit(record(now - 20, "bob", "research", (10, 5), 9.0, ("team-usd", "deny", "team=research")))
    released = record(now - 10, "bob", "research", (10, 0), 9.0, ("team-usd", "allow", "team=research"))
    released.completion_source = "none"
    ledger.submit(released)
    assert ledger.flush(5)

    async def scenario() -> None:
        redis_server.client().flushall()
        b = backend(redis_server, key_prefix="rebuild:", rebuild_wait_ms=5000)
        engine = budget_engine(b)
        specs = {p.name: p.limits[0].spec for p in engine.compiled.policies}
        try:
            await b.start(ledger, lambda: engine)  # a new store: seeded before serving
            assert await b.used_async(specs["team-usd"], "team=research") == 1_750_000
            assert await b.used_async(specs["key-tokens"], "key=alice") == 150
            assert await b.used_async(specs["rolling-tokens"], "key=alice") == 150
            first = b.generation
            # Live traffic after that counts in Redis, not from the ledger.
            take = Take(specs["team-usd"], "team=research", 250_000, True)
            assert await b.admit_async([take])
            redis_server.client().flushall()
            # The next call finds the store empty: budgets wait (dollar caps fail closed) ...
            take = Take(specs["team-usd"], "team=research", 1, True)
            assert not await b.admit_async([take])
            assert isinstance(take.answer, StoreUnavailable) and take.degraded == "fail_closed"
            assert b.generation != first
            # ... until this process's ledger is in; the reservation made before the loss is gone.
            await b.drain()
            assert await b.used_async(specs["team-usd"], "team=research") == 1_750_000
            take = Take(specs["team-usd"], "team=research", 1, True)
            assert await b.admit_async([take]) and take.degraded is None
            # Another process on the same ledger file does not add it again.
            other = backend(redis_server, key_prefix="rebuild:")
            budget_engine(other)
            await other.start(ledger, lambda: engine)
            await other.close()
            assert await b.used_async(specs["team-usd"], "team=research") == 1_750_001
        finally:
            await b.close()

    try:
        run(scenario())
    finally:
        ledger.close()


# -- Redis Cluster ---------------------------------------------------------------------------------


def test_redis_cluster_runs_one_script_per_partition_and_keeps_all_or_none(redis_cluster: RedisCluster) -> None:
    from redis.crc import key_slot

    async def scenario() -> None:
        state = StateConfig(backend="redis", url=redis_cluster.url, cluster=True, timeout_ms=2000)
        b = RedisBackend(state, lease_ttl_s=TTL_S)
        rate = LimitSpec("c-rate", "rate", 2, 60.0, 2)
        lease = LimitSpec("c-lease", "concurrency", 5)
        budget = LimitSpec("c-budget", "budget", 100, calendar="day", unit="tokens")
        b.prepare([rate, lease, budget])
        # Three partitions, three slots: a script touching them together would be refused.
        slots = {key_slot(b.keys(spec, part)[0]) for spec, part in ((lease, "team=x"), (budget, "user=u"))}
        assert len(slots | {key_slot(b.keys(rate, "key=a")[0])}) == 3

        def takes() -> list[Take]:
            return [Take(lease, "team=x", 1, True), Take(budget, "user=u", 30, True), Take(rate, "key=a", 1, True)]

        try:
            await b.start()
            held = []
            for _ in range(2):
                admitted = takes()
                assert await b.admit_async(admitted)
                assert all(t.degraded is None for t in admitted)
                held.append(admitted)
            # The rate's slot denies the third request: what the other slots took is given back.
            denied = takes()
            assert not await b.admit_async(denied)
            assert isinstance(denied[2].answer, StoreDenial)
            await b.drain()
            assert await b.used_async(lease, "team=x") == 2
            assert await b.used_async(budget, "user=u") == 60
            # Settlement of a request spread over slots: one script per slot, in the background.
            first = held[0]
            b.settle([(Held(t.spec, t.partition, t.answer.id), 10) for t in first[:2]])  # type: ignore[union-attr]
            await b.drain()
            assert await b.used_async(lease, "team=x") == 1
            assert await b.used_async(budget, "user=u") == 40
        finally:
            await b.close()

    run(scenario())


def test_password_and_database_from_the_config(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tollway._secret_ref import SecretRef

    secret = "s3cret-redis-password-9f1c"
    own_redis.client().config_set("requirepass", secret)
    monkeypatch.setenv("TEST_REDIS_PASSWORD", secret)

    async def scenario(password_env: str) -> Take:
        state = StateConfig(
            backend="redis",
            url=f"redis://127.0.0.1:{own_redis.port}/3",
            password=SecretRef(env=password_env),
            timeout_ms=1000,
        )
        b = RedisBackend(state, lease_ttl_s=TTL_S)
        b.prepare(SPECS)
        take = Take(SPECS[0], "key=pw", 1, True)
        try:
            await b.admit_async([take])
        finally:
            await b.close()
        return take

    assert run(scenario("TEST_REDIS_PASSWORD")).degraded is None
    import redis

    client = redis.Redis(port=own_redis.port, password=secret, db=3)
    assert client.keys("tollway:{key=pw}:*")
    monkeypatch.setenv("WRONG_REDIS_PASSWORD", "not-it")
    assert run(scenario("WRONG_REDIS_PASSWORD")).degraded == "fail_open"
    assert secret not in caplog.text and "not-it" not in caplog.text


def test_a_missing_redis_server_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    import conftest

    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    monkeypatch.setattr(conftest.os.path, "exists", lambda path: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        conftest.redis_tool("redis-server")
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI requires it"):
        conftest.redis_tool("redis-server")
