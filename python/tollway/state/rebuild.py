"""Budget windows recomputed from the usage ledger, after Redis lost its data.

When the Redis backend finds its marker key gone (a `FLUSHALL`, a restart without persistence,
a failover to an empty replica), a new *generation* begins at that instant. Limits that reset
quickly (request and token rates, concurrency) simply start again; budgets, which can span a
month of spending, are rebuilt: each gateway process reads its ledger for the records received
in each budget's current window **before** the generation began (what came after was counted
in Redis as it happened) and adds them to the window, once per ledger file and generation.

Which records count for a budget: those whose decision trail has a verdict of that policy's
budget that consumed it (`allow`, `truncate`, `audit`, `degraded_allow`, in either mode), for
the partition that verdict names, unless the request released its reservation (it made no model
call: `completion_source` is `none`). The amount is what settlement charged: the weighted tokens
(`Amounts.actual`), or the cost in micro-USD (an unpriced model per the budget's `unpriced`
rule). Records are placed in the calendar window, or rolling sub-bucket, of their `received_at`.

Approximate where the ledger is: records still in the ledger writer's queue (up to its flush
interval) and requests in flight at the loss are not in it; a budget whose counters were reset
by a configuration change is rebuilt from the policy's records all the same; records of another
gateway's ledger (another replica's file) are added only by that gateway, when it next calls
Redis.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from tollway.policy.engine import LimitRule, _estimated_cost
from tollway.policy.state import LimitSpec
from tollway.usage import Usage
from tollway.usage.ledger import LedgerSink
from tollway.usage.record import UsageRecord

# Budget verdicts whose request consumed the budget.
COUNTED_VERDICTS = frozenset({"allow", "truncate", "audit", "degraded_allow"})
_DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_PAGE = 5000


@dataclass(frozen=True, slots=True)
class Seed:
    """Usage to add to one budget's window (calendar) or sub-bucket (rolling) `index`."""

    spec: LimitSpec
    partition: str
    index: int
    amount: int


def rolling_geometry(spec: LimitSpec) -> tuple[int, int]:
    """A rolling budget's window in ms and its number of sub-buckets (as `MemoryLimit` builds it)."""
    window_ms = round(spec.period_s * 1000)
    return window_ms, 60 if window_ms % 60 == 0 else 1


def calendar_window(period: str, utc_offset_s: int, at_ms: int) -> tuple[int, int]:
    """The index and first ms of the calendar window holding `at_ms` (as `calendar.rs`)."""
    offset_ms = utc_offset_s * 1000
    day = (at_ms + offset_ms) // _DAY_MS
    if period == "day":
        index, first = day, day
    elif period == "week":
        index = (day + 3) // 7  # 1970-01-01 was a Thursday
        first = index * 7 - 3
    else:
        d = _EPOCH + timedelta(days=day)
        index = (d.year - 1970) * 12 + d.month - 1
        first = (date(d.year, d.month, 1) - _EPOCH).days
    return index, first * _DAY_MS - offset_ms


def window_index(spec: LimitSpec, at_ms: int) -> int:
    """The window (calendar) or sub-bucket (rolling) a charge made at `at_ms` goes to."""
    if spec.calendar is not None:
        return calendar_window(spec.calendar, spec.utc_offset_s, at_ms)[0]
    window_ms, buckets = rolling_geometry(spec)
    return at_ms // (window_ms // buckets)


def counting_since(spec: LimitSpec, now_ms: int) -> int:
    """The earliest ms whose charges still count for the budget at `now_ms`."""
    if spec.calendar is not None:
        return calendar_window(spec.calendar, spec.utc_offset_s, now_ms)[1]
    window_ms, buckets = rolling_geometry(spec)
    width = window_ms // buckets
    return (now_ms // width - buckets) * width


def charged(rule: LimitRule, record: UsageRecord) -> int:
    """What settling this record's request charged to the budget."""
    usage = Usage(
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        cached_tokens=record.cached_tokens,
        cache_write_tokens=record.cache_write_tokens,
        reasoning_tokens=record.reasoning_tokens,
    )
    if rule.spec.unit == "usd":
        if record.cost_source == "unpriced":
            return _estimated_cost(rule, usage)
        return math.ceil(round(record.cost_usd * 1_000_000, 3))
    assert rule.amounts is not None
    return rule.amounts.actual(usage)


def ledger_seeds(sink: LedgerSink, rules: Sequence[LimitRule], now_ms: int, until_ms: int) -> list[Seed]:
    """Usage per budget, partition and window from the records received before `until_ms` that
    still count at `now_ms` (see the module docstring). Reads the ledger: call it off the event
    loop."""
    by_policy: dict[str, list[tuple[LimitRule, int]]] = defaultdict(list)
    for rule in rules:
        if rule.spec.kind == "budget":
            by_policy[rule.spec.policy].append((rule, counting_since(rule.spec, now_ms)))
    if not by_policy:
        return []
    since = min(start for entries in by_policy.values() for _, start in entries)
    if since >= until_ms:
        return []
    totals: dict[tuple[LimitSpec, str, int], int] = defaultdict(int)
    for record in _records(sink, since / 1000, until_ms / 1000):
        if record.completion_source == "none":
            continue  # released: it made no model call
        at_ms = round(record.received_at * 1000)
        for verdict in record.decisions:
            if verdict.kind != "budget" or verdict.verdict not in COUNTED_VERDICTS or verdict.partition is None:
                continue
            for rule, start in by_policy.get(verdict.policy, ()):
                if at_ms < start:
                    continue
                amount = charged(rule, record)
                if amount > 0:
                    totals[(rule.spec, verdict.partition, window_index(rule.spec, at_ms))] += amount
    return [Seed(spec, partition, index, amount) for (spec, partition, index), amount in totals.items()]


def _records(sink: LedgerSink, since: float, until: float) -> Iterator[UsageRecord]:
    """Records in `[since, until)`, oldest first, a page at a time (a month can be millions)."""
    seen_at_boundary: set[str] = set()
    while True:
        page = sink.records(since, until, limit=_PAGE)
        fresh = [r for r in page if not (r.received_at == since and r.request_id in seen_at_boundary)]
        yield from fresh
        if len(page) < _PAGE:
            return
        last = page[-1].received_at
        if last != since:
            seen_at_boundary = set()
        since = last
        seen_at_boundary.update(r.request_id for r in page if r.received_at == last)
        if not fresh:
            # A whole page at one instant, all seen: step past it (not exact, but never stuck).
            since = math.nextafter(last, math.inf)


def describe_generation(generation: str) -> str:
    """A generation (the ms its store was found empty) for logs."""
    return datetime.fromtimestamp(int(generation) / 1000, UTC).isoformat(timespec="milliseconds")
