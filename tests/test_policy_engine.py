"""The policy engine in process, on a fake clock: every rule kind, shadow mode, partitions,
combination order, settlement, reload carry-over, and the concurrency overshoot bound."""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway.config import parse_config
from tollway.errors import ConfigError
from tollway.policy.config import PolicyConfig, parse_duration, parse_rate, parse_utc_offset
from tollway.policy.engine import PolicyEngine, RequestFacts, compile_policies
from tollway.policy.state import MemoryBackend
from tollway.usage import Usage
from tollway.usage.catalog import ModelInfo

T0 = 1_767_225_600.0
PRICED = ModelInfo(name="m", input=0.0, output=50.0, max_output_tokens=100_000)  # $0.05 per 1k output


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def engine(*policies: dict[str, Any], clock: Clock | None = None, backend: MemoryBackend | None = None) -> PolicyEngine:
    clock = clock or Clock()
    configs = [msgspec.convert(p, PolicyConfig) for p in policies]
    return PolicyEngine(configs, backend=backend or MemoryBackend(clock=clock), clock=clock)


def facts(**kw: Any) -> RequestFacts:
    base: dict[str, Any] = {"key": "alice", "team": "research", "model": "gpt-4o", "resolved_model": "gpt-4o",
                            "provider": "openai", "endpoint": "/v1/chat/completions"}  # fmt: skip
    base.update(kw)
    prompt = base.pop("prompt", 0)
    return RequestFacts(**base, count_prompt=lambda: prompt)


def verdicts(admission: Any) -> list[tuple[str, str, str]]:
    return [(v.policy, v.kind, v.verdict) for v in admission.verdicts]


# -- shorthands -------------------------------------------------------------------------------


def test_shorthands() -> None:
    assert parse_rate("60/min") == (60, 60.0)
    assert parse_rate("100k/1h") == (100_000, 3600.0)
    assert parse_rate("2M/day") == (2_000_000, 86400.0)
    assert parse_rate("5/30s") == (5, 30.0)
    assert parse_duration("24h") == 86400 and parse_duration(90) == 90
    assert parse_utc_offset("+02:00") == 7200 and parse_utc_offset("-05:30") == -19800
    for bad in ("60", "60/fortnight", "0/min", "1.5/min"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_compile_reports_every_problem() -> None:
    configs = [
        msgspec.convert({"name": "a", "per": "colour", "requests": "10/min"}, PolicyConfig),
        msgspec.convert({"name": "a", "match": {"model": ["gpt-*", "o1"]}, "requests": "x"}, PolicyConfig),
        msgspec.convert({"name": "b"}, PolicyConfig),
        msgspec.convert({"name": "c", "budget": {"usd": 5, "tokens": 10}}, PolicyConfig),
    ]
    with pytest.raises(ConfigError) as info:
        compile_policies(configs)
    text = "\n".join(info.value.problems)
    assert "policies[0].per: unknown attribute `colour`" in text
    assert "policies[1].name: duplicate policy name `a`" in text
    assert "policies[1].match: `model`: a list takes exact names only" in text
    assert "policies[1]: expected a rate such as `60/min`" in text
    assert "policies[2]: policy `b` has no rule" in text
    assert "policies[3]: a budget takes exactly one of `usd` or `tokens`" in text


def test_config_file_errors_point_at_lines() -> None:
    text = '[[policies]]\nname = "x"\nrequests = "60/fortnight"\nper = "key"\n'
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.problems == [
        "tollway.toml:1 policies[0]: expected a rate such as `60/min`, `1000/s` or `100k/1h`, got `60/fortnight`"
    ]


# -- rule kinds ---------------------------------------------------------------------------------


def test_request_rate_per_partition_with_headers() -> None:
    clock = Clock()
    e = engine({"name": "rpm", "per": "key", "requests": {"limit": 2, "per": "1m"}}, clock=clock)
    first = e.evaluate(facts())
    assert first.denied is None
    assert dict(first.headers) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "30s",
    }
    assert e.evaluate(facts()).denied is None
    third = e.evaluate(facts())
    assert third.denied is not None and third.denied.status == 429 and third.denied.code == "rate_limit_exceeded"
    assert ("retry-after", "30") in third.denied.headers
    assert "policy `rpm` allows 2 requests per 1m for key=alice; 2 requests in use" in third.denied.message
    [verdict] = third.verdicts
    assert (verdict.verdict, verdict.used, verdict.limit, verdict.retry_after_s) == ("deny", 2, 2, 30.0)
    assert e.evaluate(facts(key="bob")).denied is None  # another partition
    clock.now += 30
    assert e.evaluate(facts()).denied is None


