"""The compiled policy matcher through its binding (its rules and index are tested in Rust)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway._native import PolicySet
from tollway.errors import PolicyError, TollwayError

SELECTORS = [
    [],
    [("key", "exact", "alice", False)],
    [("model", "one_of", ["gpt-4o", "gpt-4o-mini"], False)],
    [("model", "glob", "claude-*", False)],
    [("key", "exact", "alice", True)],
    [("ip", "cidr", ["10.0.0.0/8", "2001:db8::/32"], False)],
    [("param:max_tokens", ">", 1000, False), ("team", "exact", "research", False)],
    [("tag", "glob", "env-prod*", False)],
]


def test_matches_in_config_order() -> None:
    policies = PolicySet(SELECTORS)
    assert len(policies) == len(SELECTORS)
    assert policies.params == ["max_tokens"]
    assert policies.matches(
        key="alice", team="research", model="gpt-4o", ip="10.2.3.4", tags=["env-production"], params=[4096]
    ) == [0, 1, 2, 5, 6, 7]
    assert policies.matches(key="bob", model="claude-3-5-sonnet", ip="2001:db8::1") == [0, 3, 4, 5]
    assert policies.matches() == [0, 4]


def test_match_attrs_is_matches_with_positional_attributes() -> None:
    """The request path's form: `(key, team, user, model, resolved_model, provider, endpoint,
    ip)`, tags, parameter values; the indices as a tuple."""
    policies = PolicySet(SELECTORS)
    attrs = ("alice", "research", None, "gpt-4o", None, None, None, "10.2.3.4")
    assert policies.match_attrs(attrs, ("env-production",), [4096.0]) == (0, 1, 2, 5, 6, 7)
    assert policies.match_attrs(attrs, ["env-production"], [4096.0]) == (0, 1, 2, 5, 6, 7)  # any sequence
    assert policies.match_attrs(
        ("bob", None, None, "claude-3-5-sonnet", None, None, None, "2001:db8::1"), (), [None]
    ) == (
        0,
        3,
        4,
        5,
    )
    assert policies.match_attrs((None,) * 8, (), []) == (0, 4)
    with pytest.raises(ValueError, match="expected 8 attributes, got 7"):
        policies.match_attrs((None,) * 7, (), [])
    with pytest.raises(ValueError, match="invalid IP address `not-an-ip`"):
        policies.match_attrs((None,) * 7 + ("not-an-ip",), (), [])
    with pytest.raises(TypeError):
        policies.match_attrs((1,) + (None,) * 7, (), [])


def test_bad_selectors_raise_policy_error() -> None:
    with pytest.raises(PolicyError, match="policy 1, condition 0: unknown attribute `colour`") as info:
        PolicySet([[], [("colour", "exact", "red", False)]])
    assert isinstance(info.value, TollwayError) and isinstance(info.value, ValueError)
    with pytest.raises(PolicyError, match=r"invalid network `300\.0\.0\.0/8`"):
        PolicySet([[("ip", "cidr", "300.0.0.0/8", False)]])
    with pytest.raises(ValueError, match="invalid IP address `not-an-ip`"):
        PolicySet([]).matches(ip="not-an-ip")


names = st.sampled_from(["a", "b", "c"])
conditions = st.one_of(
    st.tuples(st.sampled_from(["key", "team", "model"]), st.just("exact"), names, st.booleans()),
    st.tuples(st.sampled_from(["key", "model"]), st.just("one_of"), st.lists(names, min_size=1), st.booleans()),
    st.tuples(st.just("model"), st.just("glob"), st.sampled_from(["a*", "*", "?"]), st.booleans()),
)


def python_matches(selectors: list[list[tuple]], request: dict[str, str | None]) -> list[int]:  # type: ignore[type-arg]
    """The semantics written out naively in Python."""

    def holds(attribute: str, operator: str, value: object, negate: bool) -> bool:
        actual = request.get(attribute)
        if actual is None:
            found = False
        elif operator == "exact":
            found = actual == value
        elif operator == "one_of":
            found = actual in value  # type: ignore[operator]
        else:
            import fnmatch

            found = fnmatch.fnmatchcase(actual, value)  # type: ignore[arg-type]
        return found != negate

    return [i for i, selector in enumerate(selectors) if all(holds(*c) for c in selector)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(conditions, max_size=3), max_size=20),
    st.none() | names,
    st.none() | names,
    st.none() | names,
)
def test_agrees_with_a_python_reference(selectors: list[list[tuple]], key, team, model) -> None:  # type: ignore[no-untyped-def,type-arg]
    request = {"key": key, "team": team, "model": model}
    expected = python_matches(selectors, request)
    assert PolicySet(selectors).matches(key=key, team=team, model=model) == expected
    attrs = (key, team, None, model, None, None, None, None)
    assert PolicySet(selectors).match_attrs(attrs, (), []) == tuple(expected)
