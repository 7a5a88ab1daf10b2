"""The usage ledger: SQLite storage, the background writer, queries, and the CLI helpers.

What callers rely on: a record read back is the record written (nested attempts and decisions
included); `submit` never waits, and a full queue drops and counts instead; `flush`/`close`
write everything submitted; the file survives a restart and is shared by several processes;
totals match a plain-Python aggregation for every grouping and filter; old rows are pruned; a
failing sink is retried, counted, and does not stop the writer.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tollway.errors import TollwayError
from tollway.usage.ledger import (
    GROUP_BY_NAMES,
    SCHEMA_VERSION,
    TOTAL_COLUMNS,
    Ledger,
    LedgerConfig,
    LedgerError,
    LedgerQueryError,
    LedgerWriter,
    SqliteLedger,
    format_table,
    parse_since,
)
from tollway.usage.record import Attempt, PolicyVerdict, UsageRecord

T0 = datetime(2025, 1, 30, 22, 0, tzinfo=UTC).timestamp()


def wait_until(predicate: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Poll `predicate` until it holds; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {deadline_s}s")
        time.sleep(0.005)


def full_record(request_id: str = "req_full") -> UsageRecord:
    """A record with every field set, nested lists included."""
    return UsageRecord(
        request_id=request_id,
        received_at=T0 + 0.123456,
        finished_at=T0 + 2.5,
        first_byte_at=T0 + 0.75,
        endpoint="/v1/chat/completions",
        api="anthropic",
        key="alice-key",
        team="research",
        user="alice",
        tags=["batch", "eval"],
        client_ip="10.0.0.7",
        requested_model="claude-fast",
        params={"max_tokens": 512.0, "temperature": 0.2},
        provider="anthropic-eu",
        upstream_model="claude-3-5-haiku-20241022",
        stream=True,
        status=200,
        error_code="upstream_broken_stream",
        error="the stream broke after 12 events",
        prompt_tokens=1200,
        completion_tokens=345,
        cached_tokens=1000,
        cache_write_tokens=100,
        reasoning_tokens=40,
        prompt_source="provider",
        completion_source="partial",
        cost_usd=0.001234,
        cost_source="catalog",
        latency_ms=2377.5,
        ttft_ms=412.25,
        overhead_ms=0.31,
        client_disconnected=True,
        attempts=[
            Attempt(
                provider="anthropic-us",
                model="claude-3-5-haiku-20241022",
                status=529,
                outcome="server_error",
                error="overloaded",
                latency_ms=120.0,
                reason="primary",
            ),
            Attempt(
                provider="anthropic-eu",
                model="claude-3-5-haiku-20241022",
                status=200,
                outcome="broken_stream",
                latency_ms=2250.0,
                ttft_ms=400.0,
                reason="fallback",
            ),
        ],
        decisions=[
            PolicyVerdict(
                policy="team-rate",
                kind="rate",
                verdict="allow",
                partition="team=research",
                limit=600,
                window="1m",
                used=12,
                requested=1,
                remaining=587,
                unit="requests",
            ),
            PolicyVerdict(
                policy="daily-usd",
                kind="budget",
                verdict="would_deny",
                mode="shadow",
                limit=5.0,
                window="day",
                used=5.2,
                requested=0.01,
                remaining=0.0,
                retry_after_s=3600.0,
                resets_at=T0 + 7200,
                unit="usd",
                detail="over by $0.21",
            ),
        ],
    )


def record(i: int, **fields: Any) -> UsageRecord:
    return UsageRecord(request_id=f"req_{i:06d}", received_at=T0 + i, **fields)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def sink(db: Path) -> Iterator[SqliteLedger]:
    ledger = SqliteLedger(db)
    yield ledger
    ledger.close()


class ListSink:
    """A sink that keeps batches in memory; `fail` makes the next N writes raise."""

    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[UsageRecord]] = []
        self.fail = fail
        self.calls = 0

    def write_batch(self, records: Sequence[UsageRecord]) -> None:
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            raise OSError(28, "No space left on device")
        self.batches.append(list(records))

    @property
    def ids(self) -> list[str]:
        return [r.request_id for batch in self.batches for r in batch]

    def prune(self, before: float) -> int:
        return 0

    def close(self) -> None:
        pass


class BlockingSink(ListSink):
    """Blocks inside `write_batch` until `release` is set; `entered` tells that it is there."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_batch(self, records: Sequence[UsageRecord]) -> None:
        self.entered.set()
        assert self.release.wait(30), "the test never released the sink"
        super().write_batch(records)


