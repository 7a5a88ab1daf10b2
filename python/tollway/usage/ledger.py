"""The usage ledger: where `UsageRecord`s go, and how they are queried.

Shape
-----
- `LedgerSink` is the storage interface (write a batch, query totals, fetch one record, replay a
  time range, prune). `SqliteLedger` is the embedded default; a shared sink (Postgres for a fleet
  of replicas) implements the same protocol later.
- `LedgerWriter` keeps disk off the request path: `submit()` appends to a bounded in-memory queue
  and returns at once (False, counted and logged, when the queue is full); one background thread
  drains the queue in batches, one transaction per batch, retries a failing batch a bounded number
  of times, and prunes rows past the retention period at most once an hour.
- `Ledger` is the facade the gateway builds from `[ledger]` (`LedgerConfig`).

Build the `Ledger` in each worker process, after any fork: a background thread and an SQLite
connection do not survive `fork()`.

SQLite file
-----------
WAL journal, `synchronous=NORMAL` (a power loss may lose the last commits, never corrupt the
file), a busy timeout so that several worker processes can write the same file, and a retry on
`SQLITE_BUSY` on top of it. One table, `requests`: one row per request, the columns that are
grouped and filtered on, and the rest of the record as JSON in `record` (`_Rest`: attempts,
decisions, tags, parameters and the like, so `json_extract(record, '$.attempts')` works from the
`sqlite3` shell); `get()` rebuilds the exact `UsageRecord` from the two. The
schema version is `PRAGMA user_version`; `_MIGRATIONS[i]` upgrades a file from version `i` to
`i + 1`, inside the transaction that checks the version.

Queries
-------
`query_totals(since, until, group_by, filters)` sums requests, tokens, cost, unpriced requests and
errors per group. `group_by` names: `key`, `team`, `user`, `model` (the model the client asked
for), `provider`, `upstream_model`, `endpoint`, `status` (the HTTP status), `day` and `hour` (UTC,
`2025-01-31` and `2025-01-31T13:00:00Z`). `filters` maps the same names (except `day` and `hour`)
plus `cost_source` and `error_code` to one value or a list of values (any of them matches);
`status` also takes a class such as `4xx`. An error is a request whose status is 400 or more or
that carries an error code (a stream that broke after its 200). Time ranges are half-open:
`since <= received_at < until`.

Time syntax (`parse_since`, for `--since` and `--until`)
---------------------------------------------------------
- a duration back from now: a number and a unit, `90s`, `30m`, `24h`, `7d`, `2w` (decimals
  allowed: `1.5h`);
- an ISO 8601 date or timestamp: `2025-01-31`, `2025-01-31T13:00`, `2025-01-31T13:00:00Z`,
  `2025-01-31T13:00:00+02:00` (without an offset, UTC).
"""

from __future__ import annotations

import logging
import math
import operator
import re
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import msgspec

from tollway.errors import TollwayError
from tollway.usage.record import UsageRecord

log = logging.getLogger("tollway.ledger")
_T = TypeVar("_T")

__all__ = [
    "GROUP_BY_NAMES",
    "TOTAL_COLUMNS",
    "BatchSink",
    "Ledger",
    "LedgerConfig",
    "LedgerError",
    "LedgerQueryError",
    "LedgerSink",
    "LedgerStats",
    "LedgerWriter",
    "SqliteLedger",
    "format_table",
    "parse_since",
]


class LedgerError(TollwayError, RuntimeError):
    """The ledger cannot be used: a file written by a newer tollway, a missing file opened
    read-only, or a query on a disabled ledger."""


class LedgerQueryError(TollwayError, ValueError):
    """A usage query that cannot be run: an unknown group or filter name, a bad time."""


class LedgerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`[ledger]`: where usage records are stored and how they are written."""

    path: str = "tollway-ledger.sqlite3"
    enabled: bool = True
    # Records waiting to be written; when full, new records are dropped (counted, logged).
    queue_size: int = 10000
    batch_size: int = 500
    flush_interval_ms: int = 200
    # Rows older than this are deleted; 0 keeps them forever.
    retention_days: int = 30

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every value out of range, for the config loader to report."""
        out: list[tuple[str, str]] = []
        for name in ("queue_size", "batch_size", "flush_interval_ms"):
            value = getattr(self, name)
            if value < 1:
                out.append((name, f"expected a positive integer, got {value}"))
        if self.retention_days < 0:
            out.append(("retention_days", f"expected 0 (keep forever) or a number of days, got {self.retention_days}"))
        if self.enabled and not self.path:
            out.append(("path", "expected a file path"))
        return out


