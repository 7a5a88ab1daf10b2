"""Policies compiled once, evaluated per request: admission, the decision trail, settlement.

Compilation (once per configuration): every policy's `match` becomes a selector of the native
`PolicySet` (one index for all policies), every `allow` a selector of a second one, every limit
rule a `LimitSpec` whose counters live in the state backend.

Evaluation (per request, `PolicyEngine.evaluate`; on the request path with the memory backend,
`PolicyEngine.admit`, the same decisions from the request's attributes as primitives, in one
native call when no matched policy needs more: see step 5):

1. One native call finds every matching policy, in configuration order. What that set of
   policies needs (their kinds of checks and reservations) is worked out once per distinct set.
2. Access rules (`deny`, `allow`, `require_headers`) and parameter bounds (`params`) of every
   matching policy are checked. They have no side effects; clamps are collected.
3. Unless an enforcing access or parameter rule refused the request, the limit rules of every
   matching policy become `Take`s, handed to the backend in one call (all admitted, or the
   request is denied and nothing is kept). What a take reserves:
   - request rates: 1; concurrency: one lease;
   - token rates and token budgets: the prompt tokens (counted natively, only when some rule
     needs them) and/or the output bound, as the rule's `count` says; the output bound is
     `max_tokens` (or `max_completion_tokens`), capped by the model's maximum output in the
     catalog, or `[limits] default_max_output_tokens` when the request sets none;
   - dollar budgets: the worst-case cost of that (`tollway.usage.catalog.estimate_micro_usd`),
     in micro-USD; for an unpriced model, per the budget's `unpriced` rule.
   `evaluate` asks the memory backend synchronously; `evaluate_async` serves any backend (the
   Redis backend answers every take of the request in one round trip, and its answers may be
   degraded: see `tollway.policy.state`).
   With the memory backend, steps 3 and 4 run natively in one call each (`_admit_natively`,
   `tollway._native.Admitter`: the same rules over the same limiters, with the verdicts and
   headers made there too) for every rule but audit and truncating budgets and dollar budgets
   on unpriced models, which take the Python path (`_plan`, `MemoryBackend.admit`, `_limits`).
   `tests/test_policy_native.py` holds the two paths to the same decisions.
4. Settlement (`Admission.settle`, when the request ends): each reservation is replaced by the
   actual amount (tokens weighted as configured; cost in micro-USD, rounded up); a request that
   made no model call releases everything (`Admission.release`).
5. The request path's entry, `admit` (`tollway._native.Admitter.admit_request`), runs steps 1
   to 3 in one native call for a request whose matched policies are all served natively and
   whose checks are parameter bounds it sets none of (so they pass): matching, what the matched
   policies need, the prompt count (by `served.counter`, only if a limit needs it), the
   output bound (`output_bound`, shared with the Python path) and the cost
   (`estimate_micro_usd`), the takes, the verdicts and headers. Its answer, an
   `tollway._native.Admitted`, reads and settles as an `Admission` does. Any other request is
   answered `NEEDS_FACTS`, and the caller `evaluate`s it. The Python opcodes this spares were
   most of the policies' cost per request (docs/benchmarks.md).

Worst-case overshoot under concurrency (admission is serialised per worker, or per Redis
script, so every admitted request is counted before the next is decided):
- request rates, concurrency: none;
- token rates and budgets: only what requests use beyond their reservation, which cannot
  happen for the output side (it is reserved at `max_tokens`, which the provider honours) and
  comes from the prompt side only when the provider's count exceeds tollway's (images, tools:
  approximate counts), charged as debt at settlement;
- dollar budgets: the same, plus price rounding (under 1 micro-USD per request);
- `on_exceed = "truncate"` budgets: one stream chunk past the cap (checked after each chunk).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol

from tollway._native import Admitted, Admitter, Holds, PolicySet, output_bound, reset_text
from tollway.config._toml_lines import format_path
from tollway.errors import ConfigError, PolicyError
from tollway.policy.config import (
    PARTITION_ATTRIBUTES,
    Bound,
    BudgetSpec,
    LimitsConfig,
    ParamsSpec,
    PolicyConfig,
    RateSpec,
    Selector,
    ShorthandError,
    TokenRateSpec,
    format_window,
    parse_duration,
    parse_rate,
    parse_utc_offset,
)
from tollway.policy.state import (
    AnyDenial,
    AnyGrant,
    Held,
    LimitSpec,
    MemoryBackend,
    StateBackend,
    StoreUnavailable,
    Take,
)
from tollway.server.errors import ApiError
from tollway.usage import Usage
from tollway.usage.catalog import ModelInfo, estimate_micro_usd
from tollway.usage.record import PolicyVerdict

_GLOB = set("*?[")
_SHADOW_VERDICTS = frozenset({"would_deny", "would_clamp"})
_COMPARISONS = ("<=", ">=", "==", "!=", "<", ">")
_NUMERIC_PARAMS = ("max_tokens", "n", "temperature", "top_p")


# -- the request, as policies see it ----------------------------------------------------------


class PromptCounter(Protocol):
    """Counts a request body's prompt tokens in the client's API format: `(tokens, exactness)`
    (a `TokenCounter`)."""

    def count_prompt(self, api: str, body: bytes, /) -> tuple[int, str]: ...


class ServedModel(Protocol):
    """What `PolicyEngine.admit` reads of the served model (a `ModelAccounting`): its catalog
    entry, and the counter of its prompts (a body it cannot read counts 0)."""

    @property
    def info(self) -> ModelInfo | None: ...

    @property
    def counter(self) -> PromptCounter: ...


class Evaluate(enum.Enum):
    # `PolicyEngine.admit`'s answer when a matched policy needs the whole request: `evaluate`
    # it with its `RequestFacts`.
    NEEDS_FACTS = "needs_facts"


NEEDS_FACTS: Final = Evaluate.NEEDS_FACTS


@dataclass(slots=True)
class RequestFacts:
    """Everything a policy may look at, gathered once per request."""

    key: str | None = None
    team: str | None = None
    user: str | None = None
    tags: Sequence[str] = ()
    model: str | None = None
    resolved_model: str | None = None
    provider: str | None = None
    endpoint: str | None = None
    ip: str | None = None
    params: Mapping[str, float] = field(default_factory=dict)
    stream: bool = False
    has_tools: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    # Prompt tokens, counted on first use (only when some matched rule needs them).
    count_prompt: Callable[[], int] | None = None
    # What the catalog knows of the served model (prices, maximum output).
    model_info: ModelInfo | None = None
    _prompt: int | None = None

    def prompt_tokens(self) -> int:
        if self._prompt is None:
            self._prompt = self.count_prompt() if self.count_prompt is not None else 0
        return self._prompt

    def attribute(self, name: str) -> str | None:
        value = getattr(self, name)
        return value if isinstance(value, str) else None

    def attrs(self) -> tuple[str | None, ...]:
        """The attributes selectors and partitions read, in `PARTITION_ATTRIBUTES` order."""
        return (self.key, self.team, self.user, self.model, self.resolved_model, self.provider, self.endpoint, self.ip)


# -- compiled rules -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Amounts:
    """How a token or budget rule counts a request: which sides, with which weights."""

    count: str = "total"
    cached_weight: float = 1.0
    reasoning_weight: float = 1.0

    def estimate(self, prompt: int, output: int) -> int:
        # Worst case: every prompt token at its highest weight, every output token likewise.
        p = prompt * max(1.0, self.cached_weight) if self.count != "output" else 0
        o = output * max(1.0, self.reasoning_weight) if self.count != "input" else 0
        return math.ceil(p + o)

    def actual(self, usage: Usage) -> int:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        reasoning = min(usage.reasoning_tokens, usage.completion_tokens)
        p = (usage.prompt_tokens - cached) + cached * self.cached_weight
        o = (usage.completion_tokens - reasoning) + reasoning * self.reasoning_weight
        if self.count == "input":
            return math.ceil(p)
        if self.count == "output":
            return math.ceil(o)
        return math.ceil(p + o)


@dataclass(frozen=True, slots=True)
class LimitRule:
    spec: LimitSpec
    window: str  # for people: `1m`, `month`, `rolling 24h`
    amounts: Amounts | None = None  # token rates and budgets
    budget: BudgetSpec | None = None

    def display(self, amount: int) -> float:
        """An amount in the unit people read: USD for dollar budgets (kept in micro-USD)."""
        return amount / 1_000_000 if self.spec.unit == "usd" else float(amount)

    @property
    def limit_display(self) -> float:
        return self.display(self.spec.limit)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    config: PolicyConfig
    index: int
    per: tuple[str, ...]
    allow_index: int | None
    limits: tuple[LimitRule, ...]
    # Plain attributes rather than properties: read several times per request.
    name: str = ""
    enforce: bool = True
    mode: str = "enforce"
    # Whether it has access rules or parameter bounds to check (most policies only limit).
    checks: bool = False
    # Its parameter bounds, those set only, each as a `Bound` (compiled once).
    bounds: tuple[tuple[str, Bound], ...] = ()
    # The kind of the verdict that says its checks passed: `access` if it has an access rule.
    check_kind: str = "params"
    # When its only checks are bounds on request parameters: their names (a request that sets
    # none of them passes every check); `None` otherwise.
    passes_without: frozenset[str] | None = None
    # What its limit rules need of the request (`_NEEDS_*` bits), and whether the native
    # admission serves them (see `tollway._native.Admitter`).
    needs: int = 0

    def partition(self, facts: RequestFacts) -> str:
        per = self.per
        if not per:
            return "*"
        if len(per) == 1:
            name = per[0]
            return f"{name}={getattr(facts, name) or '-'}"
        return ",".join(f"{a}={getattr(facts, a) or '-'}" for a in per)


# What a policy's limit rules need of the request before admission (`CompiledPolicy.needs`);
# `_NEEDS_PYTHON`: a rule the native admission does not serve (an audit or truncating budget).
_NEEDS_PROMPT, _NEEDS_OUTPUT, _NEEDS_USD, _NEEDS_PYTHON = 1, 2, 4, 8
_NONE_ALLOWED: frozenset[int] = frozenset()
# Distinct sets of matched policies whose `_Selection` is kept (past it, the cache starts over).
_SELECTIONS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class _Selection:
    """One set of matched policies, and what evaluating it needs (`PolicyEngine._select`)."""

    matched: list[int]  # the policies' indices, as the native admission takes them
    policies: tuple[CompiledPolicy, ...]
    needs: int  # the `_NEEDS_*` bits of their limit rules
    checks: tuple[CompiledPolicy, ...]  # those with access rules or parameter bounds
    shadow_checks: bool  # some of `checks` is in shadow mode
    allow: bool  # some of `checks` has an `allow` rule (the allow matcher must be asked)
    native: bool  # the native admission serves every limit rule of them


def _needs(limits: Sequence[LimitRule]) -> int:
    needs = 0
    for rule in limits:
        if rule.budget is not None and rule.budget.on_exceed != "block":
            needs |= _NEEDS_PYTHON
        if rule.amounts is None:
            continue
        needs |= _NEEDS_OUTPUT
        if rule.spec.unit == "usd":
            needs |= _NEEDS_USD | _NEEDS_PROMPT
        elif rule.amounts.count != "output":
            needs |= _NEEDS_PROMPT
    return needs


# -- compiling ------------------------------------------------------------------------------

_BOUNDED = ("max_tokens", "n", "temperature", "top_p", "prompt_tokens")


def _bounds(params: ParamsSpec | None) -> tuple[tuple[str, Bound], ...]:
    """The bounds `params` sets, in checking order; a bare number is a maximum."""
    if params is None:
        return ()
    bounds = []
    for name in _BOUNDED:
        bound = getattr(params, name)
        if bound is not None:
            bounds.append((name, bound if isinstance(bound, Bound) else Bound(max=float(bound))))
    return tuple(bounds)


def _passes_without(has_access: bool, params: ParamsSpec | None) -> frozenset[str] | None:
    """`CompiledPolicy.passes_without`: the parameters a policy bounds, when those bounds are
    all its checks (no access rule, no `stream` or `tools` rule, no prompt bound)."""
    if has_access or params is None or params.stream is False or params.tools is False:
        return None
    names = frozenset(name for name, _ in _bounds(params))
    return None if "prompt_tokens" in names else names


Condition = tuple[str, str, Any, bool]


def selector_conditions(selector: Selector, negate: bool = False) -> list[Condition]:
    """A selector as the native matcher's conditions (see `policy/config.py` for the syntax)."""
    out: list[Condition] = []
    for attribute in ("key", "team", "user", "model", "resolved_model", "provider", "endpoint", "tag"):
        value = getattr(selector, attribute)
        if value is None:
            continue
        if isinstance(value, list):
            if any(_GLOB & set(v) for v in value):
                raise PolicyError(f"`{attribute}`: a list takes exact names only; for patterns use one glob per policy")
            out.append((attribute, "one_of", value, negate))
        elif _GLOB & set(value):
            out.append((attribute, "glob", value, negate))
        else:
            out.append((attribute, "exact", value, negate))
    if selector.ip is not None:
        out.append(("ip", "cidr", selector.ip, negate))
    for name, text in selector.params.items():
        text = text.strip()
        op = next((c for c in _COMPARISONS if text.startswith(c)), None)
        if op is None:
            raise PolicyError(f"`params.{name}`: expected a comparison such as `> 4096`, got `{text}`")
        try:
            number = float(text[len(op) :])
        except ValueError:
            raise PolicyError(f"`params.{name}`: expected a number after `{op}`, got `{text}`") from None
        out.append((f"param:{name}", op, number, negate))
    if selector.not_ is not None:
        if negate:
            raise PolicyError("`not` cannot be nested inside `not`")
        out.extend(selector_conditions(selector.not_, negate=True))
    return out


