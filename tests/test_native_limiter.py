"""The limiters through their binding: seconds in, the numbers out, errors as `tollway.errors`.

The algorithms themselves are property-tested against reference models in Rust
(`rust/core/src/limiter/tests.rs`); these tests pin what Python callers rely on: the time
conversion, `Grant`/`Denial` fields, reservations across calls, thread safety, and errors.
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway._native import BudgetWindow, ConcurrencyLimiter, Denial, Grant, RateLimiter, TokenBucket
from tollway.errors import LimiterConfigError, LimiterFullError, TollwayError

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_gcra_burst_then_steady_rate() -> None:
    limiter = RateLimiter(10, 1.0, burst=3)
    grants = [limiter.check("k", now=T0) for _ in range(3)]
    assert all(isinstance(g, Grant) and g.id is None for g in grants)
    assert [g.remaining for g in grants] == [2, 1, 0]  # type: ignore[union-attr]
    denied = limiter.check("k", now=T0)
    assert isinstance(denied, Denial)
    assert (denied.kind, denied.limit, denied.window_seconds, denied.burst) == ("rate", 10, 1.0, 3)
    assert (denied.used, denied.requested) == (3, 1)
    assert denied.retry_after == pytest.approx(0.1)
    # One request every 100 ms after the burst, exactly.
    assert isinstance(limiter.check("k", now=T0 + 0.099), Denial)
    assert isinstance(limiter.check("k", now=T0 + 0.1), Grant)
    # Keys are independent.
    assert isinstance(limiter.check("other", now=T0), Grant)
    assert len(limiter) == 2
    assert "kind='rate'" in repr(denied)


def test_amount_larger_than_burst_can_never_succeed() -> None:
    limiter = RateLimiter(5, 60.0)
    denied = limiter.check("k", amount=6, now=T0)
    assert isinstance(denied, Denial) and denied.retry_after is None


def test_token_bucket_refund_and_debt() -> None:
    bucket = TokenBucket(1000, 60.0)
    grant = bucket.reserve("team:a", 800, now=T0)
    assert isinstance(grant, Grant) and grant.id is not None and grant.remaining == 200
    assert bucket.reservations == 1
    # Settled at 300: 500 come back.
    assert bucket.settle(grant.id, 300, now=T0) is True
    assert bucket.used("team:a", now=T0) == 300
    assert bucket.settle(grant.id, 300, now=T0) is False  # settled ids are unknown afterwards
    # A request that used more than it reserved pushes the bucket into debt...
    second = bucket.reserve("team:a", 700, now=T0)
    assert isinstance(second, Grant) and second.id is not None
    assert bucket.settle(second.id, 1300, now=T0)
    assert bucket.used("team:a", now=T0) == 1600
    denied = bucket.reserve("team:a", 1, now=T0)
    assert isinstance(denied, Denial) and denied.kind == "tokens" and denied.used == 1600
    # ...which later requests wait out: 601 tokens of debt at 1000/min is 36.06 s.
    assert denied.retry_after == pytest.approx(36.06)
    assert isinstance(bucket.reserve("team:a", 1, now=T0 + 36.06), Grant)


def test_token_bucket_release_gives_everything_back_and_expiry_does_not() -> None:
    bucket = TokenBucket(100, 1.0, reservation_ttl=5.0)
    grant = bucket.reserve("k", 100, now=T0)
    assert isinstance(grant, Grant) and grant.id is not None
    assert bucket.release(grant.id, now=T0)
    assert bucket.used("k", now=T0) == 0
    lost = bucket.reserve("k", 100, now=T0)
    assert isinstance(lost, Grant) and lost.id is not None
    # Never settled: after the ttl it is gone, and its estimate stays spent.
    assert bucket.reservations == 1
    assert bucket.release(lost.id, now=T0 + 5.001) is False
    assert bucket.reservations == 0


def test_concurrency_leases() -> None:
    limiter = ConcurrencyLimiter(2, lease_ttl=30.0)
    a, b = limiter.acquire("k", now=T0), limiter.acquire("k", now=T0 + 1)
    assert isinstance(a, Grant) and isinstance(b, Grant) and a.id is not None
    denied = limiter.acquire("k", now=T0 + 2)
    assert isinstance(denied, Denial)
    assert (denied.kind, denied.limit, denied.used, denied.window_seconds) == ("concurrency", 2, 2, None)
    assert denied.retry_after == pytest.approx(28.0)  # when the oldest lease expires
    assert limiter.release(a.id, now=T0 + 3)
    assert limiter.leases == 1 and limiter.used("k", now=T0 + 3) == 1
    assert isinstance(limiter.acquire("k", now=T0 + 3), Grant)


def test_calendar_budget_resets_at_the_offset_midnight() -> None:
    # 2023-11-14T22:13:20Z is 2023-11-15T00:13:20 at +02:00: the day there began 13m20s ago.
    budget = BudgetWindow.calendar(1_000_000, "day", utc_offset=7200)
    grant = budget.reserve("team:a", 900_000, now=T0)
    assert isinstance(grant, Grant) and grant.id is not None
    assert grant.reset_after == pytest.approx(86400 - 800)
    denied = budget.reserve("team:a", 200_000, now=T0)
    assert isinstance(denied, Denial)
    assert (denied.kind, denied.limit, denied.used, denied.requested) == ("budget", 1_000_000, 900_000, 200_000)
    assert denied.window_seconds == 86400.0
    assert denied.retry_after == pytest.approx(86400 - 800)
    assert budget.settle(grant.id, 50_000, now=T0)
    assert budget.used("team:a", now=T0) == 50_000
    assert budget.used("team:a", now=T0 + 86400 - 800) == 0


def test_rolling_budget_forgets_after_the_window() -> None:
    budget = BudgetWindow.rolling(100, 60.0, buckets=60)
    budget.debit("k", 100, now=T0)
    assert isinstance(budget.reserve("k", 1, now=T0 + 30), Denial)
    # A charge counts for at least the window and at most one bucket more.
    assert budget.used("k", now=T0 + 59.999) == 100
    assert budget.used("k", now=T0 + 61.0) == 0


def test_system_clock_is_used_when_now_is_omitted() -> None:
    bucket = TokenBucket(10, 3600.0)
    grant = bucket.reserve("k", 10)
    assert isinstance(grant, Grant)
    # The reset is about one period away whatever the clock reads, so the clock was read.
    assert 3590 < grant.reset_after <= 3600
    assert bucket.used("k", now=time.time()) == 10


def test_time_never_goes_back() -> None:
    limiter = RateLimiter(1, 10.0)
    assert isinstance(limiter.check("k", now=T0 + 100), Grant)
    # An earlier `now` is taken as the latest one seen: the capacity is not handed out twice.
    assert isinstance(limiter.check("k", now=T0 + 95), Denial)


@pytest.mark.parametrize(
    "build",
    [
        lambda: RateLimiter(0, 1.0),
        lambda: RateLimiter(10, 0.0),
        lambda: RateLimiter(10, 1.0, burst=0),
        lambda: TokenBucket(10, 1.0, max_keys=0),
        lambda: ConcurrencyLimiter(0),
        lambda: BudgetWindow.calendar(10, "fortnight"),
        lambda: BudgetWindow.calendar(10, "day", utc_offset=86400),
        lambda: BudgetWindow.rolling(10, 60.0, buckets=7),
    ],
)
def test_bad_settings_raise_limiter_config_error(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LimiterConfigError) as info:
        build()
    assert isinstance(info.value, TollwayError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("now", [-1.0, float("nan"), float("inf")])
def test_bad_times_raise_value_error(now: float) -> None:
    with pytest.raises(ValueError, match="`now` must be a finite, non-negative number of seconds"):
        RateLimiter(1, 1.0).check("k", now=now)


def test_full_budget_table_fails_closed() -> None:
    budget = BudgetWindow.calendar(100, "month", max_keys=2)
    budget.debit("a", 1, now=T0)
    budget.debit("b", 1, now=T0)
    with pytest.raises(LimiterFullError, match="max_keys"):
        budget.reserve("c", 1, now=T0)
    # Rate limits evict instead: they never refuse a key.
    limiter = RateLimiter(1, 60.0, max_keys=2)
    for key in "abc":
        assert isinstance(limiter.check(key, now=T0), Grant)
    assert len(limiter) == 2


def test_threads_share_one_limiter_without_losing_a_decision() -> None:
    limiter = RateLimiter(1000, 3600.0)
    admitted = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        mine = sum(isinstance(limiter.check("shared", now=T0), Grant) for _ in range(500))
        admitted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 1000  # exactly the burst, out of 4,000 attempts


@settings(max_examples=200, deadline=None)
@given(
    estimates=st.lists(st.integers(1, 400), min_size=1, max_size=30),
    actuals=st.lists(st.integers(0, 600), min_size=30, max_size=30),
)
def test_token_bucket_never_admits_more_than_capacity_at_one_instant(estimates: list[int], actuals: list[int]) -> None:
    """At one instant (no refill), admitted estimates never exceed the burst, and settling at
    the actual usage leaves exactly the sum of actuals in use (refunds create nothing)."""
    bucket = TokenBucket(1000, 60.0)
    grants, expected_used = [], 0
    for estimate in estimates:
        answer = bucket.reserve("k", estimate, now=T0)
        # The reference: admitted iff what is held plus this estimate fits in the burst.
        assert isinstance(answer, Grant) == (expected_used + estimate <= 1000)
        if isinstance(answer, Grant):
            grants.append(answer)
            expected_used += estimate
    assert bucket.used("k", now=T0) == expected_used <= 1000
    total = 0
    for grant, actual in zip(grants, actuals, strict=False):
        assert grant.id is not None
        assert bucket.settle(grant.id, actual, now=T0)
        total += actual
    assert bucket.used("k", now=T0) == total
