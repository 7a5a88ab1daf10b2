"""The native admission (`tollway._native.Admitter`) decides as the engine's Python path does.

Three engines over the same policies, each with its own memory backend on one fake clock: one
admits natively through `evaluate` (the default for the memory backend), one through `admit`
(the request path's entry: the request as primitives, `RequestFacts` made only when needed),
the third is made to take the Python path (`_plan`, `MemoryBackend.admit`, `_limits`). The same
requests, settlements, releases and clock steps go to all three; every verdict (all fields),
header, denial and settlement must agree.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway._native import Admitted, TokenCounter, output_bound
from tollway.errors import TokenCountError
from tollway.policy.config import PolicyConfig
from tollway.policy.engine import NEEDS_FACTS, Admission, PolicyEngine, RequestFacts
from tollway.policy.state import MemoryBackend
from tollway.usage import Usage
from tollway.usage.catalog import ModelInfo

T0 = 1_767_225_600.0
PRICED = ModelInfo(name="m", input=2.5, output=10.0, max_output_tokens=4_000)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def engines(policies: list[dict[str, Any]]) -> tuple[PolicyEngine, PolicyEngine, Clock]:
    native, python, _, clock = three_engines(policies)
    return native, python, clock


def three_engines(policies: list[dict[str, Any]]) -> tuple[PolicyEngine, PolicyEngine, PolicyEngine, Clock]:
    """Native through `evaluate`, the Python path, native through `admit`."""
    clock = Clock()
    configs = [msgspec.convert(p, PolicyConfig) for p in policies]
    native = PolicyEngine(configs, backend=MemoryBackend(clock=clock), clock=clock)
    python = PolicyEngine(configs, backend=MemoryBackend(clock=clock), clock=clock)
    python._native = None
    lean = PolicyEngine(configs, backend=MemoryBackend(clock=clock), clock=clock)
    assert native._native is not None or not any(p.limits for p in native.compiled.policies)
    return native, python, lean, clock


class Served:
    """The served model as `PolicyEngine.admit` reads it, counting the test request's prompt."""

    def __init__(self, request: RequestFacts) -> None:
        self.info = request.model_info
        self.counter = self
        self.request = request

    def count_prompt(self, api: str, body: bytes) -> tuple[int, str]:
        return self.request.prompt_tokens(), "exact"


def admit(engine: PolicyEngine, request: RequestFacts) -> Admission:
    """`engine.admit` with the request as the pipeline gives it (no match: an empty admission;
    a request that needs its whole facts: `evaluate`, as the pipeline does)."""
    admission = engine.admit(request.attrs(), request.tags, request.params, Served(request), "openai", b"")
    if admission is NEEDS_FACTS:
        return engine.evaluate(request)
    return Admission() if admission is None else admission


def outcome(admission: Admission) -> tuple[Any, ...]:
    denied = admission.denied
    error = None if denied is None else (denied.status, denied.code, denied.message, denied.headers)
    return (
        [msgspec.structs.astuple(v) for v in admission.verdicts],
        admission.headers,
        error,
        admission.clamps,
        admission.output_cap,
    )


def facts(key: str, model: str, prompt: int, max_tokens: int | None, priced: bool) -> RequestFacts:
    return RequestFacts(
        key=key,
        team="research" if key == "alice" else "",
        model=model,
        resolved_model=model,
        provider="openai",
        endpoint="/v1/chat/completions",
        params={} if max_tokens is None else {"max_tokens": float(max_tokens)},
        count_prompt=lambda: prompt,
        model_info=PRICED if priced else None,
    )


rates = st.builds(lambda limit, burst, per: {"limit": limit, "burst": burst, "per": per},
                  st.integers(1, 5), st.integers(1, 8), st.sampled_from(["1s", "1m", "7h"]))  # fmt: skip
