"""The model catalog: what tollway knows about well-known models, and what a request costs.

The catalog ships with the package as `catalog.toml` (data, beside this module) and is
changed from `tollway.toml` with `[[catalog]]` tables of the same shape. One entry:

    [[models]]                          # `[[catalog]]` in tollway.toml
    name = "gpt-4o"                     # the provider's model id
    provider = "openai"                 # the provider kind that serves it natively
    aliases = ["gpt-4o-2024-08-06"]     # other ids of the same model
    context_window = 128000             # tokens, prompt and output together
    max_output_tokens = 16384
    tokenizer = "o200k_base"            # `o200k_base`, `cl100k_base`, `anthropic`, `gemini`
    input = 2.50                        # prices: USD per million tokens
    output = 10.00
    cached_input = 1.25                 # prompt tokens read from the provider's cache
    cache_write = 3.75                  # prompt tokens written to it (Anthropic, 5 minutes)
    reasoning = 10.00                   # only where reasoning is priced apart from output

Rules:

- Every key but `name` is optional, and unknown keys are rejected. An entry without both
  `input` and `output` still names the model's provider (for routing), but what it serves
  is costed `unpriced`, never $0.
- Lookup matches a name or an alias, ignoring case. `provider/model` (`openai/gpt-4o`) also
  matches when `provider` is the provider kind of some entry and the whole string is not
  itself a name: names win (Groq's model is called `openai/gpt-oss-120b`).
- A configured entry whose name is a shipped name or alias overrides that model: the keys it
  gives replace the shipped values and its aliases are added to the shipped ones, so a
  configuration can change one price. Any other configured entry adds a model and must give
  `provider`. Either way the model's costs are reported with source `config`.
- A name or alias belongs to one model only; prices are finite and not negative; token
  limits are positive and the context window holds the maximum output.

Cost of a request (`price`): prompt tokens neither read from nor written to the cache at
`input`, cache reads at `cached_input`, cache writes at `cache_write`, completion tokens
other than reasoning at `output`, reasoning tokens at `reasoning`; a missing specific price
falls back to `input` on the prompt side and `output` on the completion side. The sum is
exact: each price is taken as an integer number of 1e-6 micro-USD per token (rounded up, so
exact for prices written with up to six decimals), and `micro_usd` is the cost rounded up
to the next micro-dollar, which is what budgets charge.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from importlib import resources
from typing import Literal

import msgspec
import msgspec.toml

from tollway.errors import ConfigError
from tollway.usage import Usage

Tokenizer = Literal["o200k_base", "cl100k_base", "anthropic", "gemini"]
# Where a model's entry came from: the shipped file, or configuration (added or overridden).
Provenance = Literal["catalog", "config"]
PriceSource = Literal["catalog", "config", "unpriced"]

_SHIPPED_FILE = "catalog.toml"
_PRICE_FIELDS = ("input", "output", "cached_input", "cache_write", "reasoning")
# A price in USD per million tokens is a price in micro-USD per token; costs are summed in
# units of 1e-6 micro-USD (1e-12 USD) so they stay exact integers.
_UNITS_PER_MICRO_USD = 1_000_000
_UNITS_PER_USD = 1e12


class ModelInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One model: a `[[models]]` entry of the shipped file or a `[[catalog]]` entry of the
    configuration (keys as in the module docstring)."""

    name: str
    provider: str | None = None
    aliases: tuple[str, ...] = ()
    context_window: int | None = None
    max_output_tokens: int | None = None
    tokenizer: Tokenizer | None = None
    input: float | None = None
    output: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None


class Cost(msgspec.Struct, frozen=True):
    """What one request cost: `usd` for reports, `micro_usd` (rounded up) for budgets."""

    usd: float
    source: PriceSource
    micro_usd: int


_UNPRICED = Cost(usd=0.0, source="unpriced", micro_usd=0)


class _ShippedFile(msgspec.Struct, forbid_unknown_fields=True):
    models: list[ModelInfo]


class Catalog:
    """The shipped catalog with configuration applied, indexed by name and alias."""

    __slots__ = ("_by_key", "_from_config", "_models", "_providers")

    def __init__(self, models: Sequence[ModelInfo], from_config: Iterable[str] = ()) -> None:
        """Index `models`; `from_config` holds the names of those configuration gave.
        Raises `ConfigError` if a name or alias belongs to two models."""
        by_key: dict[str, ModelInfo] = {}
        problems: list[str] = []
        for model in models:
            for key in (model.name, *model.aliases):
                other = by_key.setdefault(key.casefold(), model)
                if other is not model:
                    problems.append(
                        f"`{key}` names both `{other.name}` and `{model.name}`; "
                        "a name or alias belongs to one model only"
                    )
        if problems:
            raise ConfigError(problems)
        self._models = tuple(models)
        self._by_key = by_key
        self._from_config = frozenset(name.casefold() for name in from_config)
        self._providers = frozenset(m.provider.casefold() for m in models if m.provider is not None)

    @classmethod
    def load(cls, overrides: list[ModelInfo] | None = None) -> Catalog:
        """The shipped catalog with `overrides` (the configuration's `[[catalog]]` entries)
        applied. Raises `ConfigError` listing every problem found."""
        models = {m.name.casefold(): m for m in _shipped()}
        owners = {key.casefold(): m.name.casefold() for m in models.values() for key in (m.name, *m.aliases)}
        from_config: list[str] = []
        problems: list[str] = []
        for i, override in enumerate(overrides or ()):
            where = f"catalog[{i}]"
            owner = owners.get(override.name.casefold())
            if owner is None:
                owner = override.name.casefold()
                merged = override
                if override.provider is None:
                    problems.append(
                        f"{where}.provider: missing; `{override.name}` is not in the shipped catalog, "
                        "so give the provider kind that serves it, e.g. `openai`"
                    )
            else:
                merged = _overlay(models[owner], override)
            problems.extend(entry_problems(merged, where))
            models[owner] = merged
            owners.update((key.casefold(), owner) for key in (merged.name, *merged.aliases))
            from_config.append(merged.name)
        if problems:
            raise ConfigError(problems)
        return cls(list(models.values()), from_config)

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        return self._models

    def get(self, name: str) -> ModelInfo | None:
        """The model called `name` (a name or alias, any case, optionally `provider/`-prefixed)."""
        key = name.casefold()
        found = self._by_key.get(key)
        if found is None:
            provider, slash, rest = key.partition("/")
            if slash and provider in self._providers:
                found = self._by_key.get(rest)
        return found

    def provenance(self, info: ModelInfo) -> Provenance:
        """`config` if configuration added or overrode `info` (an entry of this catalog)."""
        return "config" if info.name.casefold() in self._from_config else "catalog"