def _rate(value: str | RateSpec | TokenRateSpec) -> tuple[int, float, int]:
    if isinstance(value, str):
        limit, period = parse_rate(value)
        return limit, period, limit
    period = parse_duration(value.per)
    if value.limit < 1:
        raise ShorthandError(f"`limit` must be at least 1, got {value.limit}")
    burst = value.burst if value.burst is not None else value.limit
    if burst < 1:
        raise ShorthandError(f"`burst` must be at least 1, got {burst}")
    return value.limit, period, burst


def _limits(policy: PolicyConfig, per: tuple[str, ...]) -> list[LimitRule]:
    rules: list[LimitRule] = []
    if policy.requests is not None:
        limit, period, burst = _rate(policy.requests)
        spec = LimitSpec(policy.name, "rate", limit, period, burst, unit="requests", per=per)
        rules.append(LimitRule(spec, format_window(period)))
    if policy.tokens is not None:
        limit, period, burst = _rate(policy.tokens)
        t = policy.tokens
        amounts = Amounts(t.count, t.cached_weight, t.reasoning_weight) if isinstance(t, TokenRateSpec) else Amounts()
        spec = LimitSpec(policy.name, "tokens", limit, period, burst, unit="tokens", per=per)
        rules.append(LimitRule(spec, format_window(period), amounts))
    if policy.concurrency is not None:
        if policy.concurrency < 1:
            raise ShorthandError(f"`concurrency` must be at least 1, got {policy.concurrency}")
        spec = LimitSpec(policy.name, "concurrency", policy.concurrency, unit="in-flight", per=per)
        rules.append(LimitRule(spec, "in flight"))
    if policy.budget is not None:
        b = policy.budget
        if (b.usd is None) == (b.tokens is None):
            raise ShorthandError("a budget takes exactly one of `usd` or `tokens`")
        if b.usd is not None:
            if b.usd <= 0:
                raise ShorthandError(f"`usd` must be positive, got {b.usd}")
            limit, unit = math.floor(b.usd * 1_000_000), "usd"
        else:
            assert b.tokens is not None
            if b.tokens < 1:
                raise ShorthandError(f"`tokens` must be at least 1, got {b.tokens}")
            limit, unit = b.tokens, "tokens"
        if len(b.estimate_price) != 2 or any(p < 0 for p in b.estimate_price):
            raise ShorthandError("`estimate_price` is `[input, output]` in USD per million tokens")
        offset = parse_utc_offset(b.utc_offset)
        amounts = Amounts(b.count, b.cached_weight, b.reasoning_weight)
        if b.per in ("day", "week", "month"):
            spec = LimitSpec(policy.name, "budget", limit, calendar=b.per, utc_offset_s=offset, unit=unit, per=per)
            window = b.per if offset == 0 else f"{b.per} (UTC{b.utc_offset})"
        else:
            period = parse_duration(b.per)
            spec = LimitSpec(policy.name, "budget", limit, period_s=period, unit=unit, per=per)
            window = f"rolling {format_window(period)}"
        rules.append(LimitRule(spec, window, amounts, b))
    # What each limit does when a shared store cannot decide: money fails closed by default.
    for i, rule in enumerate(rules):
        failure = policy.on_store_unavailable or ("fail_closed" if rule.spec.unit == "usd" else "fail_open")
        rules[i] = replace(rule, spec=replace(rule.spec, store_failure=failure))
    return rules