token_rates = st.builds(
    lambda limit, count, cw, rw: {"limit": limit, "per": "1m", "count": count, "cached_weight": cw,
                                  "reasoning_weight": rw},
    st.integers(50, 3000), st.sampled_from(["input", "output", "total"]),
    st.sampled_from([0.1, 1.0, 1.5]), st.sampled_from([1.0, 2.0]),
)  # fmt: skip
budgets = st.one_of(
    st.builds(lambda n, per, count: {"tokens": n, "per": per, "count": count},
              st.integers(100, 5000), st.sampled_from(["day", "1h"]), st.sampled_from(["input", "total"])),
    st.builds(lambda usd, unpriced: {"usd": usd, "per": "month", "unpriced": unpriced, "estimate_price": [1.0, 3.0]},
              st.sampled_from([0.01, 0.05]), st.sampled_from(["block", "estimate", "allow"])),
    st.builds(lambda n, on_exceed: {"tokens": n, "per": "day", "on_exceed": on_exceed},
              st.integers(100, 3000), st.sampled_from(["audit", "truncate"])),
)  # fmt: skip


@st.composite
def policy(draw: st.DrawFn, i: int) -> dict[str, Any]:
    p: dict[str, Any] = {"name": f"p{i}", "mode": draw(st.sampled_from(["enforce", "enforce", "shadow"]))}
    p["per"] = draw(st.sampled_from(["key", ["key", "team"], ["model"], []]))
    if draw(st.booleans()):
        p["match"] = {"model": draw(st.sampled_from(["gpt-4o", "gpt-4o*"]))}
    kinds = draw(st.lists(st.sampled_from(["requests", "tokens", "concurrency", "budget"]), min_size=1, max_size=3,
                          unique=True))  # fmt: skip
    if draw(st.integers(0, 3)) == 0:  # parameter bounds: `admit` serves them when no bounded one is set
        p["params"] = draw(st.sampled_from([{"max_tokens": 300}, {"max_tokens": {"max": 200, "action": "clamp"}},
                                            {"n": 1}, {"n": 1, "temperature": {"min": 0.5}}]))  # fmt: skip
    for kind in kinds:
        if kind == "requests":
            p["requests"] = draw(rates)
        elif kind == "tokens":
            p["tokens"] = draw(token_rates)
        elif kind == "concurrency":
            p["concurrency"] = draw(st.integers(1, 3))
        else:
            p["budget"] = draw(budgets)
    return p


steps = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from(["alice", "bob"]), st.sampled_from(["gpt-4o", "gpt-4o-mini"]),
                  st.integers(0, 400), st.one_of(st.none(), st.integers(1, 600)), st.booleans()),
        st.tuples(st.just("settle"), st.integers(0, 7), st.integers(0, 600), st.integers(0, 300),
                  st.one_of(st.none(), st.integers(0, 9000))),
        st.tuples(st.just("release"), st.integers(0, 7)),
        st.tuples(st.just("wait"), st.sampled_from([0.2, 1.0, 30.0, 3600.0])),
    ),
    min_size=1,
    max_size=30,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(data=st.data(), steps=steps)
def test_native_admission_decides_as_the_python_path(data: st.DataObject, steps: list[tuple[Any, ...]]) -> None:
    n = data.draw(st.integers(1, 4))
    policies = [data.draw(policy(i)) for i in range(n)]
    native, python, lean, clock = three_engines(policies)
    held: list[tuple[Admission, Admission, Admission]] = []
    for step in steps:
        if step[0] == "admit":
            _, key, model, prompt, max_tokens, priced = step
            a = native.evaluate(facts(key, model, prompt, max_tokens, priced))
            b = python.evaluate(facts(key, model, prompt, max_tokens, priced))
            c = admit(lean, facts(key, model, prompt, max_tokens, priced))
            assert outcome(a) == outcome(b) == outcome(c)
            if a.denied is None:
                held.append((a, b, c))
        elif step[0] == "settle" and held:
            _, at, prompt, completion, cost = step
            usage = Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=prompt // 3,
                          reasoning_tokens=completion // 4)  # fmt: skip
            for admission in held.pop(at % len(held)):
                admission.settle(usage, cost)
        elif step[0] == "release" and held:
            for admission in held.pop(step[1] % len(held)):
                admission.release()
        elif step[0] == "wait":
            clock.now += step[1]
    # What is left held is the same too: a last request sees the same counters.
    for admissions in held:
        for admission in admissions:
            admission.release()
    last = [
        native.evaluate(facts("alice", "gpt-4o", 10, 10, True)),
        python.evaluate(facts("alice", "gpt-4o", 10, 10, True)),
        admit(lean, facts("alice", "gpt-4o", 10, 10, True)),
    ]
    assert outcome(last[0]) == outcome(last[1]) == outcome(last[2])