# ---------------------------------------------------------------------------------------------
# Storage


def test_round_trip_of_a_full_record(sink: SqliteLedger) -> None:
    rec = full_record()
    other = record(1, key="bob")
    sink.write_batch([rec, other])
    got = sink.get(rec.request_id)
    assert got == rec
    assert got is not None and got.attempts[1].ttft_ms == 400.0 and got.decisions[1].mode == "shadow"
    assert sink.get("req_missing") is None
    assert sink.records() == [rec, other]  # oldest first
    # The record column is plain JSON, readable from the sqlite3 shell.
    with sqlite3.connect(sink.path) as conn:
        outcome = conn.execute(
            "SELECT json_extract(record, '$.attempts[0].outcome') FROM requests WHERE request_id = ?",
            (rec.request_id,),
        ).fetchone()[0]
    conn.close()
    assert outcome == "server_error"


def test_the_full_record_sets_every_field_and_a_bare_one_round_trips(sink: SqliteLedger) -> None:
    # A row holds some fields as columns and the rest as JSON without their defaults: a field
    # added to `UsageRecord` and stored in neither would come back as its default, so the round
    # trip above must cover every field with a value that is not the default.
    rec, bare = full_record(), UsageRecord(request_id="req_bare", received_at=T0)
    unset = [f for f in UsageRecord.__struct_fields__ if getattr(rec, f) == getattr(bare, f)]
    assert unset == []
    sink.write_batch([bare])
    assert sink.get("req_bare") == bare
    with sqlite3.connect(sink.path) as conn:
        stored = conn.execute("SELECT record FROM requests WHERE request_id = 'req_bare'").fetchone()[0]
    conn.close()
    assert stored == "{}"  # the columns are not repeated, the defaults left out


def test_missing_values_are_sql_nulls_and_empty_strings_stay_strings(sink: SqliteLedger) -> None:
    # Rows bind a missing value as NaN (SQLite stores NULL), not as None: what a query filtering
    # or grouping on the column sees must be a real NULL, and "" must not become one.
    bare = UsageRecord(request_id="req_bare", received_at=T0)
    empty = UsageRecord(request_id="req_empty", received_at=T0 + 1, key="", team="", user="", ttft_ms=0.0)
    sink.write_batch([bare, empty])
    nullable = ("key", "team", "user", "requested_model", "provider", "upstream_model", "error_code", "ttft_ms")
    with sqlite3.connect(sink.path) as conn:
        kinds = {
            rid: conn.execute(
                "SELECT " + ", ".join(f'typeof("{c}")' for c in nullable) + " FROM requests WHERE request_id = ?",
                (rid,),
            ).fetchone()
            for rid in ("req_bare", "req_empty")
        }
        team_is_null = conn.execute('SELECT request_id FROM requests WHERE "team" IS NULL').fetchall()
    conn.close()
    assert kinds["req_bare"] == ("null",) * len(nullable)
    assert kinds["req_empty"] == ("text", "text", "text", "null", "null", "null", "null", "real")
    assert team_is_null == [("req_bare",)]
    assert sink.get("req_bare") == bare and sink.get("req_empty") == empty


def test_rows_holding_the_whole_record_as_json_still_read(sink: SqliteLedger) -> None:
    # Files written before the record column was trimmed to the fields without a column.
    rec = full_record("req_old_layout")
    sink.write_batch([rec])
    with sqlite3.connect(sink.path) as conn:
        conn.execute(
            "UPDATE requests SET record = ? WHERE request_id = ?",
            (msgspec.json.encode(rec).decode(), rec.request_id),
        )
    conn.close()
    assert sink.get(rec.request_id) == rec
    assert sink.records() == [rec]


def test_rewriting_a_request_id_replaces_the_row(sink: SqliteLedger) -> None:
    sink.write_batch([record(1, status=502)])
    sink.write_batch([record(1, status=200)])  # a retried batch must not fail or duplicate
    assert sink.count() == 1
    got = sink.get("req_000001")
    assert got is not None and got.status == 200


