"""What settling a request costs the event loop: `LedgerWriter.submit` and
`GatewayMetrics.observe_record` (the "ledger enqueue + metrics" line of the request budget,
10 us). Run with `make bench`; each round handles 1,000 records, so the mean per round in
microseconds is the cost per record in nanoseconds.

- `submit` into a queue with room, while the writer thread is parked (nothing else competes for
  the GIL): the enqueue alone. Target: well under 5 us.
- `submit` into a full queue: the drop path (counted, the warning throttled).
- `submit` then `flush` to SQLite: the writer's whole cost per record (encode, insert, commit),
  which a worker pays in CPU even though the request path does not wait for it.
- `observe_record` on a full record (tokens of every type, two failed attempts, two verdicts),
  and the two primitives under it. Target: `inc`/`observe` under 1 us.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tollway.observability.metrics import GatewayMetrics, Registry
from tollway.usage.ledger import LedgerWriter, SqliteLedger
from tollway.usage.record import Attempt, PolicyVerdict, UsageRecord

N = 1000
ROUNDS = 200

RECORD = UsageRecord(
    request_id="req_0123456789abcdef01234567",
    received_at=1_700_000_000.0,
    finished_at=1_700_000_001.5,
    endpoint="/v1/chat/completions",
    key="alice-key",
    team="research",
    user="alice",
    requested_model="fast",
    provider="openai",
    upstream_model="gpt-4o-mini",
    stream=True,
    status=200,
    prompt_tokens=1000,
    completion_tokens=200,
    cached_tokens=600,
    cache_write_tokens=50,
    reasoning_tokens=30,
    prompt_source="provider",
    completion_source="provider",
    cost_usd=0.0042,
    cost_source="catalog",
    latency_ms=1500.0,
    ttft_ms=250.0,
    overhead_ms=0.4,
    attempts=[
        Attempt(provider="azure", model="gpt-4o-mini", status=503, outcome="server_error", latency_ms=80.0),
        Attempt(provider="azure", model="gpt-4o-mini", outcome="timeout", reason="retry", latency_ms=30000.0),
        Attempt(provider="openai", model="gpt-4o-mini", status=200, reason="fallback", latency_ms=1400.0),
    ],
    decisions=[
        PolicyVerdict(policy="team-rate", kind="rate", verdict="allow", limit=600, window="1m", used=12),
        PolicyVerdict(policy="daily-usd", kind="budget", verdict="allow", limit=5.0, window="day", used=1.2),
    ],
)


class ParkedSink:
    """Holds the writer thread inside `write_batch` until released, so the queue only grows."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def write_batch(self, records: Sequence[UsageRecord]) -> None:
        self.release.wait()

    def prune(self, before: float) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def parked() -> Iterator[LedgerWriter]:
    sink = ParkedSink()
    writer = LedgerWriter(sink, queue_size=N * (ROUNDS + 10), batch_size=1, retention_days=0)
    yield writer
    sink.release.set()
    writer.close(60)


def submit_n(writer: LedgerWriter) -> None:
    submit = writer.submit
    for _ in range(N):
        submit(RECORD)


@pytest.mark.benchmark(group="ledger-submit-1000")
def test_submit_with_room(benchmark, parked: LedgerWriter) -> None:  # type: ignore[no-untyped-def]
    benchmark.pedantic(submit_n, args=(parked,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert parked.dropped == 0


@pytest.mark.benchmark(group="ledger-submit-1000")
def test_submit_when_full(benchmark) -> None:  # type: ignore[no-untyped-def]
    sink = ParkedSink()
    writer = LedgerWriter(sink, queue_size=1, batch_size=1, retention_days=0)
    writer.submit(RECORD)
    writer.submit(RECORD)  # one held by the parked writer, one fills the queue
    benchmark.pedantic(submit_n, args=(writer,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert writer.dropped_queue_full >= N * ROUNDS
    sink.release.set()
    writer.close(60)


@pytest.mark.benchmark(group="ledger-submit-and-write-1000")
def test_submit_and_write_to_sqlite(benchmark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sink = SqliteLedger(tmp_path / "bench.sqlite3")
    writer = LedgerWriter(sink, retention_days=0)
    counter = iter(range(10**9))

    def run() -> None:
        submit = writer.submit
        for _ in range(N):
            submit(UsageRecord(request_id=f"req_{next(counter)}", received_at=1_700_000_000.0, key="k"))
        writer.flush(60)

    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=1)
    assert writer.dropped == 0 and writer.write_errors == 0
    writer.close(60)
    sink.close()


@pytest.mark.benchmark(group="metrics-1000")
def test_observe_record(benchmark) -> None:  # type: ignore[no-untyped-def]
    metrics = GatewayMetrics(models=["fast"])

    def run() -> None:
        observe = metrics.observe_record
        for _ in range(N):
            observe(RECORD)

    benchmark(run)


@pytest.mark.benchmark(group="metrics-1000")
def test_counter_inc(benchmark) -> None:  # type: ignore[no-untyped-def]
    counter = Registry().counter("bench_total", "Bench.", ("endpoint", "model", "provider", "status_class"))
    labels = ("/v1/chat/completions", "fast", "openai", "2xx")

    def run() -> None:
        inc = counter.inc
        for _ in range(N):
            inc(labels)

    benchmark(run)


@pytest.mark.benchmark(group="metrics-1000")
def test_histogram_observe(benchmark) -> None:  # type: ignore[no-untyped-def]
    histogram = Registry().histogram("bench_seconds", "Bench.", ("endpoint", "model", "provider"))
    labels = ("/v1/chat/completions", "fast", "openai")

    def run() -> None:
        observe = histogram.observe
        for _ in range(N):
            observe(1.5, labels)

    benchmark(run)
