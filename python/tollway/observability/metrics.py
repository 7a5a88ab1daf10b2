"""Prometheus metrics: a small registry with bounded label sets, and tollway's own metrics.

Registry
--------
`Counter`, `Gauge` and `Histogram` keep one value (or bucket list) per label-value tuple in a
dict, so `inc()` and `observe()` are a dict lookup and an add. They are meant for one thread
(the worker's event loop): no locks. A value owned by another thread (the ledger writer's
counters) is read at scrape time through `set_function` instead of being pushed.

Label sets are bounded: a metric holds at most `max_series` label sets (default 1000). Past that,
an observation with a new label set is folded into one series whose every label is `other`, and
counted in `tollway_metrics_label_overflow_total{metric}`, so a flood of distinct values cannot
grow memory or the scrape without bound.

`render()` writes the Prometheus text exposition format 0.0.4 (`CONTENT_TYPE`): metrics sorted
by name, series by label values, so equal state renders to equal bytes.

Labels
------
No label carries a per-request or per-user value (request id, key, team, user, client IP). Model
and provider labels are names from the configuration: `GatewayMetrics(models=...)` folds a model
name the configuration does not declare (a client asking for `gpt-nonexistent`) into `other`;
folding at `max_series` is only the safety net.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from tollway.usage.record import UsageRecord

if TYPE_CHECKING:
    from tollway.usage.ledger import LedgerStats

log = logging.getLogger("tollway.metrics")

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "OTHER",
    "OVERHEAD_BUCKETS",
    "Counter",
    "GatewayMetrics",
    "Gauge",
    "Histogram",
    "Registry",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "other"
# Upstream latency and time to first token, in seconds: 1 ms to 2 minutes.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
# The gateway's own time per request, in seconds: 100 us to 1 s.
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
DEFAULT_MAX_SERIES = 1000

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = tuple[str, ...]
# What a `set_function` callback returns: the value of an unlabelled metric, or a value per
# label-value tuple.
Sampled = float | Mapping[Labels, float]


def _format_value(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in zip(names, values, strict=True)) + "}"


class _Metric:
    kind: ClassVar[str]

    def __init__(self, registry: Registry, name: str, help: str, labelnames: Sequence[str], max_series: int) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name `{name}`")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"metric `{name}`: invalid label name `{label}`")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"metric `{name}`: duplicate label names")
        if max_series < 1:
            raise ValueError(f"metric `{name}`: max_series must be positive")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.max_series = max_series
        self._registry = registry
        self._other: Labels = (OTHER,) * len(self.labelnames)
        self._function: Callable[[], Sampled] | None = None

    def _admit(self, labels: Labels, held: int) -> Labels:
        """The key a new label set is stored under: itself, or `other` past `max_series`."""
        if type(labels) is not tuple or len(labels) != len(self.labelnames):
            raise ValueError(f"metric `{self.name}`: expected label values for {self.labelnames}, got {labels!r}")
        for value in labels:
            if type(value) is not str:
                raise ValueError(f"metric `{self.name}`: label values must be strings, got {labels!r}")
        if held < self.max_series or labels == self._other:
            return labels
        self._registry._overflowed(self)
        return self._other

    def set_function(self, function: Callable[[], Sampled]) -> None:
        """Read this metric's value(s) from `function` at each scrape instead of from `inc`/`set`:
        a number for an unlabelled metric, else a mapping of label-value tuples to numbers."""
        if self.kind == "histogram":
            raise TypeError("a histogram cannot be read from a function")
        self._function = function

    def _sampled(self) -> list[tuple[Labels, float]] | None:
        """The callback's values, or None when there is no callback (or it failed)."""
        function = self._function
        if function is None:
            return None
        try:
            got = function()
        except Exception:
            log.exception("metric `%s`: reading its value failed; left out of this scrape", self.name)
            return []
        if isinstance(got, Mapping):
            out = []
            for labels, value in got.items():
                if len(labels) != len(self.labelnames):
                    log.error("metric `%s`: callback returned labels %r for %r", self.name, labels, self.labelnames)
                    return []
                out.append((tuple(labels), float(value)))
            return out
        return [((), float(got))] if not self.labelnames else []

    def _render(self, out: list[str]) -> None:
        raise NotImplementedError