def test_verdicts_show_the_burst_and_dollars_as_people_read_them() -> None:
    e = engine(
        {"name": "bursty", "requests": {"limit": 10, "per": "1m", "burst": 20}},
        {"name": "plain", "requests": "10/min"},
        {"name": "spend", "budget": {"usd": 0.5, "per": "day"}},
    )
    a = e.evaluate(facts(prompt=0, params={"max_tokens": 1000}, model_info=PRICED))
    by_policy = {v.policy: v for v in a.verdicts}
    assert by_policy["bursty"].detail == "at most 20 at once" and by_policy["bursty"].limit == 10
    assert by_policy["plain"].detail is None
    spend = by_policy["spend"]
    assert (spend.limit, spend.requested, spend.unit, spend.window) == (0.5, 0.05, "usd", "day")


def test_token_rate_reserves_prompt_and_output_then_settles() -> None:
    e = engine({"name": "tpm", "tokens": "1000/1h"})
    a = e.evaluate(facts(prompt=100, params={"max_tokens": 400}))
    assert a.denied is None and a.verdicts[0].requested == 500
    denied = e.evaluate(facts(prompt=100, params={"max_tokens": 500}))
    assert denied.denied is not None and denied.denied.code == "token_rate_limit_exceeded"
    # Settled at what it used: 100 + 50; 850 left for the next one.
    a.settle(Usage(prompt_tokens=100, completion_tokens=50), None)
    assert e.evaluate(facts(prompt=100, params={"max_tokens": 750})).denied is None


def test_default_output_bound_and_model_maximum() -> None:
    e = engine({"name": "tpm", "tokens": "100k/1h"})
    assert e.evaluate(facts(prompt=10)).verdicts[0].requested == 10 + 4096
    small = ModelInfo(name="m", max_output_tokens=1000)
    assert e.evaluate(facts(prompt=10, model_info=small, params={"max_tokens": 5000})).verdicts[0].requested == 1010


def test_concurrency_leases_are_released_when_requests_end() -> None:
    e = engine({"name": "c", "per": "team", "concurrency": 2})
    a, b = e.evaluate(facts()), e.evaluate(facts())
    third = e.evaluate(facts())
    assert third.denied is not None and third.denied.code == "concurrency_limit_exceeded"
    a.settle(Usage(), None)
    assert e.evaluate(facts()).denied is None
    b.release()


def test_dollar_budget_and_unpriced_models() -> None:
    e = engine({"name": "usd", "budget": {"usd": 0.10, "per": "month"}})
    a = e.evaluate(facts(model_info=PRICED, params={"max_tokens": 1000}))
    assert a.denied is None and a.verdicts[0].requested == pytest.approx(0.05)
    unpriced = e.evaluate(facts(model_info=None))
    assert unpriced.denied is not None and unpriced.denied.code == "model_unpriced"
    allowing = engine({"name": "usd", "budget": {"usd": 0.10, "unpriced": "allow"}})
    assert allowing.evaluate(facts(model_info=None)).denied is None
    estimating = engine({"name": "usd", "budget": {"usd": 0.10, "unpriced": "estimate", "estimate_price": [0, 100]}})
    assert estimating.evaluate(facts(model_info=None, params={"max_tokens": 1000})).denied is None  # $0.10
    assert estimating.evaluate(facts(model_info=None, params={"max_tokens": 1})).denied is not None


def test_audit_budget_records_without_blocking() -> None:
    e = engine({"name": "audit", "budget": {"tokens": 100, "per": "day", "on_exceed": "audit"}})
    a = e.evaluate(facts(prompt=10, params={"max_tokens": 500}))
    assert a.denied is None
    a.settle(Usage(prompt_tokens=10, completion_tokens=200), None)
    b = e.evaluate(facts(prompt=10, params={"max_tokens": 500}))
    assert b.denied is None and verdicts(b) == [("audit", "budget", "audit")]