def test_the_native_path_serves_the_common_rules_and_leaves_the_rest_to_python() -> None:
    native, _, _ = engines(
        [
            {"name": "rpm", "per": "key", "requests": "10/min"},
            {"name": "usd", "budget": {"usd": 1, "per": "day", "unpriced": "estimate"}},
            {
                "name": "audit",
                "match": {"key": "audited"},
                "budget": {"tokens": 100, "per": "day", "on_exceed": "audit"},
            },
        ]
    )
    served = native.evaluate(facts("alice", "gpt-4o", 10, 10, True))
    assert served._native is not None and not served._held  # held natively
    unpriced = native.evaluate(facts("alice", "gpt-4o", 10, 10, False))
    assert unpriced._native is None and unpriced._held  # a dollar budget on an unpriced model
    audited = native.evaluate(facts("audited", "gpt-4o", 10, 10, True))
    assert audited._native is None and audited._held  # an audit budget
    for admission in (served, unpriced, audited):
        admission.settle(Usage(prompt_tokens=10, completion_tokens=10), 100)
    assert served._native is None and not unpriced._held


def test_out_of_range_max_tokens_is_decided_not_raised() -> None:
    """A negative `max_tokens` reserves no output (the provider refuses it); one past any
    counter (1e300) is refused by the token limit as a request alone over it."""
    native, python, _ = engines([{"name": "tpm", "per": "key", "tokens": "10k/min"}])
    for engine in (native, python):
        negative = engine.evaluate(facts("alice", "gpt-4o", 10, -5, False))
        assert negative.denied is None and negative.verdicts[0].requested == 10
        absurd = engine.evaluate(facts("alice", "gpt-4o", 10, 10**300, False))
        assert absurd.denied is not None and absurd.denied.status == 429
        assert "this request alone is over the limit" in absurd.denied.message
    # The request path's entry decides them the same way.
    _, _, lean, _ = three_engines([{"name": "tpm", "per": "key", "tokens": "10k/min"}])
    negative = admit(lean, facts("alice", "gpt-4o", 10, -5, False))
    assert negative.denied is None and negative.verdicts[0].requested == 10
    absurd = admit(lean, facts("alice", "gpt-4o", 10, 10**300, False))
    assert absurd.denied is not None and "this request alone is over the limit" in absurd.denied.message


def _output_bound_before(requested: float | None, model_max: int | None, default: int) -> int:
    """`PolicyEngine._output_bound` as it was written in Python, before the native one."""
    if requested is None:
        return min(default, model_max) if model_max else default
    wanted = model_max if model_max and requested > model_max else requested
    if wanted <= 0:
        return 0
    return int(wanted) if wanted < 1 << 40 else 1 << 40


@given(
    requested=st.one_of(st.none(), st.floats(allow_nan=False), st.integers(-10, 10**6).map(float)),
    model_max=st.one_of(st.none(), st.integers(0, 10**6)),
    default=st.integers(1, 10**6),
)
def test_the_native_output_bound_is_the_python_one(
    requested: float | None, model_max: int | None, default: int
) -> None:
    assert output_bound(requested, model_max, default) == _output_bound_before(requested, model_max, default)


def test_admit_answers_none_the_admission_or_needs_facts() -> None:
    """`admit` decides a request when every matched rule is served natively, and otherwise
    hands it to `evaluate` (`NEEDS_FACTS`), before reserving anything."""
    _, _, lean, _ = three_engines(
        [
            {"name": "rpm", "match": {"key": "alice"}, "per": "key", "requests": "10/min"},
            {"name": "bounds", "match": {"key": "alice"}, "params": {"max_tokens": 300}},
            {"name": "deny", "match": {"key": "mallory"}, "deny": "no"},
            {
                "name": "audit",
                "match": {"key": "audited"},
                "budget": {"tokens": 100, "per": "day", "on_exceed": "audit"},
            },
            {"name": "usd", "match": {"key": "spender"}, "budget": {"usd": 1, "per": "day"}},
        ]
    )

    def answer(key: str, max_tokens: int | None = None, priced: bool = True) -> Any:
        request = facts(key, "gpt-4o", 10, max_tokens, priced)
        return lean.admit(request.attrs(), request.tags, dict(request.params), Served(request), "openai", b"")

    assert answer("carol") is None  # no policy matches
    admitted = answer("alice")
    assert isinstance(admitted, Admitted) and admitted.denied is None and len(admitted) == 0
    # The checks' verdicts first, then the limits', as `evaluate` orders them.
    assert [(v.policy, v.kind, v.verdict) for v in admitted.verdicts] == [
        ("bounds", "params", "allow"),
        ("rpm", "rate", "allow"),
    ]
    assert [name for name, _ in admitted.headers] == [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ]
    assert admitted.headers[1] == ("x-ratelimit-remaining-requests", "9")
    assert answer("alice", max_tokens=100) is NEEDS_FACTS  # sets a bounded parameter
    assert answer("mallory") is NEEDS_FACTS  # an access rule
    assert answer("audited") is NEEDS_FACTS  # an audit budget
    assert isinstance(answer("spender"), Admitted)  # a dollar budget on a priced model
    assert answer("spender", priced=False) is NEEDS_FACTS  # ... on an unpriced one
    # Only the two admitted requests of `alice` took from her rate.
    assert answer("alice").headers[1] == ("x-ratelimit-remaining-requests", "8")


