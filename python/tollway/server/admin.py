"""The admin API (admin key only): usage totals and per-request records.

- `GET /_tollway/usage?since=24h&until=...&by=key,model&key=alice&model=gpt-4o`: totals of
  requests, tokens by type and cost, grouped by any of `key, team, user, model, provider,
  upstream_model, endpoint, status, day, hour`, filtered by time range and any of those.
- `GET /_tollway/requests/{id}`: the full usage record, with `explanation`: the same text as
  `tollway explain`.

Queries read the SQLite ledger in a thread (never on the event loop), after flushing what this
worker has queued, so a request that just finished is found.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

import msgspec
import orjson

from tollway.explain import explain
from tollway.pipeline import Reject
from tollway.server.errors import ApiError, invalid_request
from tollway.usage.ledger import Ledger, LedgerQueryError, parse_since

REQUESTS_PREFIX = "/_tollway/requests/"
_RESERVED = {"since", "until", "by", "limit"}


def _ledger(ledger: Ledger | None) -> Ledger:
    if ledger is None or not ledger.enabled:
        raise Reject(
            ApiError(503, "server_error", "ledger_disabled", "the usage ledger is off (`[ledger] enabled = false`)")
        )
    return ledger


def usage_totals(ledger: Ledger | None, query_string: str) -> bytes:
    ledger = _ledger(ledger)
    query = parse_qs(query_string, keep_blank_values=False)
    now = time.time()
    try:
        since = parse_since(query["since"][-1], now) if "since" in query else now - 86400
        until = parse_since(query["until"][-1], now) if "until" in query else None
    except ValueError as exc:
        raise Reject(invalid_request(str(exc), "since")) from None
    group_by = [g for value in query.get("by", []) for g in value.split(",") if g]
    filters: dict[str, str | list[str]] = {}
    for name, values in query.items():
        if name not in _RESERVED:
            filters[name] = values if len(values) > 1 else values[0]
    limit = None
    if "limit" in query:
        try:
            limit = int(query["limit"][-1])
        except ValueError:
            raise Reject(invalid_request("`limit` must be an integer", "limit")) from None
    ledger.flush(timeout=5.0)
    try:
        rows = ledger.query_totals(since, until, group_by, filters, limit)
    except LedgerQueryError as exc:
        raise Reject(invalid_request(str(exc), "by")) from None
    return orjson.dumps({"since": since, "until": until, "group_by": group_by, "filters": filters, "rows": rows})


def request_record(ledger: Ledger | None, request_id: str) -> bytes:
    ledger = _ledger(ledger)
    ledger.flush(timeout=5.0)
    record = ledger.get(request_id)
    if record is None:
        raise Reject(
            ApiError(404, "invalid_request_error", "request_not_found", f"no record of request `{request_id}`")
        )
    out = msgspec.to_builtins(record)
    out["explanation"] = explain(record)
    return orjson.dumps(out)