def test_truncating_budget_admits_within_what_is_left() -> None:
    e = engine({"name": "cap", "budget": {"tokens": 1000, "per": "day", "on_exceed": "truncate"}})
    a = e.evaluate(facts(prompt=100, params={"max_tokens": 600}))
    assert a.denied is None and a.output_cap == (600, "cap")
    a.settle(Usage(prompt_tokens=100, completion_tokens=600), None)
    b = e.evaluate(facts(prompt=100, params={"max_tokens": 600}))
    # 300 left: the request runs with what is left (100 prompt + 200 output), max_tokens lowered.
    assert b.denied is None and b.output_cap == (200, "cap") and b.clamps == {"max_tokens": 200}
    b.settle(Usage(prompt_tokens=100, completion_tokens=200), None)
    assert e.evaluate(facts(prompt=100, params={"max_tokens": 600})).denied is not None


def test_access_rules() -> None:
    e = engine(
        {"name": "no-interns", "match": {"team": "interns"}, "deny": "interns may not call models"},
        {"name": "cheap", "match": {"team": "research"}, "allow": {"model": ["gpt-4o-mini"]}},
        {"name": "project", "match": {"key": "carol"}, "require_headers": ["x-project-id"]},
        {"name": "office", "match": {"not": {"ip": "10.0.0.0/8"}}, "deny": True},
    )
    denied = e.evaluate(facts(team="interns", ip="10.1.1.1"))
    assert denied.denied is not None and denied.denied.status == 403 and denied.denied.code == "access_denied"
    assert "interns may not call models" in denied.denied.message
    assert e.evaluate(facts(ip="10.1.1.1")).denied is not None  # gpt-4o is not allowed for research
    assert e.evaluate(facts(model="gpt-4o-mini", ip="10.1.1.1")).denied is None
    assert e.evaluate(facts(model="gpt-4o-mini", ip="192.168.1.1")).denied is not None
    missing = e.evaluate(facts(key="carol", team=None, ip="10.0.0.1"))
    assert missing.denied is not None and missing.denied.code == "required_header_missing"
    assert e.evaluate(facts(key="carol", team=None, ip="10.0.0.1", headers={"x-project-id": "p1"})).denied is None


def test_parameter_bounds_reject_or_clamp() -> None:
    e = engine(
        {"name": "bounds", "params": {"max_tokens": {"max": 4096, "action": "clamp"}, "n": 1, "tools": False,
                                      "prompt_tokens": 1000}},
    )  # fmt: skip
    clamped = e.evaluate(facts(params={"max_tokens": 10_000}))
    assert clamped.denied is None and clamped.clamps == {"max_tokens": 4096}
    assert verdicts(clamped) == [("bounds", "params", "clamp")]
    rejected = e.evaluate(facts(params={"n": 3}))
    assert rejected.denied is not None and rejected.denied.status == 400
    assert rejected.denied.code == "parameter_out_of_bounds" and "`n` is 3" in rejected.denied.message
    assert e.evaluate(facts(has_tools=True)).denied is not None
    assert e.evaluate(facts(prompt=2000)).denied is not None


def test_shadow_mode_never_blocks_but_says_it_would() -> None:
    e = engine({"name": "shadow-rpm", "mode": "shadow", "requests": "1/min"})
    assert e.evaluate(facts()).denied is None
    second = e.evaluate(facts())
    assert second.denied is None
    assert verdicts(second) == [("shadow-rpm", "rate", "would_deny")]
    assert ("x-tollway-shadow-deny", "shadow-rpm") in second.headers


def test_a_denied_request_consumes_nothing_anywhere() -> None:
    e = engine(
        {"name": "tpm", "tokens": "1000/1h"},
        {"name": "rpm", "requests": "1/1h"},
    )
    assert e.evaluate(facts(prompt=10, params={"max_tokens": 10})).denied is None
    denied = e.evaluate(facts(prompt=10, params={"max_tokens": 10}))
    assert denied.denied is not None and denied.denied.code == "rate_limit_exceeded"
    # The token reservation of the denied request was given back: 980 are left, not 960.
    assert e.evaluate(facts(key="x", prompt=0, params={"max_tokens": 1})).verdicts[0].remaining == 1000 - 20 - 1
    assert verdicts(denied) == [("tpm", "tokens", "allow"), ("rpm", "rate", "deny")]


def test_access_denial_is_decided_before_limits() -> None:
    e = engine({"name": "rpm", "requests": "10/min"}, {"name": "deny", "match": {"team": "x"}, "deny": True})
    denied = e.evaluate(facts(team="x"))
    assert denied.denied is not None and denied.denied.code == "access_denied"
    assert ("rpm", "rate", "not_evaluated") in verdicts(denied)
    # ...so the refused requests used no request capacity.
    assert e.evaluate(facts()).verdicts[0].remaining == 9