@dataclass(frozen=True)
class CompiledPolicies:
    policies: tuple[CompiledPolicy, ...]
    matcher: PolicySet
    allow_matcher: PolicySet | None


def policy_problems(configs: Sequence[PolicyConfig | None]) -> list[tuple[tuple[str | int, ...], str]]:
    """Every problem of `[[policies]]`, as (path, message) in the config loader's path form."""
    return _compile(configs)[1]


def compile_policies(configs: Sequence[PolicyConfig]) -> CompiledPolicies:
    """Compile every policy; raise `ConfigError` listing every problem."""
    compiled, problems = _compile(configs)
    if problems or compiled is None:
        raise ConfigError([f"{format_path(path)}: {message}" for path, message in problems])
    return compiled


def _compile(
    configs: Sequence[PolicyConfig | None],
) -> tuple[CompiledPolicies | None, list[tuple[tuple[str | int, ...], str]]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    selectors: list[list[Condition]] = []
    allow_selectors: list[list[Condition]] = []
    compiled: list[CompiledPolicy] = []
    names: dict[str, int] = {}
    for i, policy in enumerate(configs):
        if policy is None:
            continue
        at: tuple[str | int, ...] = ("policies", i)
        if policy.name in names:
            problems.append(
                ((*at, "name"), f"duplicate policy name `{policy.name}` (first at policies[{names[policy.name]}])")
            )
        names.setdefault(policy.name, i)
        per = (policy.per,) if isinstance(policy.per, str) else tuple(policy.per)
        for attribute in per:
            if attribute not in PARTITION_ATTRIBUTES:
                known = ", ".join(f"`{a}`" for a in PARTITION_ATTRIBUTES)
                problems.append(((*at, "per"), f"unknown attribute `{attribute}`; expected any of {known}"))
        try:
            conditions = selector_conditions(policy.match)
        except PolicyError as exc:
            problems.append(((*at, "match"), str(exc)))
            conditions = []
        allow_index = None
        if policy.allow is not None:
            try:
                allow_selectors.append(selector_conditions(policy.allow))
                allow_index = len(allow_selectors) - 1
            except PolicyError as exc:
                problems.append(((*at, "allow"), str(exc)))
        try:
            limits = _limits(policy, per)
        except ShorthandError as exc:
            problems.append((at, str(exc)))
            limits = []
        params = policy.params
        if params is not None and isinstance(params.prompt_tokens, Bound) and params.prompt_tokens.action == "clamp":
            problems.append(((*at, "params", "prompt_tokens"), 'a prompt cannot be clamped; use `action = "reject"`'))
        has_access = bool(policy.deny) or policy.allow is not None or bool(policy.require_headers)
        has_limits = any(r is not None for r in (policy.requests, policy.tokens, policy.concurrency, policy.budget))
        if not (has_limits or has_access or params is not None):
            problems.append(
                (at, f"policy `{policy.name}` has no rule: give it a limit, a budget, an access rule or `params`")
            )
        selectors.append(conditions)
        compiled.append(
            CompiledPolicy(
                policy,
                i,
                per,
                allow_index,
                tuple(limits),
                name=policy.name,
                enforce=policy.mode == "enforce",
                mode=policy.mode,
                checks=has_access or params is not None,
                bounds=_bounds(params),
                check_kind="access" if has_access else "params",
                passes_without=_passes_without(has_access, params),
                needs=_needs(limits),
            )
        )
    try:
        matcher = PolicySet(selectors)
        allow_matcher = PolicySet(allow_selectors) if allow_selectors else None
    except PolicyError as exc:
        problems.append((("policies",), str(exc)))
        return None, problems
    return CompiledPolicies(tuple(compiled), matcher, allow_matcher), problems


# -- admission ------------------------------------------------------------------------------

_KIND_CODES = {
    "rate": ("rate_limit_exceeded", "slow down, or ask for a higher request rate"),
    "tokens": ("token_rate_limit_exceeded", "send fewer or smaller requests, or lower `max_tokens`"),
    "concurrency": ("concurrency_limit_exceeded", "wait for your requests in flight to finish"),
    "budget": ("budget_exceeded", "wait for the budget to reset, or ask for a larger budget"),
}


def _human(amount: float, unit: str) -> str:
    if unit == "usd":
        return f"${amount / 1_000_000:,.6f}".rstrip("0").rstrip(".")
    if unit == "in-flight":
        return f"{int(amount):,} in flight"
    return f"{int(amount):,} {unit[:-1] if amount == 1 and unit.endswith('s') else unit}"


class Admission:
    """One request's admission: verdicts, headers, the error if denied, and what it holds."""

    __slots__ = (
        "_backend",
        "_held",
        "_native",
        "clamps",
        "denied",
        "headers",
        "output_cap",
        "verdicts",
    )

    def __init__(self, backend: StateBackend | None = None) -> None:
        self.verdicts: list[PolicyVerdict] = []
        self.headers: list[tuple[str, str]] = []
        self.denied: ApiError | None = None
        # Parameters to lower before the request goes upstream (`params` clamps, truncating budgets).
        self.clamps: dict[str, int | float] = {}
        # Output tokens a stream may produce before a truncating budget ends it.
        self.output_cap: tuple[int, str] | None = None
        self._backend = backend
        # What the request holds until it ends; a hold without an id (an audit budget) is
        # charged by debit at settlement.
        self._held: list[tuple[Held, LimitRule]] = []
        # What the native admission holds, and the clock to settle it by.
        self._native: tuple[Holds, Callable[[], float]] | None = None

    def hold(self, held: Held, rule: LimitRule) -> None:
        self._held.append((held, rule))

    def settle(self, usage: Usage, cost_micro_usd: int | None) -> None:
        """The request ended with this usage (`cost_micro_usd`: `None` when unpriced)."""
        if self._native is not None:
            holds, clock = self._native
            self._native = None
            holds.settle(
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.cached_tokens,
                usage.reasoning_tokens,
                cost_micro_usd,
                clock(),
            )
        if self._backend is None or not self._held:
            return
        items: list[tuple[Held, int | None]] = []
        for held, rule in self._held:
            if rule.spec.kind == "concurrency":
                items.append((held, None))
            elif rule.spec.unit == "usd":
                # An unpriced model is charged per budget (each has its own `unpriced` rule).
                items.append((held, cost_micro_usd if cost_micro_usd is not None else _estimated_cost(rule, usage)))
            else:
                assert rule.amounts is not None
                items.append((held, rule.amounts.actual(usage)))
        self._held.clear()
        self._backend.settle(items)

    def release(self) -> None:
        """The request ended without a model call: give back everything it reserved."""
        if self._native is not None:
            holds, clock = self._native
            self._native = None
            holds.release(clock())
        if self._backend is None or not self._held:
            return
        items: list[tuple[Held, int | None]] = [(held, None) for held, _ in self._held]
        self._held.clear()
        self._backend.settle(items)


def _estimated_cost(rule: LimitRule, usage: Usage) -> int:
    """Micro-USD of an unpriced model's usage: 0 for `unpriced = "allow"`, else `estimate_price`."""
    budget = rule.budget
    if budget is None or budget.unpriced == "allow":
        return 0
    input_price, output_price = budget.estimate_price
    return math.ceil(usage.prompt_tokens * input_price + usage.completion_tokens * output_price)


AdmitRequest = Callable[
    [tuple[str | None, ...], Sequence[str], dict[str, float], ServedModel, str, bytes],
    "Admitted | Literal[Evaluate.NEEDS_FACTS] | None",
]


class PolicyEngine:
    """Compiled policies over a state backend. Build once per configuration; evaluate per request."""

    # `evaluate` on the request path, with a backend that answers in process, in one native call
    # (`tollway._native.Admitter.admit_request`): `admit(attrs, tags, params, served, api, raw)`
    # with the request as primitives (`attrs` in `PARTITION_ATTRIBUTES` order, its `tags`, its
    # numeric `params` by name, the served model, whose counter counts the prompt of `raw` in
    # `api`'s format only if a limit needs it). Answers `None` when no policy matches, the admission
    # (an `Admitted`), or `NEEDS_FACTS` when a matched policy needs the whole request: an
    # access rule, a parameter bound the request sets, an audit or truncating budget, a dollar
    # budget on an unpriced model; the caller then `evaluate`s its `RequestFacts`. Same
    # decisions as `evaluate` (`tests/test_policy_native.py`). `None` with a backend outside
    # the process: then `evaluate_async` decides every request.
    admit: AdmitRequest | None

    def __init__(
        self,
        configs: Sequence[PolicyConfig] = (),
        limits: LimitsConfig | None = None,
        backend: StateBackend | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.compiled = compile_policies(configs)
        self.limits = limits or LimitsConfig()
        self.backend = backend if backend is not None else MemoryBackend(clock=clock)
        self.backend.prepare([rule.spec for p in self.compiled.policies for rule in p.limits])
        self.clock = clock
        self._params = self.compiled.matcher.params
        self._allow_params = self.compiled.allow_matcher.params if self.compiled.allow_matcher else []
        # Every limit rule, in the native admission's order (its denials name a rule by index).
        self._native_rules = [rule for policy in self.compiled.policies for rule in policy.limits]
        self._native_clock = self.backend.clock if isinstance(self.backend, MemoryBackend) else clock
        self._native = self._admitter()
        self.admit = self._native.admit_request if self._native is not None else None
        # What each distinct set of matched policies needs (`_select`), by the matched indices.
        self._selections: dict[tuple[int, ...], _Selection] = {}

    def _admitter(self) -> Admitter | None:
        """The native admission of the limit rules, over the memory backend's limiters."""
        backend = self.backend
        if not isinstance(backend, MemoryBackend):
            return None
        rules: list[dict[str, Any]] = []
        policies: list[dict[str, Any]] = []
        for policy in self.compiled.policies:
            ids = []
            for rule in policy.limits:
                spec = rule.spec
                limit = backend.limit(spec)
                budget = rule.budget
                ids.append(len(rules))
                rules.append(
                    {
                        "limiter": next(x for x in (limit.bucket, limit.leases, limit.budget) if x is not None),
                        "kind": spec.kind,
                        "limit": spec.limit,
                        "usd": spec.unit == "usd",
                        "count": rule.amounts.count if rule.amounts is not None else None,
                        "cached_weight": rule.amounts.cached_weight if rule.amounts is not None else 1.0,
                        "reasoning_weight": rule.amounts.reasoning_weight if rule.amounts is not None else 1.0,
                        "estimate_price": (
                            tuple(budget.estimate_price) if budget is not None and budget.unpriced != "allow" else None
                        ),
                        "window": rule.window,
                        "unit": spec.unit,
                        "limit_display": rule.limit_display,
                        "burst_note": _burst_note(spec),
                    }
                )
            per = [(name, PARTITION_ATTRIBUTES.index(name)) for name in policy.per]
            passes_without = sorted(policy.passes_without) if policy.passes_without is not None else None
            policies.append(
                {
                    "name": policy.name,
                    "mode": policy.mode,
                    "enforce": policy.enforce,
                    "per": per,
                    "rules": ids,
                    "checks": policy.checks,
                    "check_kind": policy.check_kind,
                    "passes_without": passes_without,
                    "needs": policy.needs,
                }
            )
        return Admitter(
            rules,
            policies,
            PolicyVerdict,
            matcher=self.compiled.matcher,
            needs_facts=NEEDS_FACTS,
            default_max_output_tokens=self.limits.default_max_output_tokens,
            estimate_usd=estimate_micro_usd,
            denial_error=self._denial_error,
            clock=None if self._native_clock is time.time else self._native_clock,
        )

    def _denial_error(self, policy_index: int, rule_index: int, partition: str, answer: AnyDenial) -> ApiError:
        """The error of the native admission's denial (policy and rule by index)."""
        policy = self.compiled.policies[policy_index]
        return self._limit_error(policy, self._native_rules[rule_index], answer, partition)

    def __len__(self) -> int:
        return len(self.compiled.policies)

    def _matches(self, matcher: PolicySet, params: list[str], facts: RequestFacts) -> tuple[int, ...]:
        return matcher.match_attrs(facts.attrs(), facts.tags, [facts.params.get(p) for p in params])

    def evaluate(self, facts: RequestFacts) -> Admission:
        """Evaluate with a backend that answers in process (the memory backend); a request
        served by any backend uses `evaluate_async`."""
        admission, plan = self._begin(facts)
        if plan is None:
            return admission
        backend = self.backend
        if not isinstance(backend, MemoryBackend):
            raise TypeError(f"the `{backend.name}` state backend needs `evaluate_async`")
        self._limits(plan, backend.admit(plan[0]) if plan[0] else True, facts, admission)
        return admission

    async def evaluate_async(self, facts: RequestFacts) -> Admission:
        """`evaluate`, awaiting the backend's one admission call (Redis: one round trip)."""
        admission, plan = self._begin(facts)
        if plan is None:
            return admission
        self._limits(plan, await self.backend.admit_async(plan[0]) if plan[0] else True, facts, admission)
        return admission

    def _begin(self, facts: RequestFacts) -> tuple[Admission, _Plan | None]:
        """Everything before the backend is asked: the admission so far, and the takes to ask
        for (`None` when the request is decided without them)."""
        if not self.compiled.policies:
            return Admission(), None
        attrs = facts.attrs()
        selection = self._selection(attrs, facts.tags, facts.params)
        if selection is None:
            return Admission(), None
        admission = Admission(self.backend)
        if selection.checks:
            first_denial = self._checks(selection, facts, admission)
            if first_denial is not None:
                self._not_evaluated(selection.policies, admission)
                admission.denied = first_denial
                return admission, None
        if selection.native:
            needs = selection.needs
            prompt = facts.prompt_tokens() if needs & _NEEDS_PROMPT else 0
            amounts = self._amounts(needs, prompt, facts.params.get("max_tokens"), facts.model_info)
            if amounts is not None:  # else a dollar budget on an unpriced model: the Python path
                self._admit_natively(selection, attrs, amounts, admission)
                return admission, None
        return admission, self._plan(selection.policies, facts)

    def _selection(
        self, attrs: tuple[str | None, ...], tags: Sequence[str], params: Mapping[str, float]
    ) -> _Selection | None:
        """The policies a request matches, as a `_Selection`; `None` when none does."""
        matched = self.compiled.matcher.match_attrs(attrs, tags, [params.get(p) for p in self._params])
        if not matched:
            return None
        selection = self._selections.get(matched)
        return selection if selection is not None else self._select(matched)

    def _amounts(
        self, needs: int, prompt: int, max_tokens: float | None, info: ModelInfo | None
    ) -> tuple[int, int, int] | None:
        """What the native admission reserves for limit rules needing `needs`: the prompt's
        tokens (counted by the caller only if `needs & _NEEDS_PROMPT`), the output bound, and the
        dollar estimate in micro-USD; `None` when a dollar budget meets an unpriced model (the
        Python path decides)."""
        output = self._output_bound(max_tokens, info) if needs & _NEEDS_OUTPUT else 0
        if not needs & _NEEDS_USD:
            return prompt, output, 0
        usd = estimate_micro_usd(info, prompt, output)
        return None if usd is None else (prompt, output, usd)

    def _select(self, matched: tuple[int, ...]) -> _Selection:
        """What a set of matched policies needs, worked out once per distinct set (most requests
        of a deployment match one of a few sets); the cache is bounded."""
        policies = tuple(self.compiled.policies[i] for i in matched)
        needs = 0
        for policy in policies:
            needs |= policy.needs
        checks = tuple(policy for policy in policies if policy.checks)
        native = self._native is not None and not needs & _NEEDS_PYTHON
        selection = _Selection(
            matched=list(matched),
            policies=policies,
            needs=needs,
            checks=checks,
            shadow_checks=any(not policy.enforce for policy in checks),
            allow=self.compiled.allow_matcher is not None and any(p.allow_index is not None for p in checks),
            native=native,
        )
        if len(self._selections) >= _SELECTIONS_KEPT:
            self._selections.clear()
        self._selections[matched] = selection
        return selection

    def _checks(self, selection: _Selection, facts: RequestFacts, admission: Admission) -> ApiError | None:
        """The access and parameter rules of the matched policies: their verdicts into
        `admission`, and the first enforcing refusal."""
        allowed: AbstractSet[int] = _NONE_ALLOWED
        if selection.allow:
            assert self.compiled.allow_matcher is not None
            allowed = set(self._matches(self.compiled.allow_matcher, self._allow_params, facts))
        first_denial: ApiError | None = None
        params = facts.params
        for policy in selection.checks:
            quick = policy.passes_without
            if quick is not None and quick.isdisjoint(params):
                admission.verdicts.append(_passed(policy))
                continue
            for verdict, error in self._access_and_params(policy, facts, allowed, admission):
                admission.verdicts.append(verdict)
                if error is not None and policy.enforce and first_denial is None:
                    first_denial = error
        return first_denial

    @staticmethod
    def _not_evaluated(policies: Sequence[CompiledPolicy], admission: Admission) -> None:
        for policy in policies:
            for rule in policy.limits:
                admission.verdicts.append(
                    PolicyVerdict(
                        policy=policy.name,
                        kind=rule.spec.kind,
                        verdict="not_evaluated",
                        mode=policy.config.mode,
                        detail="the request was refused by an access or parameter rule first",
                    )
                )

    def _admit_natively(
        self,
        selection: _Selection,
        attrs: tuple[str | None, ...],
        amounts: tuple[int, int, int],
        admission: Admission,
    ) -> None:
        """Admit the limit rules in one native call (`amounts`: see `_amounts`)."""
        clock = self._native_clock
        prompt, output, usd = amounts
        verdicts, holds, denial, headers, shadow = self._native.admit(  # type: ignore[union-attr]
            selection.matched, attrs, prompt, output, usd, clock()
        )
        admission.verdicts += verdicts  # after those of access and parameter rules
        if denial is not None:
            admission.denied = self._denial_error(*denial)
            return
        if holds is not None:
            admission._native = (holds, clock)
        admission.headers += headers
        if shadow or selection.shadow_checks:
            self._shadow_header(admission)

    # -- access and parameter rules ----------------------------------------------------------
    def _access_and_params(
        self, policy: CompiledPolicy, facts: RequestFacts, allowed: AbstractSet[int], admission: Admission
    ) -> list[tuple[PolicyVerdict, ApiError | None]]:
        config = policy.config
        out: list[tuple[PolicyVerdict, ApiError | None]] = []
        mode = config.mode
        if config.deny is not None and config.deny is not False:
            reason = config.deny if isinstance(config.deny, str) else "this request is not allowed"
            _refuse(policy, out, "access", reason, 403, "access_denied", "Ask the gateway's administrators for access.")
        if policy.allow_index is not None and policy.allow_index not in allowed:
            _refuse(
                policy,
                out,
                "access",
                "the request is outside what this policy allows",
                403,
                "access_denied",
                "Use a model, provider or endpoint this key is allowed, or ask for access.",
            )
        for header in config.require_headers:
            if header.lower() not in facts.headers:
                _refuse(
                    policy,
                    out,
                    "access",
                    f"header `{header}` is required",
                    403,
                    "required_header_missing",
                    f"Send the `{header}` header.",
                )
        params = config.params
        if params is not None:
            if params.stream is False and facts.stream:
                _refuse(
                    policy,
                    out,
                    "params",
                    "streaming is not allowed",
                    400,
                    "parameter_not_allowed",
                    "Set `stream` to false.",
                )
            if params.tools is False and facts.has_tools:
                _refuse(policy, out, "params", "tools are not allowed", 400, "parameter_not_allowed", "Remove `tools`.")
            for name, bound in policy.bounds:
                value = facts.prompt_tokens() if name == "prompt_tokens" else facts.params.get(name)
                if value is None:
                    continue
                too_high = bound.max is not None and value > bound.max
                too_low = bound.min is not None and value < bound.min
                if not (too_high or too_low):
                    continue
                limit = bound.max if too_high else bound.min
                assert limit is not None
                if bound.action == "clamp" and name != "prompt_tokens":
                    clamped: int | float = int(limit) if name in ("max_tokens", "n") else limit
                    if policy.enforce:
                        admission.clamps[name] = clamped
                    out.append(
                        (
                            PolicyVerdict(
                                policy=policy.name,
                                kind="params",
                                verdict="clamp" if policy.enforce else "would_clamp",
                                mode=mode,
                                detail=f"`{name}` {value:g} lowered to {clamped:g}",
                            ),
                            None,
                        )
                    )
                    continue
                side = "at most" if too_high else "at least"
                _refuse(
                    policy,
                    out,
                    "params",
                    f"`{name}` is {value:g}; this policy allows {side} {limit:g}",
                    400,
                    "parameter_out_of_bounds",
                    f"Set `{name}` to {side} {limit:g}.",
                )
        if not out:  # every check passed (a policy is checked only when it has checks)
            out.append((_passed(policy), None))
        return out

    # -- limits ------------------------------------------------------------------------------
    def _output_bound(self, requested: float | None, info: ModelInfo | None) -> int:
        """The output tokens to reserve for a request with this `max_tokens` (or none): as sent,
        within the model's maximum output; `[limits] default_max_output_tokens` when not set."""
        model_max = info.max_output_tokens if info is not None else None
        return output_bound(requested, model_max, self.limits.default_max_output_tokens)

    def _plan(self, policies: Sequence[CompiledPolicy], facts: RequestFacts) -> _Plan:
        """The takes of every limit rule of the matched policies, in order, with what each
        verdict needs. The per-request hot path when policies match: plain loops and lookups."""
        takes: list[Take] = []
        rules: list[tuple[CompiledPolicy, str, LimitRule, Take | None, str]] = []  # (.., partition, .., take, note)
        output_bound: int | None = None
        for policy in policies:
            partition = policy.partition(facts)
            enforce = policy.enforce
            for rule in policy.limits:
                spec = rule.spec
                if rule.amounts is None:  # request rates, concurrency: one each
                    one = Take(spec, partition, 1, enforce)
                    takes.append(one)
                    rules.append((policy, partition, rule, one, ""))
                    continue
                if output_bound is None:
                    output_bound = self._output_bound(facts.params.get("max_tokens"), facts.model_info)
                budget = rule.budget
                if spec.unit == "usd":
                    amount = estimate_micro_usd(facts.model_info, facts.prompt_tokens(), output_bound)
                    if amount is None:
                        assert budget is not None
                        if budget.unpriced == "allow":
                            note = 'unpriced model: not counted (`unpriced = "allow"`)'
                            rules.append((policy, partition, rule, None, note))
                            continue
                        if budget.unpriced == "block":
                            rules.append((policy, partition, rule, None, "unpriced"))
                            continue
                        input_price, output_price = budget.estimate_price
                        amount = math.ceil(facts.prompt_tokens() * input_price + output_bound * output_price)
                else:
                    needs_prompt = rule.amounts.count != "output"
                    amount = rule.amounts.estimate(facts.prompt_tokens() if needs_prompt else 0, output_bound)
                if budget is not None and budget.on_exceed == "audit":
                    # Only what is used is read; the actual usage is debited at settlement.
                    peek = Take(spec, partition, 0, enforce, peek=True)
                    takes.append(peek)
                    rules.append((policy, partition, rule, peek, "audit"))
                    continue
                # A truncating budget reserves at most what is left (the request runs within it).
                clip = budget is not None and budget.on_exceed == "truncate"
                reserve = Take(spec, partition, amount, enforce, clip=clip)
                takes.append(reserve)
                rules.append((policy, partition, rule, reserve, ""))
        return takes, rules

    def _limits(self, plan: _Plan, admitted: bool, facts: RequestFacts, admission: Admission) -> None:
        """Verdicts, headers, holds and the error, from the backend's answers to the takes."""
        rules = plan[1]
        now = self.clock()
        tightest: dict[str, tuple[int, AnyGrant, LimitRule]] = {}
        denial: tuple[PolicyVerdict, ApiError] | None = None
        unpriced_denial: tuple[PolicyVerdict, ApiError] | None = None
        verdicts = admission.verdicts
        for policy, partition, rule, take, note in rules:
            spec = rule.spec
            if note:
                if note == "unpriced":
                    verdict = _verdict(
                        policy,
                        rule,
                        partition,
                        "deny" if policy.enforce else "would_deny",
                        detail="the model has no price, and this budget blocks unpriced models",
                    )
                    verdicts.append(verdict)
                    if policy.enforce and unpriced_denial is None:
                        message = (
                            f"refused by policy `{policy.name}`: model `{facts.resolved_model}` has no price, "
                            "and this dollar budget blocks unpriced models. Add a price in [[catalog]]."
                        )
                        unpriced_denial = (verdict, ApiError(403, "permission_error", "model_unpriced", message))
                elif note == "audit":
                    assert take is not None
                    used = take.used
                    verdicts.append(
                        _verdict(
                            policy,
                            rule,
                            partition,
                            "audit" if used is not None and used >= spec.limit else "allow",
                            used=rule.display(used) if used is not None else None,
                            detail="audit mode: recorded, never blocking"
                            + ("" if used is not None else "; the state store was unavailable"),
                        )
                    )
                    admission.hold(Held(spec, partition, None), rule)
                else:
                    verdicts.append(_verdict(policy, rule, partition, "allow", detail=note))
                continue
            assert take is not None
            answer = take.answer
            degraded = _DEGRADED_DETAIL.get(take.degraded) if take.degraded is not None else None
            if isinstance(answer, AnyGrant):
                if rule.budget is not None and rule.budget.on_exceed == "truncate":
                    cap = self._output_cap(rule, take.amount, facts)
                    if cap is not None and (admission.output_cap is None or cap < admission.output_cap[0]):
                        admission.output_cap = (cap, policy.name)
                        if not facts.stream:
                            current = admission.clamps.get("max_tokens")
                            admission.clamps["max_tokens"] = min(cap, int(current)) if current else cap
                verdicts.append(
                    _verdict(
                        policy,
                        rule,
                        partition,
                        "degraded_allow" if take.degraded == "fail_open" else "allow",
                        requested=rule.display(take.amount),
                        remaining=rule.display(answer.remaining),
                        resets_at=now + answer.reset_after,
                        detail=degraded,
                    )
                )
                if admitted:
                    if spec.kind != "rate":  # request rates are final at admission (the backend's)
                        admission.hold(Held(spec, partition, answer.id), rule)
                    if policy.enforce and spec.kind in ("rate", "tokens"):
                        header_kind = "requests" if spec.kind == "rate" else "tokens"
                        best = tightest.get(header_kind)
                        if best is None or answer.remaining < best[0]:
                            tightest[header_kind] = (answer.remaining, answer, rule)
            elif isinstance(answer, AnyDenial):
                verdict = _verdict(
                    policy,
                    rule,
                    partition,
                    "deny" if policy.enforce else "would_deny",
                    used=rule.display(answer.used),
                    requested=rule.display(answer.requested),
                    retry_after_s=answer.retry_after,
                    resets_at=now + answer.retry_after if answer.retry_after is not None else None,
                    detail=degraded,
                )
                verdicts.append(verdict)
                if policy.enforce and denial is None:
                    denial = (verdict, self._limit_error(policy, rule, answer, take.partition))
            elif isinstance(answer, StoreUnavailable):
                verdict = _verdict(
                    policy, rule, partition, "degraded_deny" if policy.enforce else "would_deny", detail=degraded
                )
                verdicts.append(verdict)
                if policy.enforce and denial is None:
                    denial = (verdict, _store_unavailable_error(policy))
            else:
                verdicts.append(
                    _verdict(policy, rule, partition, "not_evaluated", detail="an earlier policy denied the request")
                )
        if unpriced_denial is not None and denial is None:
            denial = unpriced_denial
            if admitted:
                admission.release()
        if denial is not None:
            admission.denied = denial[1]
            return
        for header_kind, (_, grant, rule) in sorted(tightest.items()):
            admission.headers.extend(
                [
                    (f"x-ratelimit-limit-{header_kind}", str(rule.spec.limit)),
                    (f"x-ratelimit-remaining-{header_kind}", str(grant.remaining)),
                    (f"x-ratelimit-reset-{header_kind}", reset_text(round(grant.reset_after * 1000))),
                ]
            )
        self._shadow_header(admission)

    @staticmethod
    def _shadow_header(admission: Admission) -> None:
        shadow = {v.policy for v in admission.verdicts if v.verdict in _SHADOW_VERDICTS}
        if shadow:
            admission.headers.append(("x-tollway-shadow-deny", ", ".join(sorted(shadow))))

    def _output_cap(self, rule: LimitRule, reserved: int, facts: RequestFacts) -> int | None:
        """Output tokens a truncating budget's reservation affords after the prompt."""
        if rule.spec.unit == "tokens":
            assert rule.amounts is not None
            prompt = facts.prompt_tokens() if rule.amounts.count != "output" else 0
            return max(0, reserved - prompt)
        info = facts.model_info
        if info is None or info.output is None or info.input is None:
            return None
        prompt_cost = facts.prompt_tokens() * info.input
        return max(0, math.floor((reserved - prompt_cost) / info.output)) if info.output > 0 else None

    def _limit_error(self, policy: CompiledPolicy, rule: LimitRule, answer: AnyDenial, partition: str) -> ApiError:
        spec = rule.spec
        code, remedy = _KIND_CODES[spec.kind]
        used = _human(answer.used, spec.unit)
        limit = _human(spec.limit, spec.unit)
        if spec.kind in ("rate", "tokens") and spec.burst and spec.burst != spec.limit:
            limit += f" ({_human(spec.burst, spec.unit)} at once)"
        requested = _human(answer.requested, spec.unit)
        window = "" if spec.kind == "concurrency" else f" per {rule.window}"
        when = (
            f"; retry in {answer.retry_after:.3g} s"
            if answer.retry_after is not None
            else "; this request alone is over the limit, so waiting will not help"
        )
        scope = f" for {partition}" if partition != "*" else ""
        message = (
            f"{'budget' if spec.kind == 'budget' else 'limit'} reached: policy `{policy.name}` allows {limit}{window}"
            f"{scope}; {used} in use, this request needs {requested}{when}. Remedy: {remedy}."
        )
        headers: list[tuple[str, str]] = []
        if answer.retry_after is not None:
            headers.append(("retry-after", str(max(1, math.ceil(answer.retry_after)))))
        return ApiError(429, "rate_limit_error", code, message, headers=tuple(headers))


def _passed(policy: CompiledPolicy) -> PolicyVerdict:
    """The verdict of a policy whose access and parameter rules all passed."""
    return PolicyVerdict(policy.name, policy.check_kind, "allow", policy.mode)


def _refuse(
    policy: CompiledPolicy,
    out: list[tuple[PolicyVerdict, ApiError | None]],
    kind: str,
    detail: str,
    status: int,
    code: str,
    remedy: str,
) -> None:
    """Add an access or parameter rule's refusal to `out`: its verdict and its error."""
    verdict = PolicyVerdict(
        policy=policy.name,
        kind=kind,
        verdict="deny" if policy.enforce else "would_deny",
        mode=policy.mode,
        detail=detail,
    )
    message = f"refused by policy `{policy.name}`: {detail}. {remedy}"
    error_type = "permission_error" if status == 403 else "invalid_request_error"
    out.append((verdict, ApiError(status, error_type, code, message)))


def _burst_note(spec: LimitSpec) -> str | None:
    """A rate's burst, when it differs from its limit: a verdict's detail when it has no other."""
    return f"at most {spec.burst:,} at once" if spec.burst and spec.burst != spec.limit else None


def _verdict(
    policy: CompiledPolicy,
    rule: LimitRule,
    partition: str,
    verdict: str,
    used: float | None = None,
    requested: float | None = None,
    remaining: float | None = None,
    retry_after_s: float | None = None,
    resets_at: float | None = None,
    detail: str | None = None,
) -> PolicyVerdict:
    # Positional: a verdict is made per matching limit per request, and keywords cost more.
    spec = rule.spec
    if detail is None:
        detail = _burst_note(spec)
    return PolicyVerdict(
        policy.name,
        spec.kind,
        verdict,
        policy.mode,
        partition,
        rule.limit_display,
        rule.window,
        used,
        requested,
        remaining,
        retry_after_s,
        resets_at,
        spec.unit,
        detail,
    )


# The takes of one request and, per limit rule: (policy, partition, rule, take, note).
_Plan = tuple[list[Take], list[tuple[CompiledPolicy, str, LimitRule, Take | None, str]]]

_DEGRADED_DETAIL = {
    "fail_open": 'state store unavailable: allowed (`on_store_unavailable = "fail_open"`)',
    "fail_closed": 'state store unavailable: refused (`on_store_unavailable = "fail_closed"`)',
    "local": "state store unavailable: decided on this process's share of the limit"
    ' (`on_store_unavailable = "local"`)',
}


def _store_unavailable_error(policy: CompiledPolicy) -> ApiError:
    """A 503, never a 429: the request was refused because the limit could not be checked."""
    message = (
        f"the gateway's shared state store is unavailable, and policy `{policy.name}` refuses requests it"
        ' cannot check (`on_store_unavailable = "fail_closed"`). Retry shortly.'
    )
    return ApiError(503, "server_error", "state_store_unavailable", message, headers=(("retry-after", "1"),))