class _Scalar(_Metric):
    def __init__(self, registry: Registry, name: str, help: str, labelnames: Sequence[str], max_series: int) -> None:
        super().__init__(registry, name, help, labelnames, max_series)
        # Per label set, a one-element list: a cell that `child()` hands out and that stays
        # valid for the registry's lifetime (series are never removed).
        self._values: dict[Labels, list[float]] = {}
        if not self.labelnames:
            self._values[()] = [0.0]  # an unlabelled metric is exported from the start

    def value(self, labels: Labels = ()) -> float:
        """The current value for `labels` (0 if never set); for tests and debugging."""
        sampled = self._sampled()
        if sampled is not None:
            return dict(sampled).get(labels, 0.0)
        cell = self._values.get(labels)
        return 0.0 if cell is None else cell[0]

    def child(self, labels: Labels) -> list[float]:
        """The cell holding the value of `labels` (the `other` cell past `max_series`): for a
        caller that updates the same series often, `cell[0] += n` skips the lookup."""
        return self._values.get(labels) or self._new_cell(labels)[0]

    def _new_cell(self, labels: Labels) -> tuple[list[float], bool]:
        """The cell for `labels` (created if new), and whether it was folded into `other`."""
        values = self._values
        cell = values.get(labels)
        if cell is not None:
            return cell, False
        key = self._admit(labels, len(values) - (self._other in values))
        cell = values.get(key)
        if cell is None:
            cell = values[key] = [0.0]
        return cell, key is not labels

    def _render(self, out: list[str]) -> None:
        sampled = self._sampled()
        # list(dict.items()) copies in one step under the GIL, so a scrape from another thread
        # never sees the dict change size while iterating.
        items = sampled if sampled is not None else [(k, cell[0]) for k, cell in list(self._values.items())]
        for labels, value in sorted(items):
            out.append(f"{self.name}{_label_text(self.labelnames, labels)} {_format_value(value)}")


class Counter(_Scalar):
    """A monotonically increasing total. The name ends in `_total`."""

    kind = "counter"

    def __init__(self, registry: Registry, name: str, help: str, labelnames: Sequence[str], max_series: int) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"counter `{name}`: a counter's name ends in `_total`")
        super().__init__(registry, name, help, labelnames, max_series)

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counter `{self.name}`: cannot decrease (inc by {amount})")
        cell = self._values.get(labels)
        if cell is None:
            cell = self._new_cell(labels)[0]
        cell[0] += amount


class Gauge(_Scalar):
    """A value that goes up and down. `set` is atomic under the GIL; `inc`/`dec` are not, so use
    them from one thread (or read a value owned by another thread with `set_function`)."""

    kind = "gauge"

    def set(self, value: float, labels: Labels = ()) -> None:
        cell = self._values.get(labels)
        if cell is None:
            cell = self._new_cell(labels)[0]
        cell[0] = value

    def inc(self, amount: float = 1.0, labels: Labels = ()) -> None:
        cell = self._values.get(labels)
        if cell is None:
            cell = self._new_cell(labels)[0]
        cell[0] += amount

    def dec(self, amount: float = 1.0, labels: Labels = ()) -> None:
        self.inc(-amount, labels)


