"""The metrics registry and tollway's metrics, checked through what Prometheus reads: every
exposition here is parsed back with prometheus_client's own text parser."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tollway.observability.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    OTHER,
    GatewayMetrics,
    Registry,
    status_class,
)
from tollway.usage.ledger import Ledger, LedgerConfig, LedgerStats
from tollway.usage.record import Attempt, PolicyVerdict, UsageRecord


def parse(exposition: bytes) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """{family name: {(sample name, sorted labels): value}}, through the real parser."""
    text = exposition.decode()
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(text):
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def types(exposition: bytes) -> dict[str, str]:
    return {family.name: family.type for family in text_string_to_metric_families(exposition.decode())}


# ---------------------------------------------------------------------------------------------
# Counters and gauges


def test_counter() -> None:
    r = Registry()
    plain = r.counter("t_events_total", "Events.")
    plain.inc()
    plain.inc(amount=2.5)
    by = r.counter("t_requests_total", "Requests.", ("route", "code"))
    by.inc(("/a", "200"))
    by.inc(("/a", "200"), 2)
    by.inc(("/b", "500"))
    assert plain.value() == 3.5
    assert by.value(("/a", "200")) == 3 and by.value(("/c", "200")) == 0
    got = parse(r.render())
    assert got["t_events"] == {("t_events_total", ()): 3.5}
    assert got["t_requests"] == {
        ("t_requests_total", (("code", "200"), ("route", "/a"))): 3,
        ("t_requests_total", (("code", "500"), ("route", "/b"))): 1,
    }
    assert types(r.render())["t_requests"] == "counter"


def test_counter_misuse_is_refused() -> None:
    r = Registry()
    c = r.counter("t_x_total", "X.", ("a",))
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc(("v",), -1)
    with pytest.raises(ValueError, match="expected label values"):
        c.inc(("v", "w"))
    with pytest.raises(ValueError, match="expected label values"):
        c.inc()
    with pytest.raises(ValueError, match="must be strings"):
        c.inc((None,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ends in `_total`"):
        r.counter("t_x", "X.")
    with pytest.raises(ValueError, match="already registered"):
        r.counter("t_x_total", "X again.")
    with pytest.raises(ValueError, match="invalid metric name"):
        r.gauge("t-x", "X.")
    with pytest.raises(ValueError, match="invalid label name"):
        r.gauge("t_y", "Y.", ("__reserved",))
    with pytest.raises(ValueError, match="`le` is reserved"):
        r.histogram("t_h", "H.", ("le",))
    with pytest.raises(ValueError, match="increasing"):
        r.histogram("t_h", "H.", buckets=(1.0, 0.5))


def test_an_unlabelled_metric_is_exported_before_its_first_update() -> None:
    r = Registry()
    r.counter("t_events_total", "Events.")
    r.histogram("t_seconds", "Durations.", buckets=(1.0,))
    r.counter("t_labelled_total", "Labelled.", ("a",))
    got = parse(r.render())
    assert got["t_events"] == {("t_events_total", ()): 0}
    assert got["t_seconds"][("t_seconds_count", ())] == 0
    assert got["t_labelled"] == {}  # HELP and TYPE only, until a label set exists


def test_gauge() -> None:
    r = Registry()
    g = r.gauge("t_in_flight", "In flight.", ("pool",))
    g.set(5, ("a",))
    g.inc(2, ("a",))
    g.dec(1, ("a",))
    g.dec(3, ("b",))
    assert parse(r.render())["t_in_flight"] == {
        ("t_in_flight", (("pool", "a"),)): 6,
        ("t_in_flight", (("pool", "b"),)): -3,
    }
    assert types(r.render())["t_in_flight"] == "gauge"


def test_values_read_from_a_function_at_scrape_time() -> None:
    r = Registry()
    depth = {"now": 3}
    gauge = r.gauge("t_queue_depth", "Depth.")
    gauge.set_function(lambda: depth["now"])
    counter = r.counter("t_dropped_total", "Dropped.", ("reason",))
    counter.set_function(lambda: {("full",): 2, ("closed",): 0})
    assert parse(r.render())["t_queue_depth"] == {("t_queue_depth", ()): 3}
    depth["now"] = 7
    got = parse(r.render())
    assert got["t_queue_depth"] == {("t_queue_depth", ()): 7}
    assert got["t_dropped"] == {
        ("t_dropped_total", (("reason", "closed"),)): 0,
        ("t_dropped_total", (("reason", "full"),)): 2,
    }
    assert gauge.value() == 7 and counter.value(("full",)) == 2
    with pytest.raises(TypeError):
        r.histogram("t_h", "H.").set_function(lambda: 1.0)


def test_a_failing_function_leaves_its_metric_out_not_the_scrape(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="tollway.metrics")
    r = Registry()

    def broken() -> float:
        raise RuntimeError("writer gone")

    r.gauge("t_broken", "Broken.").set_function(broken)
    r.counter("t_fine_total", "Fine.").inc()
    got = parse(r.render())
    assert got["t_broken"] == {} and got["t_fine"] == {("t_fine_total", ()): 1}
    assert "t_broken" in caplog.text


# ---------------------------------------------------------------------------------------------
# Histograms


def test_histogram_bucket_math() -> None:
    r = Registry()
    h = r.histogram("t_seconds", "Durations.", ("route",), buckets=(0.1, 1.0, 5.0))
    for value in (0.05, 0.1, 0.1000001, 1.0, 4.0, 5.0, 7.5, 1000.0):
        h.observe(value, ("/a",))
    cumulative, total, count = h.snapshot(("/a",))
    # `le` is inclusive: a value on a bound counts in that bound's bucket.
    assert cumulative == [(0.1, 2), (1.0, 4), (5.0, 6), (math.inf, 8)]
    assert count == 8 and total == pytest.approx(0.05 + 0.1 + 0.1000001 + 1.0 + 4.0 + 5.0 + 7.5 + 1000.0)
    got = parse(r.render())["t_seconds"]
    le = {labels[0][1]: value for (name, labels), value in got.items() if name == "t_seconds_bucket"}
    assert le == {"0.1": 2, "1": 4, "5": 6, "+Inf": 8}
    assert got[("t_seconds_count", (("route", "/a"),))] == 8
    assert got[("t_seconds_sum", (("route", "/a"),))] == pytest.approx(total)
    assert types(r.render())["t_seconds"] == "histogram"
    text = r.render().decode()
    assert 't_seconds_bucket{route="/a",le="+Inf"} 8' in text
    assert 't_seconds_bucket{route="/a",le="1"} 4' in text


def test_default_buckets_cover_1ms_to_120s() -> None:
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 120.0
    assert list(LATENCY_BUCKETS) == sorted(set(LATENCY_BUCKETS))
    r = Registry()
    h = r.histogram("t_seconds", "Durations.")
    h.observe(0.0)
    h.observe(300.0)
    cumulative, _, count = h.snapshot()
    assert cumulative[0] == (0.001, 1) and cumulative[-2] == (120.0, 1) and cumulative[-1] == (math.inf, 2)
    assert count == 2


# ---------------------------------------------------------------------------------------------
# Exposition details


def test_label_values_and_help_are_escaped() -> None:
    r = Registry()
    c = r.counter("t_odd_total", 'Help with a back\\slash and a\nnewline and "quotes".', ("v",))
    nasty = 'a "quoted" back\\slash\nand a newline'
    c.inc((nasty,))
    text = r.render().decode()
    assert r't_odd_total{v="a \"quoted\" back\\slash\nand a newline"} 1' in text
    assert "# HELP t_odd_total Help with a back\\\\slash and a\\nnewline" in text
    assert len([line for line in text.splitlines() if "t_odd" in line]) == 3  # no raw newline leaked
    family = next(f for f in text_string_to_metric_families(text) if f.name == "t_odd")
    assert family.samples[0].labels == {"v": nasty}
    assert family.documentation == 'Help with a back\\slash and a\nnewline and "quotes".'


def test_render_is_deterministic_and_sorted() -> None:
    def build(order: list[tuple[str, str]]) -> bytes:
        r = Registry()
        b = r.counter("t_b_total", "B.", ("x", "y"))
        a = r.histogram("t_a_seconds", "A.", ("x",), buckets=(1.0,))
        for x, y in order:
            b.inc((x, y))
            a.observe(0.5, (x,))
        return r.render()

    pairs = [("2", "b"), ("1", "z"), ("10", "a"), ("1", "a")]
    first, second = build(pairs), build(list(reversed(pairs)))
    assert first == second
    lines = first.decode().splitlines()
    assert [line.split()[2] for line in lines if line.startswith("# TYPE")] == [
        "t_a_seconds",
        "t_b_total",
        "tollway_metrics_label_overflow_total",
    ]
    b_samples = [line.split(" ")[0] for line in lines if line.startswith("t_b_total")]
    assert b_samples == [
        't_b_total{x="1",y="a"}',
        't_b_total{x="1",y="z"}',
        't_b_total{x="10",y="a"}',
        't_b_total{x="2",y="b"}',
    ]
    assert first.endswith(b"\n")
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_values_are_formatted_for_prometheus() -> None:
    r = Registry()
    g = r.gauge("t_g", "G.", ("k",))
    for key, value in [
        ("int", 3.0),
        ("frac", 0.1),
        ("big", 1e20),
        ("tiny", 1e-9),
        ("inf", math.inf),
        ("nan", math.nan),
    ]:
        g.set(value, (key,))
    text = r.render().decode()
    for expected in ('k="int"} 3\n', 'k="frac"} 0.1\n', 'k="big"} 1e+20\n', 'k="tiny"} 1e-09\n', 'k="inf"} +Inf\n'):
        assert expected in text
    got = parse(r.render())["t_g"]
    assert math.isnan(got[("t_g", (("k", "nan"),))])
    assert got[("t_g", (("k", "big"),))] == 1e20


# ---------------------------------------------------------------------------------------------
# Label cardinality


def test_new_label_sets_past_the_limit_fold_into_other(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tollway.metrics")
    r = Registry(max_series=3)
    c = r.counter("t_req_total", "Requests.", ("model", "status"))
    h = r.histogram("t_seconds", "Durations.", ("model",), buckets=(1.0,))
    for i in range(10):
        c.inc((f"m{i}", "2xx"))
        h.observe(0.5, (f"m{i}",))
    c.inc(("m0", "2xx"))  # a label set seen before the limit still has its own series
    c.inc(("m9", "2xx"))  # one past it still folds
    got = parse(r.render())
    assert got["t_req"] == {
        ("t_req_total", (("model", "m0"), ("status", "2xx"))): 2,
        ("t_req_total", (("model", "m1"), ("status", "2xx"))): 1,
        ("t_req_total", (("model", "m2"), ("status", "2xx"))): 1,
        ("t_req_total", (("model", OTHER), ("status", OTHER))): 8,
    }
    assert got["t_seconds"][("t_seconds_count", (("model", OTHER),))] == 7
    overflow = got["tollway_metrics_label_overflow"]
    assert overflow[("tollway_metrics_label_overflow_total", (("metric", "t_req_total"),))] == 8
    assert overflow[("tollway_metrics_label_overflow_total", (("metric", "t_seconds"),))] == 7
    # One warning per metric, not one per folded observation.
    assert sum("t_req_total" in r.getMessage() for r in caplog.records) == 1


def test_a_flood_of_distinct_labels_stays_bounded() -> None:
    metrics = GatewayMetrics(max_series=50)
    for i in range(5000):
        metrics.observe_record(UsageRecord(request_id=f"r{i}", received_at=0, requested_model=f"model-{i}", status=200))
    families = parse(metrics.render())
    assert len(families["tollway_requests"]) == 51  # 50 + `other`
    assert sum(families["tollway_requests"].values()) == 5000
    overflow = families["tollway_metrics_label_overflow"]
    # Every folded observation is counted, cached route or not.
    assert overflow[("tollway_metrics_label_overflow_total", (("metric", "tollway_requests_total"),))] == 4950
    assert overflow[("tollway_metrics_label_overflow_total", (("metric", "tollway_request_duration_seconds"),))] == 4950
    # A second pass over known names updates their own series.
    metrics.observe_record(UsageRecord(request_id="again", received_at=0, requested_model="model-0", status=200))
    again = parse(metrics.render())["tollway_requests"]
    labels = (("endpoint", ""), ("model", "model-0"), ("provider", ""), ("status_class", "2xx"))
    assert again[("tollway_requests_total", labels)] == 2


def test_every_status_is_counted_past_the_statuses_a_route_keeps() -> None:
    # A route keeps cells for a bounded number of distinct statuses; the rest still count.
    metrics = GatewayMetrics()
    statuses = list(range(200, 600))
    for status in statuses * 2:
        metrics.observe_record(UsageRecord(request_id="r", received_at=0, requested_model="m", status=status))
    requests = parse(metrics.render())["tollway_requests"]
    by_class = {dict(labels)["status_class"]: n for (_, labels), n in requests.items()}
    assert by_class == {"2xx": 200, "3xx": 200, "4xx": 200, "5xx": 200}


def test_series_shared_by_several_routes_are_not_folded_when_the_metric_is_full() -> None:
    # Tokens are labelled by model and provider only: two endpoints share one series, and the
    # second endpoint must find it even though the metric holds its maximum already.
    metrics = GatewayMetrics(max_series=1)
    for endpoint in ("/v1/chat/completions", "/v1/messages"):
        metrics.observe_record(
            UsageRecord(request_id="r", received_at=0, endpoint=endpoint, requested_model="m", provider="p",
                        status=200, prompt_tokens=10)
        )  # fmt: skip
    got = parse(metrics.render())
    prompt = (("model", "m"), ("provider", "p"), ("type", "prompt"))
    assert got["tollway_tokens"] == {("tollway_tokens_total", prompt): 20}
    requests = got["tollway_requests"]
    assert len(requests) == 2 and sum(requests.values()) == 2  # the second endpoint folded here
    assert ("tollway_requests_total", (("endpoint", OTHER), ("model", OTHER), ("provider", OTHER),
                                       ("status_class", OTHER))) in requests  # fmt: skip


# ---------------------------------------------------------------------------------------------
# tollway's metrics


def a_record(**fields: object) -> UsageRecord:
    base: dict[str, object] = dict(
        request_id="req_1",
        received_at=1_700_000_000.0,
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
        cost_usd=0.0042,
        cost_source="catalog",
        latency_ms=1500.0,
        ttft_ms=250.0,
        overhead_ms=0.4,
        attempts=[
            Attempt(provider="azure", model="gpt-4o-mini", status=503, outcome="server_error"),
            Attempt(provider="azure", model="gpt-4o-mini", outcome="timeout", reason="retry"),
            Attempt(provider="openai", model="gpt-4o-mini", status=200, reason="fallback"),
        ],
        decisions=[
            PolicyVerdict(policy="team-rate", kind="rate", verdict="allow"),
            PolicyVerdict(policy="daily-usd", kind="budget", verdict="would_deny", mode="shadow"),
        ],
    )
    base.update(fields)
    return UsageRecord(**base)  # type: ignore[arg-type]


def test_observe_record_updates_every_per_request_metric() -> None:
    m = GatewayMetrics(models=["fast", "smart"])
    m.observe_record(a_record())
    m.observe_record(a_record(request_id="req_2", status=429, cost_usd=0.0, cost_source="none", prompt_tokens=0,
                              completion_tokens=0, cached_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
                              latency_ms=2.0, ttft_ms=None, overhead_ms=None, attempts=[],
                              decisions=[PolicyVerdict(policy="team-rate", kind="rate", verdict="deny")]))  # fmt: skip
    m.observe_record(a_record(request_id="req_3", requested_model="smart", cost_usd=0.0, cost_source="unpriced",
                              attempts=[Attempt(provider="openai", model="o1", outcome="client_disconnected")],
                              decisions=[]))  # fmt: skip
    got = parse(m.render())
    chat = "/v1/chat/completions"
    assert got["tollway_requests"] == {
        (
            "tollway_requests_total",
            (("endpoint", chat), ("model", "fast"), ("provider", "openai"), ("status_class", "2xx")),
        ): 1,
        (
            "tollway_requests_total",
            (("endpoint", chat), ("model", "fast"), ("provider", "openai"), ("status_class", "4xx")),
        ): 1,
        (
            "tollway_requests_total",
            (("endpoint", chat), ("model", "smart"), ("provider", "openai"), ("status_class", "2xx")),
        ): 1,
    }
    tokens = {
        (dict(labels)["model"], dict(labels)["type"]): value for (_, labels), value in got["tollway_tokens"].items()
    }
    assert tokens == {
        ("fast", "prompt"): 1000,
        ("fast", "completion"): 200,
        ("fast", "cached"): 600,
        ("fast", "cache_write"): 50,
        ("fast", "reasoning"): 30,
        ("smart", "prompt"): 1000,
        ("smart", "completion"): 200,
        ("smart", "cached"): 600,
        ("smart", "cache_write"): 50,
        ("smart", "reasoning"): 30,
    }
    assert got["tollway_cost_usd"] == {
        ("tollway_cost_usd_total", (("model", "fast"), ("provider", "openai"))): pytest.approx(0.0042)
    }
    assert got["tollway_unpriced_requests"] == {("tollway_unpriced_requests_total", (("model", "smart"),)): 1}
    # Failed attempts by provider and kind; a client leaving is not an upstream error.
    assert got["tollway_upstream_errors"] == {
        ("tollway_upstream_errors_total", (("kind", "server_error"), ("provider", "azure"))): 1,
        ("tollway_upstream_errors_total", (("kind", "timeout"), ("provider", "azure"))): 1,
    }
    assert got["tollway_policy_decisions"] == {
        ("tollway_policy_decisions_total", (("policy", "daily-usd"), ("verdict", "would_deny"))): 1,
        ("tollway_policy_decisions_total", (("policy", "team-rate"), ("verdict", "allow"))): 1,
        ("tollway_policy_decisions_total", (("policy", "team-rate"), ("verdict", "deny"))): 1,
    }
    fast = (("endpoint", chat), ("model", "fast"), ("provider", "openai"))
    duration = got["tollway_request_duration_seconds"]
    assert duration[("tollway_request_duration_seconds_count", fast)] == 2
    assert duration[("tollway_request_duration_seconds_sum", fast)] == pytest.approx(1.502)
    assert duration[("tollway_request_duration_seconds_bucket", tuple(sorted((*fast, ("le", "0.0025")))))] == 1
    ttft = got["tollway_time_to_first_token_seconds"]
    assert ttft[("tollway_time_to_first_token_seconds_count", fast)] == 1  # req_2 had no first token
    assert ttft[("tollway_time_to_first_token_seconds_sum", fast)] == pytest.approx(0.25)
    overhead = got["tollway_gateway_overhead_seconds"]
    assert overhead[("tollway_gateway_overhead_seconds_count", (("endpoint", chat), ("provider", "openai")))] == 2
    assert (
        overhead[
            ("tollway_gateway_overhead_seconds_bucket", (("endpoint", chat), ("le", "0.0005"), ("provider", "openai")))
        ]
        == 2
    )


def test_no_label_carries_a_per_request_or_per_user_value() -> None:
    m = GatewayMetrics()
    m.observe_record(a_record())
    text = m.render().decode()
    for secret in ("req_1", "alice", "research", "alice-key"):
        assert secret not in text


def test_models_outside_the_configuration_are_labelled_other() -> None:
    m = GatewayMetrics(models=["fast"])
    m.observe_record(a_record(requested_model="gpt-made-up-by-a-client"))
    m.observe_record(a_record(requested_model=None, provider=None, status=401, attempts=[], decisions=[]))
    models = {dict(labels)["model"] for (_, labels) in parse(m.render())["tollway_requests"]}
    assert models == {OTHER, ""}
    assert m.model_label("fast") == "fast"
    assert GatewayMetrics().model_label("anything") == "anything"


@pytest.mark.parametrize(
    ("status", "expected"),
    [(0, "none"), (42, "unknown"), (101, "1xx"), (200, "2xx"), (204, "2xx"), (302, "3xx"), (429, "4xx"),
     (499, "4xx"), (503, "5xx"), (599, "5xx"), (600, "unknown"), (-1, "unknown")],
)  # fmt: skip
def test_status_class(status: int, expected: str) -> None:
    assert status_class(status) == expected


def test_ledger_metrics_are_read_from_the_writer(tmp_path: Path) -> None:
    m = GatewayMetrics()
    got = parse(m.render())
    assert got["tollway_ledger_queue_depth"] == {("tollway_ledger_queue_depth", ()): 0}
    ledger = Ledger(LedgerConfig(path=str(tmp_path / "l.sqlite3"), retention_days=0))
    try:
        m.attach_ledger(ledger.stats)
        for i in range(3):
            ledger.submit(a_record(request_id=f"r{i}"))
        assert ledger.flush(10)
        got = parse(m.render())
    finally:
        ledger.close()
    assert got["tollway_ledger_written"] == {("tollway_ledger_written_total", ()): 3}
    assert got["tollway_ledger_write_errors"] == {("tollway_ledger_write_errors_total", ()): 0}
    assert got["tollway_ledger_queue_depth"] == {("tollway_ledger_queue_depth", ()): 0}
    assert got["tollway_ledger_dropped"][("tollway_ledger_dropped_total", (("reason", "queue_full"),))] == 0


def test_ledger_drops_by_reason() -> None:
    m = GatewayMetrics()
    m.attach_ledger(lambda: LedgerStats(7, 100, 5, 2, 1, 3, 0))
    got = parse(m.render())
    assert got["tollway_ledger_queue_depth"] == {("tollway_ledger_queue_depth", ()): 7}
    assert got["tollway_ledger_dropped"] == {
        ("tollway_ledger_dropped_total", (("reason", "queue_full"),)): 5,
        ("tollway_ledger_dropped_total", (("reason", "write_failed"),)): 2,
        ("tollway_ledger_dropped_total", (("reason", "closed"),)): 1,
    }
    assert got["tollway_ledger_write_errors"] == {("tollway_ledger_write_errors_total", ()): 3}


def test_the_whole_exposition_is_valid() -> None:
    m = GatewayMetrics(models=["fast", "smart"])
    m.attach_ledger(lambda: LedgerStats(0, 10, 0, 0, 0, 0, 0))
    m.observe_record(a_record())
    m.observe_record(a_record(request_id="r2", endpoint="/v1/messages", requested_model="smart", status=502))
    m.observe_pool_wait("openai", 0.002)
    exposition = m.render()
    lines = exposition.decode().splitlines()
    # Every line is a HELP, a TYPE or a sample; each family has exactly one HELP and one TYPE.
    assert all(line.startswith(("# HELP ", "# TYPE ", "tollway_")) for line in lines)
    helps = [line.split()[2] for line in lines if line.startswith("# HELP")]
    assert helps == [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(helps) == len(set(helps))
    assert types(exposition) == {
        "tollway_cost_usd": "counter",
        "tollway_gateway_overhead_seconds": "histogram",
        "tollway_upstream_pool_wait_seconds": "histogram",
        "tollway_ledger_dropped": "counter",
        "tollway_ledger_queue_depth": "gauge",
        "tollway_ledger_write_errors": "counter",
        "tollway_ledger_written": "counter",
        "tollway_metrics_label_overflow": "counter",
        "tollway_policy_decisions": "counter",
        "tollway_request_duration_seconds": "histogram",
        "tollway_requests": "counter",
        "tollway_time_to_first_token_seconds": "histogram",
        "tollway_tokens": "counter",
        "tollway_unpriced_requests": "counter",
        "tollway_upstream_errors": "counter",
    }
    # Histogram buckets are cumulative and end with +Inf equal to the count.
    for family in text_string_to_metric_families(exposition.decode()):
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        counts: dict[tuple[tuple[str, str], ...], float] = {}
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            if s.name.endswith("_bucket"):
                series.setdefault(labels, []).append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                counts[labels] = s.value
        assert series, family.name
        for labels, buckets in series.items():
            values = [v for _, v in buckets]
            assert values == sorted(values) and buckets[-1][0] == math.inf
            assert buckets[-1][1] == counts[labels]