# ---------------------------------------------------------------------------------------------
# The sink interface


class BatchSink(Protocol):
    """What `LedgerWriter` needs from storage."""

    def write_batch(self, records: Sequence[UsageRecord]) -> None:
        """Store every record in one transaction (all or none). A record whose `request_id` is
        already stored replaces it, so that retrying a batch is harmless."""

    def prune(self, before: float) -> int:
        """Delete records received before `before` (epoch seconds); return how many."""
        ...


class LedgerSink(BatchSink, Protocol):
    """Storage for usage records: written by `LedgerWriter`, read by the CLI and the admin API.
    Methods may be called from several threads."""

    def query_totals(
        self,
        since: float | None = None,
        until: float | None = None,
        group_by: Sequence[str] = (),
        filters: Mapping[str, str | Sequence[str]] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Totals per group, largest cost first (see the module docstring)."""
        ...

    def get(self, request_id: str) -> UsageRecord | None: ...

    def records(
        self, since: float | None = None, until: float | None = None, limit: int | None = None
    ) -> list[UsageRecord]:
        """Records received in `[since, until)`, oldest first."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Query validation (shared by every sink: names come from these tables, values are parameters)

# group_by name -> SQL expression over the `requests` table.
_GROUP_SQL: dict[str, str] = {
    "key": '"key"',
    "team": '"team"',
    "user": '"user"',
    "model": '"requested_model"',
    "provider": '"provider"',
    "upstream_model": '"upstream_model"',
    "endpoint": '"endpoint"',
    "status": '"status"',
    "day": "strftime('%Y-%m-%d', \"received_at\", 'unixepoch')",
    "hour": "strftime('%Y-%m-%dT%H:00:00Z', \"received_at\", 'unixepoch')",
}
GROUP_BY_NAMES: tuple[str, ...] = tuple(_GROUP_SQL)

# filter name -> column.
_FILTER_COLUMNS: dict[str, str] = {
    "key": "key",
    "team": "team",
    "user": "user",
    "model": "requested_model",
    "provider": "provider",
    "upstream_model": "upstream_model",
    "endpoint": "endpoint",
    "status": "status",
    "error_code": "error_code",
    "cost_source": "cost_source",
}

# The totals each row of `query_totals` carries, in display order.
TOTAL_COLUMNS: tuple[str, ...] = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_usd",
    "unpriced_requests",
    "errors",
)
_TOTALS_SQL = """
    count(*) AS "requests",
    sum("prompt_tokens") AS "prompt_tokens",
    sum("completion_tokens") AS "completion_tokens",
    sum("cached_tokens") AS "cached_tokens",
    sum("cache_write_tokens") AS "cache_write_tokens",
    sum("reasoning_tokens") AS "reasoning_tokens",
    sum("prompt_tokens" + "completion_tokens") AS "total_tokens",
    total("cost_usd") AS "cost_usd",
    sum("cost_source" = 'unpriced') AS "unpriced_requests",
    sum("status" >= 400 OR "error_code" IS NOT NULL) AS "errors"
"""

_STATUS_CLASS = re.compile(r"[1-5]xx")


def _check_group_by(group_by: Sequence[str]) -> list[str]:
    if isinstance(group_by, str):
        group_by = [group_by]
    out: list[str] = []
    for name in group_by:
        if name not in _GROUP_SQL:
            raise LedgerQueryError(f"cannot group by `{name}`; expected any of {_names(_GROUP_SQL)}")
        if name not in out:
            out.append(name)
    return out


def _filter_conditions(filters: Mapping[str, str | Sequence[str]] | None) -> tuple[list[str], list[Any]]:
    """WHERE conditions and their parameters; column names only from `_FILTER_COLUMNS`."""
    conditions: list[str] = []
    params: list[Any] = []
    for name, wanted in (filters or {}).items():
        column = _FILTER_COLUMNS.get(name)
        if column is None:
            raise LedgerQueryError(f"cannot filter on `{name}`; expected any of {_names(_FILTER_COLUMNS)}")
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        if not values:
            conditions.append("0")  # an empty list matches nothing
            continue
        if name == "status":
            alternatives = []
            for value in values:
                if _STATUS_CLASS.fullmatch(value):
                    alternatives.append('"status" BETWEEN ? AND ?')
                    params += [int(value[0]) * 100, int(value[0]) * 100 + 99]
                elif value.isdigit():
                    alternatives.append('"status" = ?')
                    params.append(int(value))
                else:
                    raise LedgerQueryError(
                        f"filter `status`: expected a status such as `429` or a class such as `4xx`, got `{value}`"
                    )
            conditions.append("(" + " OR ".join(alternatives) + ")")
            continue
        for value in values:
            if not isinstance(value, str):
                raise LedgerQueryError(f"filter `{name}`: expected a string, got {value!r}")
        conditions.append(f'"{column}" IN ({", ".join("?" * len(values))})')
        params += values
    return conditions, params