def test_reload_keeps_counters_of_unchanged_limits() -> None:
    clock = Clock()
    backend = MemoryBackend(clock=clock)
    old = engine({"name": "rpm", "requests": "2/1h"}, {"name": "tpm", "tokens": "100/1h"}, clock=clock, backend=backend)
    old.evaluate(facts(prompt=10, params={"max_tokens": 10}))
    new = engine({"name": "rpm", "requests": "2/1h"}, {"name": "tpm", "tokens": "200/1h"}, clock=clock, backend=backend)
    a = new.evaluate(facts(prompt=10, params={"max_tokens": 10}))
    rpm = next(v for v in a.verdicts if v.policy == "rpm")
    tpm = next(v for v in a.verdicts if v.policy == "tpm")
    assert rpm.remaining == 0  # carried over: this is the second request
    assert tpm.remaining == 180  # a changed limit starts fresh


def test_overshoot_bound_under_concurrency() -> None:
    """Remaining budget $0.10, twenty concurrent requests that may each cost $0.05: at most two
    are admitted, whatever the interleaving (threads here; the gateway test does it over HTTP)."""
    e = engine({"name": "usd", "budget": {"usd": 0.10, "per": "month"}})
    barrier = threading.Barrier(20)
    admitted: list[bool] = []

    def one() -> None:
        barrier.wait()
        admitted.append(e.evaluate(facts(model_info=PRICED, params={"max_tokens": 1000})).denied is None)

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 2


@settings(max_examples=100, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.integers(1, 2000), st.integers(0, 2000), st.booleans()),  # max_tokens, used, settle now
        min_size=1,
        max_size=40,
    )
)
def test_admitted_cost_never_exceeds_the_budget_plus_overshoot(requests: list[tuple[int, int, bool]]) -> None:
    """Admitted worst-case costs never exceed the cap at any moment; actual charges may go over
    only by what requests used beyond their reservation (here: completion beyond max_tokens)."""
    e = engine({"name": "usd", "budget": {"usd": 0.10, "per": "month"}})
    outstanding = []
    charged = 0  # micro-USD: settled actuals + outstanding reservations
    excess = 0
    for max_tokens, used, settle_now in requests:
        a = e.evaluate(facts(model_info=PRICED, params={"max_tokens": max_tokens}))
        if a.denied is None:
            estimate = max_tokens * 50
            outstanding.append((a, estimate, used))
            charged += estimate
            assert charged <= 100_000 + excess
        if settle_now and outstanding:
            admission, estimate, used_tokens = outstanding.pop(0)
            actual = used_tokens * 50
            admission.settle(Usage(completion_tokens=used_tokens), actual)
            charged += actual - estimate
            excess += max(0, actual - estimate)


def test_each_budget_charges_an_unpriced_model_at_its_own_estimate_price() -> None:
    e = engine(
        {"name": "a", "budget": {"usd": 1, "unpriced": "estimate", "estimate_price": [0, 100]}},
        {"name": "b", "budget": {"usd": 1, "unpriced": "estimate", "estimate_price": [0, 200]}},
    )
    e.evaluate(facts(model_info=None, params={"max_tokens": 100})).settle(Usage(completion_tokens=10), None)
    after = e.evaluate(facts(model_info=None, params={"max_tokens": 1}))
    remaining = {v.policy: v.remaining for v in after.verdicts}
    # 10 output tokens at $100 and $200 per million, then this request's own reservation.
    assert remaining == {"a": pytest.approx(1 - 0.001 - 0.0001), "b": pytest.approx(1 - 0.002 - 0.0002)}


def test_what_a_set_of_matched_policies_needs_is_worked_out_once_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tollway.policy import engine as engine_module

    monkeypatch.setattr(engine_module, "_SELECTIONS_KEPT", 2)
    e = engine(
        {"name": "all", "per": "key", "requests": "100/min"},
        {"name": "bob", "match": {"key": "bob"}, "requests": "100/min"},
        {"name": "carol", "match": {"key": "carol"}, "requests": "100/min"},
    )
    e.evaluate(facts(key="alice"))
    first = e._selections[(0,)]
    e.evaluate(facts(key="alice"))
    assert e._selections[(0,)] is first  # the same set: worked out once
    e.evaluate(facts(key="bob"))
    assert set(e._selections) == {(0,), (0, 1)}
    e.evaluate(facts(key="carol"))  # a third set: the cache starts over
    assert set(e._selections) == {(0, 2)}
    assert verdicts(e.evaluate(facts(key="alice"))) == [("all", "rate", "allow")]