class Histogram(_Metric):
    """Observations counted in cumulative buckets (`le`), with their `_sum` and `_count`."""

    kind = "histogram"

    def __init__(
        self,
        registry: Registry,
        name: str,
        help: str,
        labelnames: Sequence[str],
        max_series: int,
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        if "le" in labelnames:
            raise ValueError(f"histogram `{name}`: `le` is reserved for buckets")
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram `{name}`: buckets must be increasing and not empty")
        super().__init__(registry, name, help, labelnames, max_series)
        self.buckets = bounds
        # Per label set: a count per bucket (not cumulative), one for +Inf, then the sum.
        self._series: dict[Labels, list[float]] = {}
        if not self.labelnames:
            self._series[()] = self._new()

    def _new(self) -> list[float]:
        return [0.0] * (len(self.buckets) + 2)

    def observe(self, value: float, labels: Labels = ()) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._new_series(labels)[0]
        # bisect_left: the first bound >= value, as `le` (less than or equal) means.
        series[bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def child(self, labels: Labels) -> list[float]:
        """The bucket list of `labels` (see `observe` for how to update it)."""
        return self._series.get(labels) or self._new_series(labels)[0]

    def _new_series(self, labels: Labels) -> tuple[list[float], bool]:
        all_series = self._series
        series = all_series.get(labels)
        if series is not None:
            return series, False
        key = self._admit(labels, len(all_series) - (self._other in all_series))
        series = all_series.get(key)
        if series is None:
            series = all_series[key] = self._new()
        return series, key is not labels

    def snapshot(self, labels: Labels = ()) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative (le, count) pairs ending with +Inf, sum, count) for `labels`."""
        series = self._series.get(labels) or self._new()
        cumulative: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.buckets, math.inf), series[:-1], strict=True):
            running += int(count)
            cumulative.append((bound, running))
        return cumulative, float(series[-1]), running

    def _render(self, out: list[str]) -> None:
        names = (*self.labelnames, "le")
        for labels in sorted(list(self._series)):
            cumulative, total, count = self.snapshot(labels)
            for bound, running in cumulative:
                le = "+Inf" if bound == math.inf else _format_value(bound)
                out.append(f"{self.name}_bucket{_label_text(names, (*labels, le))} {running}")
            label_text = _label_text(self.labelnames, labels)
            out.append(f"{self.name}_sum{label_text} {_format_value(total)}")
            out.append(f"{self.name}_count{label_text} {count}")


class Registry:
    """A set of metrics rendered together. Declare metrics once, at startup."""

    def __init__(self, *, max_series: int = DEFAULT_MAX_SERIES) -> None:
        self.max_series = max_series
        self._metrics: dict[str, _Metric] = {}
        self._warned: set[str] = set()
        self.label_overflow = self.counter(
            "tollway_metrics_label_overflow_total",
            "Observations folded into the `other` series because their metric already held its maximum"
            " number of label sets.",
            ("metric",),
            max_series=100_000,
        )

    def _register(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric `{metric.name}` is already registered")
        self._metrics[metric.name] = metric

    def counter(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, max_series: int | None = None
    ) -> Counter:
        metric = Counter(self, name, help, labelnames, max_series or self.max_series)
        self._register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = (), *, max_series: int | None = None) -> Gauge:
        metric = Gauge(self, name, help, labelnames, max_series or self.max_series)
        self._register(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = LATENCY_BUCKETS,
        max_series: int | None = None,
    ) -> Histogram:
        metric = Histogram(self, name, help, labelnames, max_series or self.max_series, buckets)
        self._register(metric)
        return metric

    def _overflowed(self, metric: _Metric) -> None:
        if metric is self.label_overflow:
            return  # one series per metric name: cannot overflow in practice; never recurse
        self.label_overflow.inc((metric.name,))
        if metric.name not in self._warned:
            self._warned.add(metric.name)
            log.warning(
                "metric `%s` holds %d label sets; new ones are counted under `other`", metric.name, metric.max_series
            )

    def render(self) -> bytes:
        out: list[str] = []
        for name in sorted(self._metrics):
            metric = self._metrics[name]
            out.append(f"# HELP {name} {_escape_help(metric.help)}")
            out.append(f"# TYPE {name} {metric.kind}")
            metric._render(out)
        return ("\n".join(out) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# tollway's metrics

TOKEN_TYPES = ("prompt", "completion", "cached", "cache_write", "reasoning")
_TOKEN_TYPE_SET = frozenset(TOKEN_TYPES)
# Attempt outcomes that are not an upstream's failure (targets skipped by the router included).
_NOT_UPSTREAM_ERRORS = frozenset({"ok", "client_disconnected", "circuit_open", "provider_waiting"})
_STATUS_CLASSES: tuple[str, ...] = (
    ("none",) + ("unknown",) * 99 + tuple(f"{c}xx" for c in range(1, 6) for _ in range(100))
)


def status_class(status: int) -> str:
    """`2xx`, `4xx`, ...; `none` when no status was sent (0), `unknown` when out of range."""
    return _STATUS_CLASSES[status] if 0 <= status < 600 else "unknown"


_MAX_ROUTES = 4096
# Distinct HTTP statuses a route keeps cells for (the rest are looked up per request).
_MAX_STATUSES = 64


class _Route:
    """The cells (counter values, histogram bucket lists) that requests on one (endpoint, model
    asked for, provider) update, each filled on first use and then read as an attribute. A cell
    folded into `other` is not kept, so that each folded observation goes through the metric's
    own path and is counted as an overflow."""

    __slots__ = (
        "cache_write",
        "cached",
        "completion",
        "cost",
        "duration",
        "labels",
        "metrics",
        "overhead",
        "prompt",
        "reasoning",
        "statuses",
        "ttft",
        "unpriced",
    )

    def __init__(self, metrics: GatewayMetrics, labels: tuple[str, str, str]) -> None:
        self.metrics = metrics
        self.labels = labels  # (endpoint, model label, provider label)
        self.statuses: dict[int, list[float]] = {}  # by the HTTP status, for `tollway_requests_total`
        self.prompt: list[float] | None = None
        self.completion: list[float] | None = None
        self.cached: list[float] | None = None
        self.cache_write: list[float] | None = None
        self.reasoning: list[float] | None = None
        self.cost: list[float] | None = None
        self.unpriced: list[float] | None = None
        self.duration: list[float] | None = None
        self.ttft: list[float] | None = None
        self.overhead: list[float] | None = None

    def fill(self, name: str) -> list[float]:
        """The cell `name` (a slot above), kept unless it was folded."""
        m = self.metrics
        endpoint, model, provider = self.labels
        cell: list[float]
        if name in _TOKEN_TYPE_SET:
            cell, folded = m.tokens._new_cell((model, provider, name))
        elif name == "cost":
            cell, folded = m.cost._new_cell((model, provider))
        elif name == "unpriced":
            cell, folded = m.unpriced._new_cell((model,))
        elif name == "duration":
            cell, folded = m.request_duration._new_series(self.labels)
        elif name == "ttft":
            cell, folded = m.time_to_first_token._new_series(self.labels)
        else:  # overhead
            cell, folded = m.gateway_overhead._new_series((endpoint, provider))
        if not folded:
            setattr(self, name, cell)
        return cell

    def fill_status(self, status: int) -> list[float]:
        endpoint, model, provider = self.labels
        cell, folded = self.metrics.requests._new_cell((endpoint, model, provider, status_class(status)))
        if not folded and len(self.statuses) < _MAX_STATUSES:
            self.statuses[status] = cell
        return cell


class GatewayMetrics:
    """The gateway's metrics, updated once per finished request by `observe_record`.

    `models`: the model names clients may use, from the configuration. A requested model outside
    it is labelled `other` (a client can send any string; a label must not take it). Without
    `models`, names are used as they come and the registry's `max_series` bounds them.
    """

    def __init__(
        self,
        registry: Registry | None = None,
        *,
        models: Collection[str] | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        r = self.registry = registry if registry is not None else Registry(max_series=max_series)
        self._models = frozenset(models) if models is not None else None
        self._routes: dict[tuple[str, str | None, str | None], _Route] = {}
        self.requests = r.counter(
            "tollway_requests_total",
            "Requests received on an API endpoint, by the model asked for, the provider that served"
            " it and the HTTP status class returned.",
            ("endpoint", "model", "provider", "status_class"),
        )
        self.tokens = r.counter(
            "tollway_tokens_total",
            "Tokens by type. `cached` and `cache_write` are parts of `prompt`; `reasoning` is part of `completion`.",
            ("model", "provider", "type"),
        )
        self.cost = r.counter(
            "tollway_cost_usd_total",
            "Cost in US dollars of priced requests.",
            ("model", "provider"),
        )
        self.unpriced = r.counter(
            "tollway_unpriced_requests_total",
            "Requests with usage but no price (not in the catalog or the configuration).",
            ("model",),
        )
        self.request_duration = r.histogram(
            "tollway_request_duration_seconds",
            "Time from receiving a request to its last byte.",
            ("endpoint", "model", "provider"),
        )
        self.time_to_first_token = r.histogram(
            "tollway_time_to_first_token_seconds",
            "Time from receiving a streamed request to its first token.",
            ("endpoint", "model", "provider"),
        )
        self.gateway_overhead = r.histogram(
            "tollway_gateway_overhead_seconds",
            "The gateway's own time per request, upstream waits excluded.",
            ("endpoint", "provider"),
            buckets=OVERHEAD_BUCKETS,
        )
        self.upstream_errors = r.counter(
            "tollway_upstream_errors_total",
            "Failed upstream attempts, by provider and kind (`timeout`, `server_error`, ...).",
            ("provider", "kind"),
        )
        self.upstream_pool_wait = r.histogram(
            "tollway_upstream_pool_wait_seconds",
            "How long upstream requests waited for a free connection to their provider"
            " (`max_connections_per_host`); a wait past the first-byte timeout fails the attempt.",
            ("provider",),
            buckets=OVERHEAD_BUCKETS,
        )
        self.policy_decisions = r.counter(
            "tollway_policy_decisions_total",
            "Policy verdicts (`allow`, `deny`, `would_deny`, ...) by policy name.",
            ("policy", "verdict"),
        )
        self.ledger_queue_depth = r.gauge("tollway_ledger_queue_depth", "Usage records waiting for the ledger writer.")
        self.ledger_dropped = r.counter(
            "tollway_ledger_dropped_total",
            "Usage records lost: `queue_full` (the request path never waits), `write_failed` (after"
            " retries) or `closed`.",
            ("reason",),
        )
        self.ledger_written = r.counter("tollway_ledger_written_total", "Usage records written to the ledger.")
        self.ledger_write_errors = r.counter(
            "tollway_ledger_write_errors_total", "Failed ledger write attempts (each retry counts)."
        )

    def attach_ledger(self, stats: Callable[[], LedgerStats]) -> None:
        """Read the ledger metrics from the writer's counters (`Ledger.stats`) at scrape time."""
        self.ledger_queue_depth.set_function(lambda: stats().queue_depth)
        self.ledger_written.set_function(lambda: stats().written)
        self.ledger_write_errors.set_function(lambda: stats().write_errors)

        def dropped() -> dict[Labels, float]:
            s = stats()
            return {
                ("queue_full",): s.dropped_queue_full,
                ("write_failed",): s.dropped_write_failed,
                ("closed",): s.dropped_closed,
            }

        self.ledger_dropped.set_function(dropped)

    def observe_pool_wait(self, provider: str, seconds: float) -> None:
        self.upstream_pool_wait.observe(seconds, (provider,))

    def model_label(self, model: str | None) -> str:
        if model is None:
            return ""
        models = self._models
        return model if models is None or model in models else OTHER

    def observe_record(self, record: UsageRecord) -> None:
        """Update every per-request metric from a finished request's record.

        The cells one (endpoint, model, provider) updates are kept on a `_Route` looked up by the
        record's own values (the model's label worked out once per route), so a request costs
        one dict lookup and an attribute read per cell. Measured (callgrind, 2026-12-06): 14.5k
        instructions per call with a dict of cells by name and the labels worked out per call."""
        route = self._routes.get((record.endpoint, record.requested_model, record.provider))
        if route is None:
            route = self._new_route(record.endpoint, record.requested_model, record.provider)
        status = record.status
        cell = route.statuses.get(status)
        if cell is None:
            cell = route.fill_status(status)
        cell[0] += 1
        n = record.prompt_tokens
        if n > 0:
            (route.prompt or route.fill("prompt"))[0] += n
        n = record.completion_tokens
        if n > 0:
            (route.completion or route.fill("completion"))[0] += n
        n = record.cached_tokens
        if n > 0:
            (route.cached or route.fill("cached"))[0] += n
        n = record.cache_write_tokens
        if n > 0:
            (route.cache_write or route.fill("cache_write"))[0] += n
        n = record.reasoning_tokens
        if n > 0:
            (route.reasoning or route.fill("reasoning"))[0] += n
        cost = record.cost_usd
        if cost > 0:
            (route.cost or route.fill("cost"))[0] += cost
        if record.cost_source == "unpriced":
            (route.unpriced or route.fill("unpriced"))[0] += 1
        seconds = record.latency_ms / 1000.0
        series = route.duration or route.fill("duration")
        series[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds
        if (ms := record.ttft_ms) is not None:
            seconds = ms / 1000.0
            series = route.ttft or route.fill("ttft")
            series[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            series[-1] += seconds
        if (ms := record.overhead_ms) is not None:
            seconds = ms / 1000.0
            series = route.overhead or route.fill("overhead")
            series[bisect_left(OVERHEAD_BUCKETS, seconds)] += 1
            series[-1] += seconds
        for attempt in record.attempts:
            if attempt.outcome not in _NOT_UPSTREAM_ERRORS:
                self.upstream_errors.inc((attempt.provider, attempt.outcome))
        for decision in record.decisions:
            self.policy_decisions.inc((decision.policy, decision.verdict))

    def _new_route(self, endpoint: str, model: str | None, provider: str | None) -> _Route:
        route = _Route(self, (endpoint, self.model_label(model), provider or ""))
        # Keys are bounded by the configuration (endpoints x models x providers) when `models` is
        # given; past the cap (a flood of unknown names) routes are built per call, uncached.
        if len(self._routes) < _MAX_ROUTES:
            self._routes[(endpoint, model, provider)] = route
        return route

    def render(self) -> bytes:
        return self.registry.render()
