"""Token counting from Python: the native counter against tiktoken (itself Rust under Python)
on English prose, o200k_base. Target: at least 50 MB/s single-threaded for the native counter.
Run with `make bench`; read the ratio and the MB/s printed by `test_report_throughput`."""

from __future__ import annotations

import time

import pytest

from tollway._native import TokenCounter
from tollway.testing.tiktoken_reference import reference_encodings

PROSE = (
    "It was late in the afternoon when the gateway finally went quiet. The engineers had spent the week "
    "chasing a latency regression that only appeared under load, and every theory they tried seemed to "
    "explain half of the evidence and contradict the other half. In the end the cause was mundane: a "
    "connection pool that was too small for the traffic it served, so requests queued for a free socket "
    "while the servers behind it sat idle. They raised the limit, wrote a test that would have caught it, "
    "and went home. "
) * 200  # ~100 KB
COUNTER = TokenCounter("o200k_base")
TIKTOKEN = reference_encodings()["o200k_base"]


def test_same_count() -> None:
    assert COUNTER.count(PROSE) == len(TIKTOKEN.encode_ordinary(PROSE))


@pytest.mark.benchmark(group="tokens-o200k-english-100kb")
def test_native(benchmark) -> None:  # type: ignore[no-untyped-def]
    benchmark(COUNTER.count, PROSE)


@pytest.mark.benchmark(group="tokens-o200k-english-100kb")
def test_tiktoken(benchmark) -> None:  # type: ignore[no-untyped-def]
    benchmark(lambda: len(TIKTOKEN.encode_ordinary(PROSE)))


@pytest.mark.benchmark(group="tokens-throughput")
def test_report_throughput(benchmark) -> None:  # type: ignore[no-untyped-def]
    def measure(fn) -> float:  # type: ignore[no-untyped-def]
        rounds, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            fn()
            rounds += 1
        return len(PROSE.encode()) * rounds / (time.perf_counter() - started) / 1e6

    native = measure(lambda: COUNTER.count(PROSE))
    reference = measure(lambda: len(TIKTOKEN.encode_ordinary(PROSE)))
    print(
        f"\no200k_base on English prose: native {native:.1f} MB/s, tiktoken {reference:.1f} MB/s, "
        f"ratio {native / reference:.2f}x (target >= 50 MB/s)"
    )
    benchmark.pedantic(COUNTER.count, args=(PROSE,), rounds=1)