def test_an_admitted_request_settles_once() -> None:
    _, _, lean, _ = three_engines([{"name": "one", "per": "key", "concurrency": 1, "tokens": "1000/min"}])
    first = admit(lean, facts("alice", "gpt-4o", 10, 100, True))
    assert isinstance(first, Admitted) and len(first) == 2  # the lease and the token reservation
    assert admit(lean, facts("alice", "gpt-4o", 10, 100, True)).denied is not None  # one in flight
    first.settle(Usage(prompt_tokens=10, completion_tokens=5), None)
    assert len(first) == 0
    first.settle(Usage(prompt_tokens=10, completion_tokens=5), None)  # nothing the second time
    first.release()
    second = admit(lean, facts("alice", "gpt-4o", 10, 100, True))
    # 1,000 tokens a minute: 15 used by the first, 110 reserved by the second.
    assert second.denied is None and ("x-ratelimit-remaining-tokens", "875") in second.headers
    second.release()
    third = admit(lean, facts("alice", "gpt-4o", 10, 100, True))
    assert third.denied is None and ("x-ratelimit-remaining-tokens", "875") in third.headers


class _Unreadable:
    """A counter that cannot read any body (as `TokenCounter` raises for a malformed one)."""

    def count_prompt(self, api: str, body: bytes) -> tuple[int, str]:
        raise TokenCountError("`messages` must be an array")


def test_admit_counts_the_prompt_with_the_served_models_counter() -> None:
    """The native counter counts in the admission itself, in the request's format; a body no
    counter can read reserves no prompt tokens (the provider will refuse it), as
    `ModelAccounting.count_prompt` counts it."""
    _, _, lean, _ = three_engines(
        [{"name": "tpm", "per": "key", "tokens": {"limit": 10**6, "per": "1m", "count": "input"}}]
    )
    counter = TokenCounter("o200k_base")
    openai_body = orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "Write about foxes, at length."}]}
    )
    anthropic_body = orjson.dumps(
        {"model": "m", "max_tokens": 5, "system": "Be brief.", "messages": [{"role": "user", "content": "Foxes?"}]}
    )

    class Served:
        info = None

        def __init__(self, counter: Any) -> None:
            self.counter = counter

    def reserved(served: Served, api: str, body: bytes) -> float:
        admission = lean.admit(("alice",) + (None,) * 7, (), {}, served, api, body)
        assert isinstance(admission, Admitted) and admission.denied is None
        admission.release()
        return admission.verdicts[0].requested

    # `count_prompt` is the two counters by the client's API, as the admission counts.
    assert counter.count_prompt("openai", openai_body) == counter.count_openai_chat(openai_body)
    assert counter.count_prompt("anthropic", anthropic_body) == counter.count_anthropic_messages(anthropic_body)
    assert reserved(Served(counter), "openai", openai_body) == counter.count_openai_chat(openai_body)[0] > 0
    expected = counter.count_anthropic_messages(anthropic_body)[0]
    assert expected != counter.count_openai_chat(openai_body)[0]
    assert reserved(Served(counter), "anthropic", anthropic_body) == expected
    assert reserved(Served(counter), "openai", b"not json") == 0
    assert reserved(Served(_Unreadable()), "openai", openai_body) == 0