def price(info: ModelInfo | None, usage: Usage, source: Provenance) -> Cost:
    """The cost of `usage` at `info`'s prices; `source` is `info`'s provenance
    (`Catalog.provenance`). Unpriced (0, `unpriced`) without `input` and `output` prices."""
    if info is None or info.input is None or info.output is None:
        return _UNPRICED
    input_rate = _rate(info.input)
    output_rate = _rate(info.output)
    # Each part is clamped at 0 on its own, so inconsistent counts (more cached tokens than
    # prompt tokens) are charged for every token reported rather than netted out.
    cached = max(usage.cached_tokens, 0)
    written = max(usage.cache_write_tokens, 0)
    fresh = max(usage.prompt_tokens - cached - written, 0)
    reasoning = max(usage.reasoning_tokens, 0)
    visible = max(usage.completion_tokens - reasoning, 0)
    units = (
        fresh * input_rate
        + cached * _rate_or(info.cached_input, input_rate)
        + written * _rate_or(info.cache_write, input_rate)
        + visible * output_rate
        + reasoning * _rate_or(info.reasoning, output_rate)
    )
    return Cost(usd=units / _UNITS_PER_USD, source=source, micro_usd=_micro_usd(units))


def estimate_micro_usd(info: ModelInfo | None, prompt_tokens: int, max_output_tokens: int) -> int | None:
    """The most a request can cost before it runs (what budgets reserve), rounded up; `None`
    when unpriced. Every prompt token is priced at the highest prompt-side price (a cache
    write costs more than input at Anthropic) and every output token at the highest
    completion-side price, so no split of the same counts costs more."""
    if info is None or info.input is None or info.output is None:
        return None
    prompt_rate = max(_rate(p) for p in (info.input, info.cached_input, info.cache_write) if p is not None)
    output_rate = max(_rate(p) for p in (info.output, info.reasoning) if p is not None)
    return _micro_usd(max(prompt_tokens, 0) * prompt_rate + max(max_output_tokens, 0) * output_rate)


@functools.cache
def _shipped() -> tuple[ModelInfo, ...]:
    """The shipped file, decoded and checked once per process."""
    text = resources.files("tollway.usage").joinpath(_SHIPPED_FILE).read_bytes()
    try:
        models = msgspec.toml.decode(text, type=_ShippedFile).models
    except msgspec.ValidationError as e:
        raise ConfigError([f"{_SHIPPED_FILE}: {e}"]) from None
    problems = [p for i, m in enumerate(models) for p in entry_problems(m, f"{_SHIPPED_FILE}: models[{i}]")]
    problems.extend(
        f"{_SHIPPED_FILE}: models[{i}].provider: missing" for i, m in enumerate(models) if m.provider is None
    )
    if problems:
        raise ConfigError(problems)
    return tuple(models)


def _overlay(base: ModelInfo, override: ModelInfo) -> ModelInfo:
    """`base` with the keys `override` gives; aliases are added, not replaced."""
    changes: dict[str, object] = {
        field: value
        for field in ModelInfo.__struct_fields__
        if field not in ("name", "aliases") and (value := getattr(override, field)) is not None
    }
    aliases = base.aliases + tuple(a for a in override.aliases if a not in base.aliases)
    return msgspec.structs.replace(base, aliases=aliases, **changes)


def entry_problems(model: ModelInfo, where: str) -> list[str]:
    """Every problem of one entry, as `WHERE.FIELD: message`."""
    problems = []
    for field in _PRICE_FIELDS:
        value = getattr(model, field)
        if value is not None and not (math.isfinite(value) and value >= 0):
            problems.append(f"{where}.{field}: expected a finite price >= 0 (USD per million tokens), got `{value}`")
    for field in ("context_window", "max_output_tokens"):
        value = getattr(model, field)
        if value is not None and value < 1:
            problems.append(f"{where}.{field}: expected a positive number of tokens, got `{value}`")
    window, max_output = model.context_window, model.max_output_tokens
    if window is not None and max_output is not None and max_output > window:
        problems.append(
            f"{where}.max_output_tokens: `{max_output}` is more than the context window `{window}` of `{model.name}`"
        )
    return problems


@functools.cache
def _rate(usd_per_million: float) -> int:
    """A price as an integer number of 1e-6 micro-USD per token, rounded up. The float's
    shortest decimal form (its repr) is the number that was written, so this is exact."""
    return math.ceil(Decimal(repr(usd_per_million)) * _UNITS_PER_MICRO_USD)


def _rate_or(usd_per_million: float | None, fallback: int) -> int:
    return fallback if usd_per_million is None else _rate(usd_per_million)


def _micro_usd(units: int) -> int:
    return -(-units // _UNITS_PER_MICRO_USD)
