"""Selector matching from Python: the native PolicySet against a straightforward pure-Python
linear scan, 1,000 policies with typical selectors, one request. Run with `make bench`."""

from __future__ import annotations

import fnmatch
import ipaddress

import pytest

from tollway._native import PolicySet


def selectors(n: int) -> list[list[tuple[str, str, object, bool]]]:
    out: list[list[tuple[str, str, object, bool]]] = []
    for i in range(n):
        kind = i % 10
        if kind <= 3:
            out.append([("key", "exact", f"key-{i}", False)])
        elif kind <= 5:
            out.append([("team", "exact", f"team-{i % 50}", False), ("model", "glob", "gpt-4*", False)])
        elif kind == 6:
            out.append([("model", "one_of", [f"model-{i}", "gpt-4o"], False)])
        elif kind == 7:
            out.append([("tag", "exact", f"tag-{i % 20}", False)])
        elif kind == 8:
            out.append([("key", "exact", f"key-{i - 8}", False), ("param:max_tokens", ">", 4096.0, False)])
        else:
            out.append([("provider", "exact", f"provider-{i % 5}", False), ("ip", "cidr", "10.0.0.0/8", False)])
    return out


SELECTORS = selectors(1000)
NATIVE = PolicySet(SELECTORS)  # type: ignore[arg-type]
REQUEST = {
    "key": "key-120",
    "team": "team-20",
    "model": "gpt-4o",
    "provider": "provider-3",
    "ip": "10.1.2.3",
    "tags": ["tag-3", "prod"],
    "params": [8192.0],
}


def python_matches() -> list[int]:
    ip = ipaddress.ip_address(REQUEST["ip"])  # type: ignore[arg-type]
    out = []
    for i, selector in enumerate(SELECTORS):
        ok = True
        for attribute, operator, value, _negate in selector:
            if attribute == "tag":
                found = value in REQUEST["tags"]  # type: ignore[operator]
            elif attribute == "ip":
                found = ip in ipaddress.ip_network(value)  # type: ignore[arg-type]
            elif attribute.startswith("param:"):
                found = REQUEST["params"][0] > value  # type: ignore[index,operator]
            elif operator == "exact":
                found = REQUEST.get(attribute) == value
            elif operator == "one_of":
                found = REQUEST.get(attribute) in value  # type: ignore[operator]
            else:
                found = fnmatch.fnmatchcase(REQUEST.get(attribute), value)  # type: ignore[arg-type]
            if not found:
                ok = False
                break
        if ok:
            out.append(i)
    return out


def native_matches() -> list[int]:
    return NATIVE.matches(
        key="key-120",
        team="team-20",
        model="gpt-4o",
        provider="provider-3",
        ip="10.1.2.3",
        tags=["tag-3", "prod"],
        params=[8192.0],
    )


def test_same_answer() -> None:
    assert native_matches() == python_matches()


@pytest.mark.benchmark(group="policy-1000-one-request")
def test_native(benchmark) -> None:  # type: ignore[no-untyped-def]
    benchmark(native_matches)


@pytest.mark.benchmark(group="policy-1000-one-request")
def test_python(benchmark) -> None:  # type: ignore[no-untyped-def]
    benchmark(python_matches)