def test_records_replays_a_time_range_in_order(sink: SqliteLedger) -> None:
    sink.write_batch([record(i) for i in (5, 3, 9, 1, 7)])
    assert [r.request_id for r in sink.records(since=T0 + 3, until=T0 + 9)] == [
        "req_000003",
        "req_000005",
        "req_000007",
    ]
    assert [r.request_id for r in sink.records(limit=2)] == ["req_000001", "req_000003"]


def test_schema_version_and_pragmas(sink: SqliteLedger, db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = [row[1] for row in conn.execute("PRAGMA index_list('requests')")]
        leading = {conn.execute(f"PRAGMA index_info('{name}')").fetchone()[2] for name in indexes}
    finally:
        conn.close()
    # Lookups by id (the primary key), time ranges, and per-key queries are indexed; the other
    # groupings scan the time range (each index costs the writer CPU per record).
    assert leading == {"request_id", "received_at", "key"}


def test_a_file_from_a_newer_tollway_is_refused(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LedgerError, match="newer than this tollway"):
        SqliteLedger(db)


def test_an_unopenable_path_says_which(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match=r"cannot open the ledger `.*missing-dir/ledger\.sqlite3`"):
        SqliteLedger(tmp_path / "missing-dir" / "ledger.sqlite3")


def test_readonly_open(db: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger at"):
        SqliteLedger(db, readonly=True)
    writer = SqliteLedger(db)
    writer.write_batch([record(1)])
    reader = SqliteLedger(db, readonly=True)
    try:
        assert reader.get("req_000001") == record(1)
        with pytest.raises(LedgerError, match="read-only"):
            reader.write_batch([record(2)])
    finally:
        reader.close()
        writer.close()


def test_a_locked_file_is_waited_for_then_retried(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    sink = SqliteLedger(db, busy_timeout_s=0.02, busy_retries=500)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    errors: list[BaseException] = []

    def write() -> None:
        try:
            sink.write_batch([record(1)])
        except BaseException as exc:
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="tollway.ledger")
    thread = threading.Thread(target=write)
    thread.start()
    wait_until(lambda: any("locked; retrying" in r.getMessage() for r in caplog.records))
    holder.execute("COMMIT")
    holder.close()
    thread.join(30)
    assert not errors
    assert sink.get("req_000001") == record(1)
    sink.close()


def test_a_file_locked_past_every_retry_raises(db: Path) -> None:
    sink = SqliteLedger(db, busy_timeout_s=0.01, busy_retries=1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            sink.write_batch([record(1)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        sink.close()


# ---------------------------------------------------------------------------------------------
# The writer


def test_writer_writes_in_batches_of_at_most_batch_size() -> None:
    sink = ListSink()
    writer = LedgerWriter(sink, batch_size=10, flush_interval_s=0.05)
    for i in range(35):
        assert writer.submit(record(i))
    assert writer.flush(10)
    assert sink.ids == [f"req_{i:06d}" for i in range(35)]  # in order, each once
    assert max(len(b) for b in sink.batches) == 10
    assert len(sink.batches) >= 4
    assert writer.written == 35 and writer.queue_depth == 0
    assert writer.close(10)


def test_writer_writes_on_its_interval_without_a_flush() -> None:
    sink = ListSink()
    writer = LedgerWriter(sink, batch_size=500, flush_interval_s=0.02)
    for i in range(3):
        writer.submit(record(i))
    wait_until(lambda: writer.written == 3)  # fewer than a batch: written by the timer
    assert sink.ids == ["req_000000", "req_000001", "req_000002"]
    writer.close(10)


def test_submit_never_blocks_and_counts_drops_when_full(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tollway.ledger")
    sink = BlockingSink()
    writer = LedgerWriter(sink, queue_size=5, batch_size=1, flush_interval_s=0.01, log_interval_s=3600)
    assert writer.submit(record(0))
    assert sink.entered.wait(10)  # the writer holds record 0 and is stuck in the sink
    accepted = [writer.submit(record(i)) for i in range(1, 9)]
    # The queue holds 5; the rest return False at once while the writer is still blocked.
    assert accepted == [True] * 5 + [False] * 3
    assert writer.queue_depth == 5
    assert writer.dropped_queue_full == 3 and writer.dropped == 3
    assert writer.stats().dropped == 3
    warnings = [r for r in caplog.records if "dropped the usage record" in r.getMessage()]
    assert len(warnings) == 1  # at most one warning per interval
    assert "req_000006" in warnings[0].getMessage() and "queue is full (5 records)" in warnings[0].getMessage()
    sink.release.set()
    assert writer.flush(10)
    assert sink.ids == [f"req_{i:06d}" for i in range(6)]
    assert writer.written == 6
    # Room again once drained.
    assert writer.submit(record(100))
    assert writer.close(10)
    assert writer.written == 7


def test_close_writes_everything_and_later_submits_are_dropped(sink: SqliteLedger) -> None:
    writer = LedgerWriter(sink, batch_size=100, flush_interval_s=5.0, retention_days=0)  # no timer write here
    for i in range(1234):
        assert writer.submit(record(i))
    assert writer.close(30)
    assert sink.count() == 1234
    assert not writer.submit(record(99999))
    assert writer.dropped_closed == 1 and writer.written == 1234
    assert writer.flush(1)  # nothing pending: returns at once


def test_flush_waits_only_for_what_was_submitted_before_it() -> None:
    sink = BlockingSink()
    writer = LedgerWriter(sink, batch_size=1, flush_interval_s=0.01)
    writer.submit(record(0))
    assert sink.entered.wait(10)
    assert not writer.flush(0.05)  # the sink is stuck: flush times out, says so
    sink.release.set()
    assert writer.flush(10)
    assert writer.written == 1
    assert writer.close(10)


def test_the_writer_keeps_up_while_the_submitting_thread_never_yields_the_gil(sink: SqliteLedger) -> None:
    # The gateway's event loop under load: pure Python work, never waiting on I/O, so the writer
    # thread gets the GIL only when the interpreter forces a switch (every 5 ms). The writer
    # takes the GIL a few times per batch (its inserts are multi-row statements), so it keeps
    # up with a busy worker's rate instead of dropping records.
    writer = LedgerWriter(sink, queue_size=1000, batch_size=500, flush_interval_s=0.05, retention_days=0)
    submitted, deadline = 0, time.perf_counter() + 1.5
    next_at = time.perf_counter()
    while time.perf_counter() < deadline:
        if time.perf_counter() >= next_at:  # about 2,000 records a second, spinning in between
            writer.submit(record(submitted))
            submitted += 1
            next_at += 0.0005
    assert writer.close(30)
    assert writer.dropped == 0, writer.stats()
    assert sink.count() == submitted > 1000


def test_records_survive_a_restart(db: Path) -> None:
    config = LedgerConfig(path=str(db), flush_interval_ms=10, retention_days=0)  # the records are from 2025
    ledger = Ledger(config)
    rec = full_record()
    assert ledger.submit(rec)
    for i in range(50):
        ledger.submit(record(i))
    assert ledger.close()
    reopened = Ledger(config)
    try:
        assert reopened.get(rec.request_id) == rec
        assert reopened.query_totals()[0]["requests"] == 51
    finally:
        reopened.close()


def test_two_connections_in_threads_share_a_file(db: Path) -> None:
    sinks = [SqliteLedger(db), SqliteLedger(db)]
    writers = [LedgerWriter(s, batch_size=7, flush_interval_s=0.01, retention_days=0) for s in sinks]

    def produce(n: int) -> None:
        for i in range(500):
            assert writers[n].submit(record(n * 1000 + i))

    threads = [threading.Thread(target=produce, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(w.close(30) for w in writers)
    assert sinks[0].count() == 1000
    assert sum(w.write_errors for w in writers) == 0
    for s in sinks:
        s.close()


_PROCESS_WRITER = """
import sys
from tollway.usage.ledger import LedgerWriter, SqliteLedger
from tollway.usage.record import UsageRecord

path, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sink = SqliteLedger(path, busy_timeout_s=10)
writer = LedgerWriter(sink, queue_size=n, batch_size=20, flush_interval_s=0.005, retention_days=0)
print("ready", flush=True)
sys.stdin.readline()  # start together with the other process
for i in range(n):
    assert writer.submit(UsageRecord(request_id=f"{prefix}-{i}", received_at=1.7e9 + i, key=prefix))
    if i % 200 == 0:
        writer.flush(30)  # interleave the two processes' transactions
assert writer.close(60)
sink.close()
stats = writer.stats()
assert stats.written == n and stats.dropped == 0, stats
print("written", stats.written, "errors", stats.write_errors, flush=True)
"""


def test_two_processes_write_one_file(db: Path) -> None:
    SqliteLedger(db).close()  # create the schema once, as the first worker to start would
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_WRITER, str(db), name, "2000"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("w1", "w2")
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", line + p.stdout.read()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    reader = SqliteLedger(db, readonly=True)
    try:
        totals = {row["key"]: row["requests"] for row in reader.query_totals(group_by=["key"])}
        assert totals == {"w1": 2000, "w2": 2000}
    finally:
        reader.close()


def test_a_failing_sink_is_retried_and_the_writer_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tollway.ledger")
    sink = ListSink(fail=2)
    writer = LedgerWriter(sink, batch_size=100, flush_interval_s=0.01, max_attempts=3, retry_backoff_s=0)
    for i in range(10):
        writer.submit(record(i))
    assert writer.flush(10)
    assert sink.ids == [f"req_{i:06d}" for i in range(10)]  # the third attempt went through
    assert (writer.write_errors, writer.written, writer.dropped) == (2, 10, 0)
    assert any("No space left on device" in r.getMessage() for r in caplog.records)


def test_a_batch_failing_every_attempt_is_dropped_counted_and_the_writer_goes_on() -> None:
    sink = ListSink(fail=3)
    writer = LedgerWriter(sink, batch_size=100, flush_interval_s=0.01, max_attempts=3, retry_backoff_s=0)
    for i in range(4):
        writer.submit(record(i))
    assert writer.flush(10)
    assert (writer.write_errors, writer.dropped_write_failed, writer.written) == (3, 4, 0)
    # The sink works again: the thread is alive and the next records are written.
    writer.submit(record(10))
    assert writer.flush(10)
    assert sink.ids == ["req_000010"]
    assert writer.stats().dropped == 4
    assert writer.close(10)


class RaisingPruneSink(ListSink):
    def prune(self, before: float) -> int:
        raise sqlite3.OperationalError("disk I/O error")


def test_a_failing_prune_does_not_stop_the_writer() -> None:
    sink = RaisingPruneSink()
    writer = LedgerWriter(sink, retention_days=1, flush_interval_s=0.01)
    writer.submit(record(1))
    assert writer.flush(10)
    assert sink.ids == ["req_000001"]
    writer.close(10)


# ---------------------------------------------------------------------------------------------
# Retention


def test_retention_prunes_old_rows(sink: SqliteLedger) -> None:
    now = time.time()
    old = [UsageRecord(request_id=f"old{i}", received_at=now - 31 * 86400 - i) for i in range(20)]
    young = [UsageRecord(request_id=f"young{i}", received_at=now - 29 * 86400 + i) for i in range(5)]
    sink.write_batch(old + young)
    writer = LedgerWriter(sink, retention_days=30, flush_interval_s=0.01)
    assert writer.flush(10)  # the first prune runs before the first drain
    assert writer.pruned == 20
    assert sorted(r.request_id for r in sink.records()) == sorted(r.request_id for r in young)
    writer.close(10)


def test_retention_zero_keeps_everything(sink: SqliteLedger) -> None:
    sink.write_batch([UsageRecord(request_id="ancient", received_at=1.0)])
    writer = LedgerWriter(sink, retention_days=0, flush_interval_s=0.01)
    assert writer.flush(10)
    writer.close(10)
    assert sink.count() == 1 and writer.pruned == 0


def test_prune_deletes_in_chunks(sink: SqliteLedger) -> None:
    sink.write_batch([record(i) for i in range(23)])
    assert sink.prune(T0 + 20, chunk=4) == 20
    assert [r.request_id for r in sink.records()] == ["req_000020", "req_000021", "req_000022"]


# ---------------------------------------------------------------------------------------------
# Queries


def dataset() -> list[UsageRecord]:
    """120 records over three UTC days; costs are multiples of 1/64, so float sums are exact."""
    out = []
    for i in range(120):
        status = (200, 200, 200, 429, 500, 0)[i % 6]
        out.append(
            UsageRecord(
                request_id=f"req_{i:06d}",
                received_at=T0 + i * 37 * 60 + 0.25,
                endpoint=("/v1/chat/completions", "/v1/messages")[i % 2],
                key=f"k{i % 3}",
                team=("t0", "t1", None)[i % 3 if i % 4 else 2],
                user=f"u{i % 5}",
                requested_model=("m-a", "m-b", "m-c")[(i // 2) % 3],
                provider=("p1", "p2")[(i // 3) % 2],
                upstream_model=("m-a-2024", "m-b-2024", "m-c-2024")[(i // 2) % 3],
                status=status,
                error_code="upstream_broken_stream" if i % 10 == 1 else None,
                prompt_tokens=100 + i,
                completion_tokens=7 * i,
                cached_tokens=i % 4 * 10,
                cache_write_tokens=i % 5,
                reasoning_tokens=i % 3,
                cost_usd=(i % 7) / 64 if i % 9 else 0.0,
                cost_source="unpriced" if i % 9 == 0 else "catalog",
            )
        )
    return out


def _group_value(r: UsageRecord, name: str) -> Any:
    when = datetime.fromtimestamp(r.received_at, UTC)
    return {
        "model": r.requested_model,
        "day": when.strftime("%Y-%m-%d"),
        "hour": when.strftime("%Y-%m-%dT%H:00:00Z"),
    }.get(name, getattr(r, name, None))


def expected_totals(records: Sequence[UsageRecord], group_by: Sequence[str]) -> list[dict[str, Any]]:
    groups: dict[tuple[Any, ...], list[UsageRecord]] = {}
    for r in records:
        groups.setdefault(tuple(_group_value(r, n) for n in group_by), []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(group_by, key, strict=True))
        row.update(
            requests=len(members),
            prompt_tokens=sum(r.prompt_tokens for r in members),
            completion_tokens=sum(r.completion_tokens for r in members),
            cached_tokens=sum(r.cached_tokens for r in members),
            cache_write_tokens=sum(r.cache_write_tokens for r in members),
            reasoning_tokens=sum(r.reasoning_tokens for r in members),
            total_tokens=sum(r.prompt_tokens + r.completion_tokens for r in members),
            cost_usd=sum(r.cost_usd for r in members),
            unpriced_requests=sum(r.cost_source == "unpriced" for r in members),
            errors=sum(r.status >= 400 or r.error_code is not None for r in members),
        )
        rows.append(row)
    rows.sort(key=lambda row: tuple((row[n] is not None, row[n]) for n in group_by))
    rows.sort(key=lambda row: (-row["cost_usd"], -row["requests"]))
    return rows


@pytest.fixture
def loaded(sink: SqliteLedger) -> SqliteLedger:
    sink.write_batch(dataset())
    return sink


@pytest.mark.parametrize("name", GROUP_BY_NAMES)
def test_totals_by_each_group(loaded: SqliteLedger, name: str) -> None:
    got = loaded.query_totals(group_by=[name])
    assert got == expected_totals(dataset(), [name])
    assert list(got[0]) == [name, *TOTAL_COLUMNS]


@pytest.mark.parametrize(
    "group_by", [["team", "model"], ["day", "provider"], ["key", "user", "status"], ["hour", "model"]]
)
def test_totals_by_several_groups(loaded: SqliteLedger, group_by: list[str]) -> None:
    assert loaded.query_totals(group_by=group_by) == expected_totals(dataset(), group_by)


def test_totals_without_groups_and_for_an_empty_range(loaded: SqliteLedger) -> None:
    assert loaded.query_totals() == expected_totals(dataset(), [])
    assert loaded.query_totals(since=T0 - 100, until=T0 - 10) == []
    assert loaded.query_totals(since=T0 - 100, until=T0 - 10, group_by=["key"]) == []


def test_day_and_hour_buckets_are_utc_iso_strings(loaded: SqliteLedger) -> None:
    days = [row["day"] for row in loaded.query_totals(group_by=["day"])]
    assert sorted(days) == ["2025-01-30", "2025-01-31", "2025-02-01", "2025-02-02"]
    hours = {row["hour"] for row in loaded.query_totals(group_by=["hour"])}
    assert "2025-01-30T22:00:00Z" in hours and len(hours) > 60


FILTERS: list[tuple[dict[str, Any], Callable[[UsageRecord], bool]]] = [
    ({"provider": "p1"}, lambda r: r.provider == "p1"),
    ({"model": ["m-a", "m-c"]}, lambda r: r.requested_model in ("m-a", "m-c")),
    ({"team": "t1", "key": "k1"}, lambda r: r.team == "t1" and r.key == "k1"),
    ({"user": ["u0"], "endpoint": "/v1/messages"}, lambda r: r.user == "u0" and r.endpoint == "/v1/messages"),
    ({"upstream_model": "m-b-2024"}, lambda r: r.upstream_model == "m-b-2024"),
    ({"status": "4xx"}, lambda r: 400 <= r.status < 500),
    ({"status": ["200", "5xx"]}, lambda r: r.status == 200 or 500 <= r.status < 600),
    ({"status": "0"}, lambda r: r.status == 0),
    ({"cost_source": "unpriced"}, lambda r: r.cost_source == "unpriced"),
    ({"error_code": "upstream_broken_stream"}, lambda r: r.error_code == "upstream_broken_stream"),
    ({"model": []}, lambda r: False),
    ({"key": "k0' OR 1=1 --"}, lambda r: False),  # a value is a parameter, never SQL
]


@pytest.mark.parametrize(("filters", "keep"), FILTERS)
def test_filters(loaded: SqliteLedger, filters: dict[str, Any], keep: Callable[[UsageRecord], bool]) -> None:
    want = [r for r in dataset() if keep(r)]
    assert loaded.query_totals(group_by=["model", "status"], filters=filters) == expected_totals(
        want, ["model", "status"]
    )


def test_time_range_is_half_open(loaded: SqliteLedger) -> None:
    records = dataset()
    since, until = records[10].received_at, records[50].received_at
    want = [r for r in records if since <= r.received_at < until]
    assert len(want) == 40
    assert loaded.query_totals(since, until, ["key"]) == expected_totals(want, ["key"])
    assert loaded.query_totals(since=since, group_by=["key"]) == expected_totals(records[10:], ["key"])
    assert loaded.query_totals(until=until, group_by=["key"]) == expected_totals(records[:50], ["key"])


def test_unpriced_and_errors_are_counted(sink: SqliteLedger) -> None:
    sink.write_batch(
        [
            record(1, key="a", cost_usd=0.5, cost_source="catalog", status=200),
            record(2, key="a", cost_source="unpriced", status=200, prompt_tokens=10),
            record(3, key="a", cost_source="unpriced", status=200, error_code="upstream_broken_stream"),
            record(4, key="a", cost_source="none", status=429),
        ]
    )
    (row,) = sink.query_totals(group_by=["key"])
    assert (row["requests"], row["cost_usd"], row["unpriced_requests"], row["errors"]) == (4, 0.5, 2, 2)


def test_limit(loaded: SqliteLedger) -> None:
    assert loaded.query_totals(group_by=["user"], limit=2) == expected_totals(dataset(), ["user"])[:2]


@pytest.mark.parametrize(
    ("group_by", "filters", "message"),
    [
        (["model", "colour"], None, "cannot group by `colour`"),
        (['key" FROM requests; DROP TABLE requests; --'], None, "cannot group by"),
        ([], {"prompt_tokens": "1"}, "cannot filter on `prompt_tokens`"),
        ([], {"day": "2025-01-31"}, "cannot filter on `day`"),
        ([], {"status": "teapot"}, "expected a status such as `429`"),
    ],
)
def test_bad_query_names_are_refused(
    loaded: SqliteLedger, group_by: list[str], filters: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(LedgerQueryError, match=message) as info:
        loaded.query_totals(group_by=group_by, filters=filters)
    assert isinstance(info.value, TollwayError) and isinstance(info.value, ValueError)
    assert loaded.count() == 120


# ---------------------------------------------------------------------------------------------
# The facade and its configuration


def test_config_defaults_and_decoding() -> None:
    config = msgspec.convert({}, LedgerConfig)
    assert config == LedgerConfig(
        path="tollway-ledger.sqlite3",
        enabled=True,
        queue_size=10000,
        batch_size=500,
        flush_interval_ms=200,
        retention_days=30,
    )
    assert config.problems() == []
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"pathh": "x"}, LedgerConfig)
    bad = LedgerConfig(queue_size=0, retention_days=-1)
    assert [field for field, _ in bad.problems()] == ["queue_size", "retention_days"]


def test_a_disabled_ledger_stores_nothing(tmp_path: Path) -> None:
    ledger = Ledger(LedgerConfig(path=str(tmp_path / "never.sqlite3"), enabled=False))
    assert not ledger.enabled
    assert ledger.submit(full_record())  # not a drop
    assert ledger.flush(1) and ledger.close()
    assert ledger.stats().dropped == 0
    with pytest.raises(LedgerError, match="disabled"):
        ledger.query_totals()
    assert not (tmp_path / "never.sqlite3").exists()


def test_facade_queries_and_stats(db: Path) -> None:
    ledger = Ledger(LedgerConfig(path=str(db), batch_size=16, retention_days=0))
    for rec in dataset():
        ledger.submit(rec)
    assert ledger.flush(10)
    assert ledger.stats().written == 120
    assert ledger.query_totals(group_by=["provider"]) == expected_totals(dataset(), ["provider"])
    assert ledger.get("req_000007") == dataset()[7]
    assert len(ledger.records(limit=5)) == 5
    assert ledger.close()


# ---------------------------------------------------------------------------------------------
# --since / --until and the table


NOW = datetime(2025, 2, 1, 12, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - 90),
        ("30m", NOW - 1800),
        ("24h", NOW - 86400),
        ("7d", NOW - 7 * 86400),
        ("2w", NOW - 14 * 86400),
        ("1.5h", NOW - 5400),
        (" 7d ", NOW - 7 * 86400),
        ("2025-01-31", datetime(2025, 1, 31, tzinfo=UTC).timestamp()),
        ("2025-01-31T13:00", datetime(2025, 1, 31, 13, tzinfo=UTC).timestamp()),
        ("2025-01-31T13:00:00Z", datetime(2025, 1, 31, 13, tzinfo=UTC).timestamp()),
        ("2025-01-31T13:00:00+02:00", datetime(2025, 1, 31, 11, tzinfo=UTC).timestamp()),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "7", "d7", "-7d", "7y", "2025-13-01"])
def test_parse_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(LedgerQueryError, match="expected a duration such as `24h`"):
        parse_since(text, now=NOW)


def test_parse_since_defaults_to_the_current_time() -> None:
    before = time.time()
    got = parse_since("1h")
    assert before - 3600 <= got <= time.time() - 3600


def _row(**fields: Any) -> dict[str, Any]:
    base = dict.fromkeys(TOTAL_COLUMNS, 0)
    base["cost_usd"] = 0.0
    base.update(fields)
    return base


def test_format_table() -> None:
    rows = [
        _row(
            team="research",
            model="gpt-4o",
            requests=1204,
            prompt_tokens=1234567,
            completion_tokens=89012,
            total_tokens=1323579,
            cost_usd=12.3456789,
            errors=3,
        ),
        _row(
            team=None,
            model="local-llama",
            requests=7,
            prompt_tokens=700,
            completion_tokens=70,
            total_tokens=770,
            cost_usd=0.0012,
            unpriced_requests=3,
        ),
    ]
    assert format_table(rows, ["team", "model"]) == (
        "team      model        requests     prompt  completion  total tokens                    cost  errors\n"
        "--------  -----------  --------  ---------  ----------  ------------  ----------------------  ------\n"
        "research  gpt-4o          1,204  1,234,567      89,012     1,323,579                $12.3457       3\n"
        "-         local-llama         7        700          70           770  $0.001200 + 3 unpriced       0\n"
        "--------  -----------  --------  ---------  ----------  ------------  ----------------------  ------\n"
        "total                     1,211  1,235,267      89,082     1,324,349   $12.3469 + 3 unpriced       3\n"
    )


def test_format_table_shows_cache_and_reasoning_columns_only_when_used() -> None:
    plain = format_table([_row(key="a", requests=1)], ["key"])
    assert "cached" not in plain and "reasoning" not in plain and "total\n" not in plain
    used = format_table([_row(key="a", requests=1, cached_tokens=5000, reasoning_tokens=2)], ["key"])
    header = used.splitlines()[0].split()
    assert header == [
        "key",
        "requests",
        "prompt",
        "completion",
        "cached",
        "reasoning",
        "total",
        "tokens",
        "cost",
        "errors",
    ]
    assert "5,000" in used


def test_format_table_of_real_totals(loaded: SqliteLedger) -> None:
    rows = loaded.query_totals(group_by=["provider"])
    lines = format_table(rows, ["provider"]).splitlines()
    assert len(lines) == 2 + len(rows) + 2
    assert len({len(line) for line in lines[:2]}) == 1  # the rule is as wide as the header
    assert "unpriced" in lines[-1]
    assert format_table([], ["provider"]) == "no requests in this range\n"
    with pytest.raises(LedgerQueryError):
        format_table(rows, ["colour"])
