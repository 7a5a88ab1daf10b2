"""The model catalog: the shipped data file, lookups, configuration overrides, and cost.

Cost arithmetic is checked against hand-computed numbers on models defined here (so a price
change in the shipped file does not touch them), and by properties: cost never falls when a
token of any kind is added, `micro_usd` is the exact cost rounded up, and the pre-request
estimate is never below the cost of any usage it covers.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollway._native import TokenCounter
from tollway.errors import ConfigError
from tollway.usage import Usage
from tollway.usage.catalog import Catalog, Cost, ModelInfo, estimate_micro_usd, price

PROVIDER_KINDS = {"openai", "anthropic", "gemini", "mistral", "deepseek", "groq", "xai", "bedrock"}
PRICES = ("input", "output", "cached_input", "cache_write", "reasoning")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


# --- The shipped file -------------------------------------------------------------------


def test_shipped_catalog_covers_the_well_known_providers(catalog: Catalog) -> None:
    assert len(catalog.models) >= 40
    assert {m.provider for m in catalog.models} == PROVIDER_KINDS


def test_every_shipped_entry_is_valid(catalog: Catalog) -> None:
    seen: dict[str, str] = {}
    for model in catalog.models:
        assert model.provider in PROVIDER_KINDS, model.name
        for field in PRICES:
            value = getattr(model, field)
            assert value is None or (math.isfinite(value) and value >= 0), (model.name, field)
        # Half a price would make the model silently unpriced: both or neither.
        assert (model.input is None) == (model.output is None), model.name
        if model.tokenizer is not None:
            TokenCounter(model.tokenizer)  # raises TokenizerError for a name the native side does not know
        if model.context_window is not None and model.max_output_tokens is not None:
            assert model.context_window >= model.max_output_tokens, model.name
        for key in (model.name, *model.aliases):
            assert key.casefold() not in seen, f"{key} names {seen.get(key.casefold())} and {model.name}"
            seen[key.casefold()] = model.name


def test_entries_reject_unknown_keys() -> None:
    # The configuration's `[[catalog]]` tables decode into the same struct.
    with pytest.raises(msgspec.ValidationError, match="unknown field `price`"):
        msgspec.convert({"name": "gpt-4o", "price": 1.0}, ModelInfo)
    with pytest.raises(msgspec.ValidationError, match="tokenizer"):
        msgspec.convert({"name": "gpt-4o", "tokenizer": "o100k"}, ModelInfo)


# --- Lookup -----------------------------------------------------------------------------


def test_lookup_by_name_alias_and_case(catalog: Catalog) -> None:
    gpt4o = catalog.get("gpt-4o")
    assert gpt4o is not None and gpt4o.name == "gpt-4o"
    assert catalog.get("gpt-4o-2024-08-06") is gpt4o
    assert catalog.get("GPT-4o") is gpt4o
    assert catalog.get("Claude-3-5-Sonnet-Latest") is catalog.get("claude-3-5-sonnet-20241022")
    assert catalog.get("no-such-model") is None


def test_lookup_strips_a_known_provider_prefix(catalog: Catalog) -> None:
    assert catalog.get("openai/gpt-4o") is catalog.get("gpt-4o")
    assert catalog.get("Anthropic/claude-sonnet-4-5-20250929") is catalog.get("claude-sonnet-4-5")
    # Only a provider kind is a prefix; `google` is not one (the kind is `gemini`).
    assert catalog.get("google/gemini-2.5-flash") is None
    assert catalog.get("openai/no-such-model") is None


def test_a_name_containing_a_slash_wins_over_the_prefix_rule(catalog: Catalog) -> None:
    groq_oss = catalog.get("openai/gpt-oss-120b")
    assert groq_oss is not None and groq_oss.provider == "groq"
    assert catalog.get("groq/openai/gpt-oss-120b") is groq_oss


# --- Overrides --------------------------------------------------------------------------


def test_an_override_changes_only_the_keys_it_gives(catalog: Catalog) -> None:
    shipped = catalog.get("gpt-4o")
    assert shipped is not None
    merged = Catalog.load([ModelInfo(name="gpt-4o", input=3.0)])
    model = merged.get("gpt-4o-2024-08-06")
    assert model is not None
    assert model.input == 3.0
    assert msgspec.structs.replace(model, input=shipped.input) == shipped
    assert merged.provenance(model) == "config"
    assert catalog.provenance(shipped) == "catalog"


def test_an_override_by_alias_adds_aliases(catalog: Catalog) -> None:
    merged = Catalog.load([ModelInfo(name="claude-3-5-haiku-latest", aliases=("haiku",), output=4.5)])
    model = merged.get("haiku")
    assert model is not None and model.name == "claude-3-5-haiku-20241022"
    assert model.aliases == ("claude-3-5-haiku-latest", "haiku")
    assert model.output == 4.5
    assert merged.get("claude-3-5-haiku-latest") is model


def test_a_new_entry_is_added_with_provenance_config(catalog: Catalog) -> None:
    merged = Catalog.load([ModelInfo(name="acme-7b", provider="openai", input=0.5, output=1.0)])
    model = merged.get("openai/ACME-7b")
    assert model is not None
    assert merged.provenance(model) == "config"
    assert price(model, Usage(prompt_tokens=1000), merged.provenance(model)).source == "config"
    assert len(merged.models) == len(catalog.models) + 1


def test_override_problems_are_collected_with_their_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        Catalog.load(
            [
                ModelInfo(name="acme-7b", input=0.5, output=1.0),
                ModelInfo(name="gpt-4o", input=-1.0, cache_write=math.inf),
                ModelInfo(name="gpt-4o-mini", max_output_tokens=200_000),
            ]
        )
    problems = caught.value.problems
    assert any(p.startswith("catalog[0].provider: missing") for p in problems)
    assert any(p.startswith("catalog[1].input: expected a finite price >= 0") for p in problems)
    assert any(p.startswith("catalog[1].cache_write: expected a finite price >= 0") for p in problems)
    assert any(p.startswith("catalog[2].max_output_tokens: `200000` is more than the context window") for p in problems)


def test_an_alias_may_not_name_two_models() -> None:
    with pytest.raises(ConfigError, match="`gpt-4o` names both"):
        Catalog.load([ModelInfo(name="my-model", provider="openai", aliases=("gpt-4o",))])


# --- Cost -------------------------------------------------------------------------------

SONNET_LIKE = ModelInfo(
    name="test-sonnet", provider="anthropic", input=3.0, output=15.0, cached_input=0.3, cache_write=3.75, reasoning=20.0
)
PLAIN = ModelInfo(name="test-plain", provider="openai", input=2.0, output=8.0)


# 10,000 prompt tokens (6,000 read from the cache, 2,000 written to it) and 1,500 completion
# tokens (500 of them reasoning).
MIXED = Usage(
    prompt_tokens=10_000, cached_tokens=6_000, cache_write_tokens=2_000, completion_tokens=1_500, reasoning_tokens=500
)


def test_cost_prices_each_kind_of_token() -> None:
    cost = price(SONNET_LIKE, MIXED, "catalog")
    # 2,000 fresh x $3 + 6,000 cached x $0.30 + 2,000 written x $3.75 + 1,000 output x $15
    # + 500 reasoning x $20, per million: 6,000 + 1,800 + 7,500 + 15,000 + 10,000 micro-USD.
    assert cost == Cost(usd=pytest.approx(0.0403), source="catalog", micro_usd=40_300)


def test_missing_specific_prices_fall_back_to_input_and_output() -> None:
    # Every prompt token at $2, every completion token at $8: 20,000 + 12,000 micro-USD.
    assert price(PLAIN, MIXED, "config") == Cost(usd=pytest.approx(0.032), source="config", micro_usd=32_000)


def test_a_shipped_model_is_priced_from_its_entry(catalog: Catalog) -> None:
    model = catalog.get("gpt-4o-mini")
    assert model is not None and model.input is not None and model.output is not None
    assert model.cached_input is not None
    cost = price(model, Usage(prompt_tokens=1_000, cached_tokens=400, completion_tokens=200), catalog.provenance(model))
    expected = 600 * model.input + 400 * model.cached_input + 200 * model.output
    assert cost.source == "catalog"
    assert cost.micro_usd == math.ceil(expected - 1e-9)


def test_micro_usd_rounds_up_and_is_exact() -> None:
    cheap = ModelInfo(name="cheap", input=0.15, output=0.07)
    assert price(cheap, Usage(prompt_tokens=1), "catalog").micro_usd == 1  # 0.15 micro-USD
    assert price(cheap, Usage(), "catalog") == Cost(usd=0.0, source="catalog", micro_usd=0)
    # 100 x 0.07 is 7.000000000000001 in float arithmetic; the exact cost is 7 micro-USD.
    assert 100 * 0.07 > 7
    assert price(cheap, Usage(completion_tokens=100), "catalog").micro_usd == 7
    assert price(cheap, Usage(completion_tokens=101), "catalog").micro_usd == 8


def test_inconsistent_counts_never_lower_the_cost() -> None:
    # More cached tokens than prompt tokens (a provider bug): every reported token is charged.
    usage = Usage(prompt_tokens=100, cached_tokens=150, completion_tokens=-5, reasoning_tokens=-1)
    assert price(SONNET_LIKE, usage, "catalog").micro_usd == math.ceil(150 * 0.3)


def test_unpriced_is_explicit(catalog: Catalog) -> None:
    unpriced = Cost(usd=0.0, source="unpriced", micro_usd=0)
    usage = Usage(prompt_tokens=1_000, completion_tokens=1_000)
    assert price(None, usage, "catalog") == unpriced
    assert price(ModelInfo(name="half", input=1.0), usage, "config") == unpriced
    deepseek = catalog.get("deepseek-v4-pro")
    assert deepseek is not None and deepseek.provider == "deepseek"
    assert price(deepseek, usage, catalog.provenance(deepseek)) == unpriced
    assert estimate_micro_usd(deepseek, 1_000, 1_000) is None
    assert estimate_micro_usd(None, 1_000, 1_000) is None


def test_estimate_is_the_worst_case() -> None:
    # 1,000 prompt tokens at the cache-write price ($3.75 > $3 input) and 500 output tokens at
    # the reasoning price ($20 > $15 output): 3,750 + 10,000 micro-USD.
    assert estimate_micro_usd(SONNET_LIKE, 1_000, 500) == 13_750
    assert estimate_micro_usd(PLAIN, 1_000, 500) == 2_000 + 4_000
    assert estimate_micro_usd(ModelInfo(name="cheap", input=0.15, output=0.07), 1, 0) == 1
    assert estimate_micro_usd(PLAIN, -10, -10) == 0


# --- Properties -------------------------------------------------------------------------

# Prices as people write them: up to six decimals, with optional specific prices.
_price = st.integers(min_value=0, max_value=100_000_000).map(lambda n: n / 1_000_000)
_models = st.builds(
    ModelInfo,
    name=st.just("m"),
    input=_price,
    output=_price,
    cached_input=st.none() | _price,
    cache_write=st.none() | _price,
    reasoning=st.none() | _price,
)
_count = st.integers(min_value=0, max_value=2_000_000)
_parts = st.tuples(_count, _count, _count, _count, _count)


def _usage(fresh: int, cached: int, written: int, visible: int, reasoning: int) -> Usage:
    return Usage(
        prompt_tokens=fresh + cached + written,
        cached_tokens=cached,
        cache_write_tokens=written,
        completion_tokens=visible + reasoning,
        reasoning_tokens=reasoning,
    )


def _exact_micro_usd(model: ModelInfo, parts: tuple[int, int, int, int, int]) -> Fraction:
    def p(value: float | None, fallback: float) -> Fraction:
        return Fraction(Decimal(repr(fallback if value is None else value)))

    assert model.input is not None and model.output is not None
    rates = (
        p(model.input, model.input),
        p(model.cached_input, model.input),
        p(model.cache_write, model.input),
        p(model.output, model.output),
        p(model.reasoning, model.output),
    )
    return sum((n * r for n, r in zip(parts, rates, strict=True)), Fraction(0))


@settings(max_examples=300, deadline=None)
@given(model=_models, parts=_parts, which=st.integers(min_value=0, max_value=4), more=_count)
def test_cost_never_falls_when_tokens_are_added(
    model: ModelInfo, parts: tuple[int, int, int, int, int], which: int, more: int
) -> None:
    bigger = tuple(n + more if i == which else n for i, n in enumerate(parts))
    before = price(model, _usage(*parts), "catalog")
    after = price(model, _usage(*bigger), "catalog")
    assert after.micro_usd >= before.micro_usd
    assert after.usd >= before.usd


@settings(max_examples=300, deadline=None)
@given(model=_models, parts=_parts)
def test_micro_usd_is_the_exact_cost_rounded_up(model: ModelInfo, parts: tuple[int, int, int, int, int]) -> None:
    cost = price(model, _usage(*parts), "catalog")
    exact = _exact_micro_usd(model, parts)
    assert exact <= cost.micro_usd < exact + 1
    assert math.isclose(cost.usd * 1e6, exact, rel_tol=1e-12, abs_tol=1e-12)
    # `usd * 1e6` may sit one float rounding above an exact whole number of micro-USD.
    assert cost.micro_usd >= cost.usd * 1e6 * (1 - 1e-15)


@settings(max_examples=300, deadline=None)
@given(model=_models, parts=_parts)
def test_the_estimate_covers_every_usage_within_its_limits(
    model: ModelInfo, parts: tuple[int, int, int, int, int]
) -> None:
    usage = _usage(*parts)
    estimate = estimate_micro_usd(model, usage.prompt_tokens, usage.completion_tokens)
    assert estimate is not None
    assert estimate >= price(model, usage, "catalog").micro_usd