def _time_conditions(since: float | None, until: float | None) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    params: list[Any] = []
    if since is not None:
        conditions.append('"received_at" >= ?')
        params.append(float(since))
    if until is not None:
        conditions.append('"received_at" < ?')
        params.append(float(until))
    return conditions, params


def _names(table: Mapping[str, Any]) -> str:
    return ", ".join(f"`{name}`" for name in table)


# ---------------------------------------------------------------------------------------------
# SQLite


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE "requests" (
            "request_id" TEXT PRIMARY KEY,
            "received_at" REAL NOT NULL,
            "finished_at" REAL NOT NULL,
            "endpoint" TEXT NOT NULL,
            "key" TEXT,
            "team" TEXT,
            "user" TEXT,
            "requested_model" TEXT,
            "provider" TEXT,
            "upstream_model" TEXT,
            "status" INTEGER NOT NULL,
            "error_code" TEXT,
            "prompt_tokens" INTEGER NOT NULL,
            "completion_tokens" INTEGER NOT NULL,
            "cached_tokens" INTEGER NOT NULL,
            "cache_write_tokens" INTEGER NOT NULL,
            "reasoning_tokens" INTEGER NOT NULL,
            "cost_usd" REAL NOT NULL,
            "cost_source" TEXT NOT NULL,
            "prompt_source" TEXT NOT NULL,
            "completion_source" TEXT NOT NULL,
            "latency_ms" REAL NOT NULL,
            "ttft_ms" REAL,
            "stream" INTEGER NOT NULL,
            "client_disconnected" INTEGER NOT NULL,
            "record" TEXT NOT NULL
        )
        """
    )
    # Time ranges (every query has one), and "this key over the last day". Each index costs
    # about 1.5 us of the writer's CPU per record, paid in the gateway's process; grouping by
    # team, user, model or provider scans the time range instead, which is fast at the sizes
    # a retention window holds (measured: 7.4 us per record with these two, 11.6 with six).
    conn.execute('CREATE INDEX "requests_received_at" ON "requests" ("received_at")')
    conn.execute('CREATE INDEX "requests_key" ON "requests" ("key", "received_at")')


# `_MIGRATIONS[i]` takes a file from schema version `i` to `i + 1`; append, never edit.
_MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_create_v1,)
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = (
    "request_id", "received_at", "finished_at", "endpoint", "key", "team", "user",
    "requested_model", "provider", "upstream_model", "status", "error_code",
    "prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens",
    "cost_usd", "cost_source", "prompt_source", "completion_source",
    "latency_ms", "ttft_ms", "stream", "client_disconnected", "record",
)  # fmt: skip
# No row binds None: Python's sqlite3 binds str, int and float directly but sends any other
# value, None included, through its adapter lookup (a key tuple, a dict lookup, a call, with the
# GIL held; about 1.4k instructions per NULL, an eighth of the writer's cost per record with the
# four NULLs of a typical row). A missing value binds as NaN instead, which SQLite stores as
# NULL whatever the column's type (`sqlite3_bind_double` of a NaN binds NULL).
_NULL = math.nan
_ROW_PLACEHOLDERS = "(" + ", ".join("?" * len(_COLUMNS)) + ")"


def _insert_sql(rows: int) -> str:
    """One INSERT of `rows` rows: a whole slice of a batch in one statement."""
    columns = ", ".join(f'"{c}"' for c in _COLUMNS)
    return f'INSERT OR REPLACE INTO "requests" ({columns}) VALUES ' + ", ".join([_ROW_PLACEHOLDERS] * rows)


# Rows per INSERT, largest first: a batch is written as a few multi-row statements (at most
# three of each size), so only a handful of distinct statements are ever prepared and cached.
# Why not `executemany`: it releases and re-takes the GIL around every row's step, a thread
# switch with the event loop per row; a multi-row statement takes the GIL once per statement.
# Measured in process (2026-12-05): 29 instead of 36 us of writer CPU per record, and under a
# saturating load (a busy event loop, 13-17k records/s) 9.5k records written in 2 s instead
# of 6.5k. At a real worker's rates both keep up.
_STATEMENT_ROWS = (256, 64, 16, 4, 1)
_INSERTS = {n: _insert_sql(n) for n in _STATEMENT_ROWS}


def _rest_struct() -> type[msgspec.Struct]:
    """The `record` column: the fields of a `UsageRecord` that have no column of their own, with
    `UsageRecord`'s types and defaults (derived, so the two cannot drift), defaults left out of
    the JSON. The columns are not repeated in it: every byte of a row costs the writer
    (measured in process, 2026-12-06: 7.2 us of SQLite work per record with the whole record's
    830 bytes of JSON in it, 5.1 with these 160). Rows written before held the whole record;
    decoding ignores the fields it does not know, and the columns are read either way."""
    fields = []
    for f in msgspec.structs.fields(UsageRecord):
        if f.name in _COLUMNS:
            continue
        if f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, f.type, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, f.type, f.default))
    return msgspec.defstruct("_Rest", fields, omit_defaults=True)


_Rest = _rest_struct()
_REST_FIELDS = _Rest.__struct_fields__
_rest_of = operator.attrgetter(*_REST_FIELDS)
_encode = msgspec.json.Encoder().encode
_rest_decoder = msgspec.json.Decoder(_Rest)
_BOOL_COLUMNS = ("stream", "client_disconnected")
_SELECT_RECORD = "SELECT " + ", ".join(f'"{c}"' for c in _COLUMNS) + ' FROM "requests"'


def _record(row: Sequence[Any]) -> UsageRecord:
    """A `UsageRecord` from a row of `_SELECT_RECORD`."""
    fields = dict(zip(_COLUMNS[:-1], row[:-1], strict=True))
    for name in _BOOL_COLUMNS:
        fields[name] = bool(fields[name])
    rest = _rest_decoder.decode(row[-1])
    for name in _REST_FIELDS:
        fields[name] = getattr(rest, name)
    return UsageRecord(**fields)


_ROWS_PER_SLICE = 64
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def _row(r: UsageRecord) -> tuple[Any, ...]:
    """A record's values in `_COLUMNS` order, bound as `_ROW_PLACEHOLDERS` expects (no None)."""
    no = _NULL
    return (
        r.request_id,
        r.received_at,
        r.finished_at,
        r.endpoint,
        no if (key := r.key) is None else key,
        no if (team := r.team) is None else team,
        no if (user := r.user) is None else user,
        no if (model := r.requested_model) is None else model,
        no if (provider := r.provider) is None else provider,
        no if (upstream := r.upstream_model) is None else upstream,
        r.status,
        no if (code := r.error_code) is None else code,
        r.prompt_tokens,
        r.completion_tokens,
        r.cached_tokens,
        r.cache_write_tokens,
        r.reasoning_tokens,
        r.cost_usd,
        r.cost_source,
        r.prompt_source,
        r.completion_source,
        r.latency_ms,
        no if (ttft := r.ttft_ms) is None else ttft,
        int(r.stream),
        int(r.client_disconnected),
        _encode(_Rest(*_rest_of(r))).decode(),
    )


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class SqliteLedger:
    """A `LedgerSink` in one SQLite file (see the module docstring).

    Writes and reads use separate connections, each behind its own lock, so a query (from the
    admin API, run in a thread) never waits for the writer thread's transaction. Several
    processes may open the same file; their writes are serialized by SQLite's write lock,
    waited for up to `busy_timeout_s`, then retried `busy_retries` times.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        busy_timeout_s: float = 5.0,
        busy_retries: int = 3,
    ) -> None:
        self.path = str(path)
        self.readonly = readonly
        self._busy_retries = busy_retries
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._write: sqlite3.Connection | None = None
        if readonly:
            if not Path(self.path).exists():
                raise LedgerError(f"no ledger at `{self.path}`")
            uri = f"file:{quote(str(Path(self.path).resolve()))}?mode=ro"
            self._read = self._connect(uri, busy_timeout_s, uri=True)
            version = self._read.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                self._read.close()
                raise LedgerError(
                    f"ledger `{self.path}` has schema version {version}, this tollway reads version"
                    f" {SCHEMA_VERSION}; open it once read-write (start the gateway) to migrate it"
                )
            return
        try:
            self._write = self._connect(self.path, busy_timeout_s)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the ledger `{self.path}`: {exc}") from exc
        try:
            self._write.execute("PRAGMA journal_mode=WAL")
            self._write.execute("PRAGMA synchronous=NORMAL")
            self._retry_busy(self._migrate)
        except BaseException:
            self._write.close()
            raise
        self._read = self._connect(self.path, busy_timeout_s)

    @staticmethod
    def _connect(target: str, busy_timeout_s: float, *, uri: bool = False) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes use explicit BEGIN IMMEDIATE,
        # which takes the write lock up front so the busy timeout applies (a deferred
        # transaction upgraded to a write in WAL mode fails at once with SQLITE_BUSY).
        conn = sqlite3.connect(target, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False, uri=uri)
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        return conn

    def _migrate(self) -> None:
        with self._transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger `{self.path}` has schema version {version}, newer than this tollway's"
                    f" {SCHEMA_VERSION}; use a newer tollway or another file"
                )
            for step in range(version, SCHEMA_VERSION):
                _MIGRATIONS[step](conn)
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                log.info("ledger `%s`: schema version %d -> %d", self.path, version, SCHEMA_VERSION)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._write
        if conn is None:
            raise LedgerError(f"ledger `{self.path}` is open read-only")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _retry_busy(self, write: Callable[[], _T]) -> _T:
        """Run `write` (one whole transaction); retry it when the file stayed locked longer than
        the busy timeout (another process holding a long transaction)."""
        with self._write_lock:
            for attempt in range(self._busy_retries + 1):
                try:
                    return write()
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or attempt == self._busy_retries:
                        raise
                    log.warning("ledger `%s` is locked; retrying (%d/%d)", self.path, attempt + 1, self._busy_retries)
                    time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def write_batch(self, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        values: list[Any] = []
        for start in range(0, len(records), _ROWS_PER_SLICE):
            for r in records[start : start + _ROWS_PER_SLICE]:
                values.extend(_row(r))
            # Building rows is Python work that holds the GIL; the request path runs in another
            # thread of this process. Yield between slices so a batch never holds it for long
            # (otherwise the event loop waits up to the 5 ms switch interval: a latency spike).
            time.sleep(0)
        width = len(_COLUMNS)

        def insert() -> None:
            with self._transaction() as conn:
                at, left = 0, len(records)
                for rows in _STATEMENT_ROWS:
                    while left >= rows:
                        conn.execute(_INSERTS[rows], values[at * width : (at + rows) * width])
                        at += rows
                        left -= rows

        self._retry_busy(insert)

    def query_totals(
        self,
        since: float | None = None,
        until: float | None = None,
        group_by: Sequence[str] = (),
        filters: Mapping[str, str | Sequence[str]] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        groups = _check_group_by(group_by)
        where, params = _time_conditions(since, until)
        filter_where, filter_params = _filter_conditions(filters)
        where += filter_where
        params += filter_params
        select = [f'{_GROUP_SQL[name]} AS "{name}"' for name in groups]
        sql = f'SELECT {", ".join([*select, _TOTALS_SQL])} FROM "requests"'
        if where:
            sql += " WHERE " + " AND ".join(where)
        if groups:
            sql += " GROUP BY " + ", ".join(_GROUP_SQL[name] for name in groups)
        order = ['"cost_usd" DESC', '"requests" DESC'] + [f'"{name}"' for name in groups]
        sql += " ORDER BY " + ", ".join(order)
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read_lock:
            cursor = self._read.execute(sql, params)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        # Without groups, SQLite returns one row of zeros and NULLs for no records: no totals then.
        return [row for row in rows if row["requests"]]

    def get(self, request_id: str) -> UsageRecord | None:
        with self._read_lock:
            row = self._read.execute(_SELECT_RECORD + ' WHERE "request_id" = ?', (request_id,)).fetchone()
        return None if row is None else _record(row)

    def records(
        self, since: float | None = None, until: float | None = None, limit: int | None = None
    ) -> list[UsageRecord]:
        where, params = _time_conditions(since, until)
        sql = _SELECT_RECORD
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += ' ORDER BY "received_at", "request_id"'
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read_lock:
            rows = self._read.execute(sql, params).fetchall()
        return [_record(row) for row in rows]

    def prune(self, before: float, *, chunk: int = 5000) -> int:
        """Delete in chunks of `chunk` rows, one transaction each, so that other writers (this
        process's next batch, other workers) wait for one chunk at most, not the whole prune."""
        deleted = 0
        while True:

            def delete_chunk() -> int:
                with self._transaction() as conn:
                    cursor = conn.execute(
                        'DELETE FROM "requests" WHERE rowid IN'
                        ' (SELECT rowid FROM "requests" WHERE "received_at" < ? LIMIT ?)',
                        (float(before), chunk),
                    )
                    return int(cursor.rowcount)

            n = self._retry_busy(delete_chunk)
            deleted += n
            if n < chunk:
                return deleted

    def count(self) -> int:
        """How many records the file holds."""
        with self._read_lock:
            return int(self._read.execute('SELECT count(*) FROM "requests"').fetchone()[0])

    def close(self) -> None:
        with self._write_lock:
            if self._write is not None:
                self._write.close()
                self._write = None
        with self._read_lock:
            self._read.close()


# ---------------------------------------------------------------------------------------------
# The background writer


@dataclass(frozen=True, slots=True)
class LedgerStats:
    """The writer's counters, read at scrape time by the metrics."""

    queue_depth: int
    written: int
    # Records lost: the queue was full, the batch kept failing, or the writer was closed.
    dropped_queue_full: int
    dropped_write_failed: int
    dropped_closed: int
    write_errors: int  # failed write attempts (a batch retried three times counts three)
    pruned: int

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_write_failed + self.dropped_closed


class _FlushMarker:
    """Queued by `flush()`: the writer sets `done` once everything queued before it is handled."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class _Throttle:
    """At most one log line per `interval_s`, with the number of events since the last line."""

    __slots__ = ("_interval", "_last", "suppressed")

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._last = -float("inf")
        self.suppressed = 0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self._interval:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self.suppressed = self.suppressed, 0
        return n


class LedgerWriter:
    """Owns the bounded queue and the thread that drains it into `sink`.

    `submit()` is the only method the request path calls: a length check and a `deque.append`
    (atomic under the GIL), no lock and no I/O, so it never blocks. The thread wakes every
    `flush_interval_s`, or as soon as `batch_size` records are waiting, and writes everything
    queued in batches of at most `batch_size`, one transaction each.

    A batch the sink refuses (disk full, file locked) is retried `max_attempts` times in all, with
    a backoff from `retry_backoff_s` doubling up to 5 s, then dropped and counted; the thread
    carries on with the next batch. Counters are written by one thread each and read without
    locks (a read may be one update behind).
    """

    def __init__(
        self,
        sink: BatchSink,
        *,
        queue_size: int = 10000,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        retention_days: float = 30,
        prune_interval_s: float = 3600.0,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.2,
        log_interval_s: float = 10.0,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval_s <= 0 or max_attempts < 1 or retention_days < 0:
            raise ValueError(
                "LedgerWriter: queue_size, batch_size, flush_interval_s and max_attempts must be positive,"
                " retention_days 0 or more"
            )
        self.sink = sink
        self._queue: deque[UsageRecord | _FlushMarker] = deque()
        self._max = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._retention_s = retention_days * 86400.0
        self._prune_interval = prune_interval_s
        self._last_prune = -float("inf")
        self._max_attempts = max_attempts
        self._backoff = retry_backoff_s
        self._wake = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self._drop_lock = threading.Lock()
        self._drop_log = _Throttle(log_interval_s)
        self._error_log = _Throttle(log_interval_s)
        self.written = 0
        self.dropped_queue_full = 0
        self.dropped_write_failed = 0
        self.dropped_closed = 0
        self.write_errors = 0
        self.pruned = 0
        self._thread = threading.Thread(target=self._run, name="tollway-ledger-writer", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------

    def submit(self, record: UsageRecord) -> bool:
        """Queue `record` for writing; False if it was dropped (queue full or writer closed)."""
        queue = self._queue
        depth = len(queue)
        if depth < self._max and not self._closed:
            queue.append(record)
            if depth + 1 == self._batch_size:
                self._wake.set()
            return True
        self._drop(record)
        return False

    def _drop(self, record: UsageRecord) -> None:
        with self._drop_lock:
            if self._closed:
                self.dropped_closed += 1
            else:
                self.dropped_queue_full += 1
            if not self._drop_log.ready():
                return
            suppressed = self._drop_log.take_suppressed()
        reason = "the writer is closed" if self._closed else f"the queue is full ({self._max} records)"
        log.warning(
            "ledger: dropped the usage record of `%s`: %s%s",
            record.request_id,
            reason,
            f" ({suppressed} more dropped since the last warning)" if suppressed else "",
        )

    # -- control --------------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def dropped(self) -> int:
        return self.dropped_queue_full + self.dropped_write_failed + self.dropped_closed

    def stats(self) -> LedgerStats:
        return LedgerStats(
            queue_depth=len(self._queue),
            written=self.written,
            dropped_queue_full=self.dropped_queue_full,
            dropped_write_failed=self.dropped_write_failed,
            dropped_closed=self.dropped_closed,
            write_errors=self.write_errors,
            pruned=self.pruned,
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before this call is written (or dropped after its
        retries); False if that did not happen within `timeout` seconds."""
        if not self._thread.is_alive():
            return not self._queue
        marker = _FlushMarker()
        self._queue.append(marker)  # past the size check: a flush is never dropped
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking records, write what is queued, stop the thread. False if the thread was
        still busy after `timeout` seconds (it then stops on its own once it is done)."""
        with self._close_lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("ledger: writer still busy after %ss; %d records still queued", timeout, len(self._queue))
            return False
        # A submit that checked `_closed` just before it was set may have appended after the
        # thread's last drain: write it here, the thread is gone.
        self._drain()
        return True

    # -- the thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._maybe_prune()
                self._drain()
            except Exception:  # a bug, not a sink failure (those are handled in _write)
                log.exception("ledger: writer error; carrying on")
            if self._closed and not self._queue:
                return

    def _drain(self) -> None:
        queue = self._queue
        batch: list[UsageRecord] = []
        while queue:
            item = queue.popleft()
            if isinstance(item, _FlushMarker):
                if batch:
                    self._write(batch)
                    batch = []
                item.done.set()
                continue
            batch.append(item)
            if len(batch) >= self._batch_size:
                self._write(batch)
                batch = []
        if batch:
            self._write(batch)

    def _write(self, batch: list[UsageRecord]) -> None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                self.sink.write_batch(batch)
            except Exception as exc:
                self.write_errors += 1
                if self._error_log.ready():
                    log.warning(
                        "ledger: writing %d records failed (attempt %d of %d): %s: %s%s",
                        len(batch),
                        attempt,
                        self._max_attempts,
                        type(exc).__name__,
                        exc,
                        _more(self._error_log.take_suppressed()),
                    )
                # No backoff once closing: shutdown stays quick, the batch is dropped counted.
                if attempt < self._max_attempts and self._backoff > 0 and not self._closed:
                    time.sleep(min(self._backoff * 2 ** (attempt - 1), 5.0))
                continue
            self.written += len(batch)
            return
        self.dropped_write_failed += len(batch)
        log.error("ledger: dropped %d usage records after %d failed attempts", len(batch), self._max_attempts)

    def _maybe_prune(self) -> None:
        if self._retention_s <= 0:
            return
        now = time.monotonic()
        if now - self._last_prune < self._prune_interval:
            return
        self._last_prune = now
        try:
            n = self.sink.prune(time.time() - self._retention_s)
        except Exception as exc:
            log.warning("ledger: pruning old records failed: %s: %s", type(exc).__name__, exc)
            return
        self.pruned += n
        if n:
            log.info("ledger: pruned %d records older than %g days", n, self._retention_s / 86400)


def _more(suppressed: int) -> str:
    return f" ({suppressed} similar failures since the last warning)" if suppressed else ""


# ---------------------------------------------------------------------------------------------
# The facade


class Ledger:
    """What the gateway holds: the configured sink and its writer (none when disabled)."""

    def __init__(self, config: LedgerConfig, *, sink: LedgerSink | None = None) -> None:
        self.config = config
        self._sink: LedgerSink | None = None
        self._writer: LedgerWriter | None = None
        if not config.enabled:
            return
        self._sink = sink if sink is not None else SqliteLedger(config.path)
        self._writer = LedgerWriter(
            self._sink,
            queue_size=config.queue_size,
            batch_size=config.batch_size,
            flush_interval_s=config.flush_interval_ms / 1000.0,
            retention_days=config.retention_days,
        )

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def submit(self, record: UsageRecord) -> bool:
        """Queue a record (never blocks). False if it was dropped; True when queued, or when the
        ledger is disabled (nothing is stored, and nothing was dropped)."""
        writer = self._writer
        return True if writer is None else writer.submit(record)

    def stats(self) -> LedgerStats:
        if self._writer is None:
            return LedgerStats(0, 0, 0, 0, 0, 0, 0)
        return self._writer.stats()

    def flush(self, timeout: float | None = None) -> bool:
        return True if self._writer is None else self._writer.flush(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush and stop the writer, then close the sink. False if the writer did not finish in
        `timeout` seconds (the sink is then left open for it)."""
        if self._writer is None or self._sink is None:
            return True
        done = self._writer.close(timeout)
        if done:
            self._sink.close()
        return done

    @property
    def sink(self) -> LedgerSink:
        if self._sink is None:
            raise LedgerError("the ledger is disabled (`[ledger] enabled = false`)")
        return self._sink

    def query_totals(
        self,
        since: float | None = None,
        until: float | None = None,
        group_by: Sequence[str] = (),
        filters: Mapping[str, str | Sequence[str]] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        return self.sink.query_totals(since, until, group_by, filters, limit)

    def get(self, request_id: str) -> UsageRecord | None:
        return self.sink.get(request_id)

    def records(
        self, since: float | None = None, until: float | None = None, limit: int | None = None
    ) -> list[UsageRecord]:
        return self.sink.records(since, until, limit)


# ---------------------------------------------------------------------------------------------
# --since / --until, and the CLI table

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds for a `--since`/`--until` value: a duration back from `now` (`24h`, `7d`,
    `30m`, `90s`) or an ISO 8601 date/timestamp (UTC unless it has an offset)."""
    value = text.strip()
    match = _DURATION.fullmatch(value)
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise LedgerQueryError(
            f"cannot read `{text}` as a time; expected a duration such as `24h`, `7d`, `30m`, `90s`"
            " or an ISO 8601 timestamp such as `2025-01-31T13:00:00Z`"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


_COLUMN_TITLES = {
    "requests": "requests",
    "prompt_tokens": "prompt",
    "completion_tokens": "completion",
    "cached_tokens": "cached",
    "cache_write_tokens": "cache write",
    "reasoning_tokens": "reasoning",
    "total_tokens": "total tokens",
    "cost_usd": "cost",
    "errors": "errors",
}
# Shown only when some row has a non-zero value (most deployments never see them).
_OPTIONAL_COLUMNS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens")


def _format_cost(cost: float, unpriced: int) -> str:
    text = f"${cost:,.6f}" if 0 < cost < 0.01 else f"${cost:,.4f}"
    return f"{text} + {unpriced} unpriced" if unpriced else text


def format_table(rows: Sequence[Mapping[str, Any]], group_by: Sequence[str]) -> str:
    """An aligned text table of `query_totals` rows: group columns left-aligned (`-` for none),
    numbers right-aligned with thousands separators, cost in dollars followed by `+ N unpriced`
    when some requests of the group had no price, and a total line when there are several rows."""
    groups = _check_group_by(group_by)
    if not rows:
        return "no requests in this range\n"
    columns = [name for name in _COLUMN_TITLES if name not in _OPTIONAL_COLUMNS or any(row.get(name) for row in rows)]
    lines: list[list[str]] = []
    for row in rows:
        cells = ["-" if row.get(name) is None else str(row[name]) for name in groups]
        cells += [_cell(name, row) for name in columns]
        lines.append(cells)
    if groups and len(rows) > 1:
        total: dict[str, Any] = {name: sum(row.get(name) or 0 for row in rows) for name in TOTAL_COLUMNS}
        lines.append(["total"] + [""] * (len(groups) - 1) + [_cell(name, total) for name in columns])
    header = list(groups) + [_COLUMN_TITLES[name] for name in columns]
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    numeric = [False] * len(groups) + [True] * len(columns)

    def render(cells: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [render(header), render(["-" * w for w in widths])]
    out += [render(line) for line in lines[: len(rows)]]
    if len(lines) > len(rows):
        out.append(render(["-" * w for w in widths]))
        out.append(render(lines[-1]))
    return "\n".join(out) + "\n"


def _cell(name: str, row: Mapping[str, Any]) -> str:
    if name == "cost_usd":
        return _format_cost(float(row.get("cost_usd") or 0.0), int(row.get("unpriced_requests") or 0))
    return f"{int(row.get(name) or 0):,}"
