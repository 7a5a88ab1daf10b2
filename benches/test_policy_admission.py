"""Admission and settlement from Python, as the gateway runs them: 100 policies, 5 of which
match the request (request rate, token rate, concurrency, a token budget, parameter bounds),
prompt tokens counted natively. Run with `make bench`. Target: admission plus settlement
under 20 us per request (the end-to-end figure is `benches/e2e_overhead.py`'s `bare` against
`bare-policies`).

`evaluate` is the whole-request path (here: the request sets a bounded parameter); `admit` the
request path's one native call, for a request as the end-to-end benchmark sends it."""

from __future__ import annotations

import json

import msgspec
import pytest

from tollway._native import TokenCounter
from tollway.policy.config import PolicyConfig
from tollway.policy.engine import NEEDS_FACTS, PolicyEngine, RequestFacts
from tollway.usage import Usage
from tollway.usage.catalog import ModelInfo

POLICIES = [
    *({"name": f"other-{i}", "match": {"key": f"other-{i}"}, "per": "key", "requests": "100/min"} for i in range(95)),
    {"name": "rpm", "match": {"key": "bench"}, "per": "key", "requests": "1000000/s"},
    {"name": "tpm", "match": {"key": "bench"}, "per": "key", "tokens": "1000M/min"},
    {"name": "inflight", "match": {"model": "bench"}, "per": "key", "concurrency": 100000},
    {"name": "daily", "match": {"key": "bench"}, "per": "key", "budget": {"tokens": 10**12, "per": "day"}},
    {"name": "bounds", "match": {"key": "bench"}, "params": {"max_tokens": 100000, "n": 1}},
]
BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Write one short sentence about foxes."}]}
)
COUNTER = TokenCounter("o200k_base")
ENGINE = PolicyEngine([msgspec.convert(p, PolicyConfig) for p in POLICIES])
USAGE = Usage(prompt_tokens=16, completion_tokens=17)


def admit_and_settle() -> None:
    raw = BODY.encode()
    facts = RequestFacts(
        key="bench",
        team="bench-team",
        model="bench",
        resolved_model="bench",
        provider="up",
        endpoint="/v1/chat/completions",
        ip="127.0.0.1",
        params={"max_tokens": 100.0},
        count_prompt=lambda: COUNTER.count_openai_chat(raw)[0],
    )
    admission = ENGINE.evaluate(facts)
    assert admission.denied is None and len(admission.verdicts) == 5
    admission.settle(USAGE, None)


class Served:
    """The served model as `PolicyEngine.admit` reads it (as `ModelAccounting` has it)."""

    info: ModelInfo | None = None
    counter = COUNTER


SERVED = Served()
ATTRS = ("bench", "bench-team", None, "bench", "bench", "up", "/v1/chat/completions", "127.0.0.1")


def admit_on_the_request_path() -> None:
    admission = ENGINE.admit(ATTRS, (), {}, SERVED, "openai", BODY.encode())
    assert admission is not None and not isinstance(admission, type(NEEDS_FACTS))
    assert admission.denied is None and len(admission.verdicts) == 5
    admission.settle(USAGE, None)


def test_admission_on_the_request_path(benchmark) -> None:  # type: ignore[no-untyped-def]
    benchmark(admit_on_the_request_path)


def test_admission_with_100_policies(benchmark) -> None:  # type: ignore[no-untyped-def]
    benchmark(admit_and_settle)


@pytest.mark.benchmark(group="policy-admission")
def test_admission_no_policy_matches(benchmark) -> None:  # type: ignore[no-untyped-def]
    facts = RequestFacts(key="nobody", model="other", endpoint="/v1/chat/completions")
    benchmark(ENGINE.evaluate, facts)
