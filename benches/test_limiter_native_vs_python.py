"""Limiter decisions from Python: the native limiters against straightforward pure-Python ones
with the same rules (a GCRA check; a token-bucket reservation settled at once), on one hot key
among 10,000, time advancing 1 ms per call. Run with `make bench`. Target: a limiter check
under 1 us from Python."""

from __future__ import annotations

import itertools

import pytest

from tollway._native import Grant, RateLimiter, TokenBucket

T0 = 1_700_000_000.0
KEYS = [f"team:{i}" for i in range(10_000)]


class PythonGcra:
    """GCRA (virtual scheduling): `limit` per `period` seconds, `burst` at once."""

    def __init__(self, limit: int, period: float, burst: int) -> None:
        self.interval = period / limit
        self.tolerance = (burst - 1) * self.interval
        self.tat: dict[str, float] = {}

    def check(self, key: str, now: float) -> bool:
        tat = max(self.tat.get(key, now), now)
        if tat - now > self.tolerance:
            return False
        self.tat[key] = tat + self.interval
        return True


class PythonTokenBucket:
    """A bucket of `burst` tokens refilled at `limit / period` per second, with reservations."""

    def __init__(self, limit: int, period: float, burst: int) -> None:
        self.rate = limit / period
        self.burst = burst
        self.levels: dict[str, tuple[float, float]] = {}  # key -> (level, at)
        self.reservations: dict[int, tuple[str, int]] = {}
        self.ids = itertools.count(1)

    def _level(self, key: str, now: float) -> float:
        level, at = self.levels.get(key, (self.burst, now))
        return min(self.burst, level + (now - at) * self.rate)

    def reserve(self, key: str, estimate: int, now: float) -> int | None:
        level = self._level(key, now)
        if level < estimate:
            return None
        self.levels[key] = (level - estimate, now)
        rid = next(self.ids)
        self.reservations[rid] = (key, estimate)
        return rid

    def settle(self, rid: int, actual: int, now: float) -> bool:
        found = self.reservations.pop(rid, None)
        if found is None:
            return False
        key, estimate = found
        self.levels[key] = (self._level(key, now) + estimate - actual, now)
        return True


def run_gcra(limiter: RateLimiter | PythonGcra, n: int = 1000) -> int:
    admitted, now = 0, T0
    for i in range(n):
        now += 0.001
        answer = limiter.check(KEYS[i * 7919 % len(KEYS)], now=now)
        admitted += answer is True or isinstance(answer, Grant)
    return admitted


def run_bucket(bucket: TokenBucket | PythonTokenBucket, n: int = 1000) -> int:
    admitted, now = 0, T0
    for i in range(n):
        now += 0.001
        key = KEYS[i * 7919 % len(KEYS)]
        if isinstance(bucket, TokenBucket):
            grant = bucket.reserve(key, 500, now=now)
            if isinstance(grant, Grant) and grant.id is not None:
                bucket.settle(grant.id, 200, now=now)
                admitted += 1
        else:
            rid = bucket.reserve(key, 500, now)
            if rid is not None:
                bucket.settle(rid, 200, now)
                admitted += 1
    return admitted


def test_same_decisions() -> None:
    assert run_gcra(RateLimiter(100, 1.0, 10)) == run_gcra(PythonGcra(100, 1.0, 10)) == 1000
    tight_native, tight_python = RateLimiter(1, 60.0, 2), PythonGcra(1, 60.0, 2)
    assert [isinstance(tight_native.check("k", now=T0), Grant) for _ in range(3)] == [
        tight_python.check("k", T0) for _ in range(3)
    ]
    assert run_bucket(TokenBucket(10_000, 60.0)) == run_bucket(PythonTokenBucket(10_000, 60.0, 10_000)) == 1000


@pytest.mark.benchmark(group="limiter-gcra-1000-checks")
def test_native_gcra(benchmark) -> None:  # type: ignore[no-untyped-def]
    limiter = RateLimiter(100, 1.0, 10)
    benchmark(run_gcra, limiter)


@pytest.mark.benchmark(group="limiter-gcra-1000-checks")
def test_python_gcra(benchmark) -> None:  # type: ignore[no-untyped-def]
    limiter = PythonGcra(100, 1.0, 10)
    benchmark(run_gcra, limiter)


@pytest.mark.benchmark(group="limiter-bucket-1000-reserve-settle")
def test_native_bucket(benchmark) -> None:  # type: ignore[no-untyped-def]
    bucket = TokenBucket(10_000, 60.0)
    benchmark(run_bucket, bucket)


@pytest.mark.benchmark(group="limiter-bucket-1000-reserve-settle")
def test_python_bucket(benchmark) -> None:  # type: ignore[no-untyped-def]
    bucket = PythonTokenBucket(10_000, 60.0, 10_000)
    benchmark(run_bucket, bucket)


@pytest.mark.benchmark(group="limiter-one-check")
def test_native_one_check(benchmark) -> None:  # type: ignore[no-untyped-def]
    """One `RateLimiter.check` call with the system clock, as the gateway makes it."""
    limiter = RateLimiter(1_000_000_000, 1.0)
    benchmark(limiter.check, "team:research")
