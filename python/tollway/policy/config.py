"""The policy language: `[[policies]]` tables in `tollway.toml`.

A policy is a **scope** (`match`: which requests it applies to), a **partition** (`per`: whose
counter a request uses) and one or more **rules**. Written by hand, read by `tollway check`.

    [[policies]]
    name = "research-rpm"              # unique; names the policy in headers, errors, the ledger
    description = "..."                # optional, shown by `tollway explain`
    mode = "enforce"                   # or "shadow": evaluated and recorded, never blocking
    match = { team = "research", model = "gpt-4*" }   # absent: every request
    per = "key"                        # or ["team", "model"]; absent: one counter for all
    requests = "60/min"                # request rate
    tokens = "200k/min"                # token rate (prompt + output)
    concurrency = 4                    # requests in flight
    budget = { usd = 50, per = "month" }
    allow = { model = ["gpt-4o-mini", "gpt-4o"] }     # access: in scope, only these pass
    deny = "interns may not call external models"    # access: everything in scope is refused
    require_headers = ["x-project-id"]
    params = { max_tokens = { max = 4096, action = "clamp" }, n = 1, stream = true, tools = false }

Shorthands (the long form is a table with the same meaning):

- **Rates** (`requests`, `tokens`): `"N/unit"` or `"N/<count><unit>"`: `"60/min"`, `"1000/s"`,
  `"100k/1h"`, `"2M/day"`. `N` takes `k` (thousand) and `M` (million). Units: `s`, `sec`,
  `m`, `min`, `h`, `hour`, `d`, `day`. Long form: `{ limit = 60, per = "1m", burst = 10 }`;
  the burst (how many at once) defaults to the limit. Token rates also take `count` (`"total"`,
  `"input"`, `"output"`) and weights: `cached_weight` (how much a cached prompt token counts,
  default 1) and `reasoning_weight` (default 1).
- **Budgets** (`budget`): `{ usd = 50, per = "month" }` or `{ tokens = 2_000_000, per = "day" }`.
  `per`: a calendar window `"day"`, `"week"` (from Monday) or `"month"`, at `utc_offset`
  (`"+02:00"`; fixed, no daylight saving), or a rolling window as a duration (`"24h"`, `"7d"`,
  `"30m"`). `on_exceed`: `"block"` (default), `"audit"` (record only) or `"truncate"` (let the
  request run within what is left: a stream that reaches the cap is ended with an explicit
  error event; a non-streamed request has its `max_tokens` lowered to what is left). `unpriced`
  (dollar budgets, for a model with no price): `"block"` (default), `"allow"` (not counted), or
  `"estimate"` (counted at `estimate_price`, USD per million tokens `[input, output]`, default
  `[10, 30]`). Token budgets take `count` like token rates.
- **Selectors** (`match`, `allow`): attribute = value. A string is an exact name, or a glob
  when it holds `*`, `?` or `[`; a list is any of several exact names. Attributes: `key`, `team`,
  `user`, `model` (as requested), `resolved_model` (the upstream model of the chosen target),
  `provider`, `endpoint`, `tag` (the key has this tag, or any of a list), `ip` (CIDR, or a list),
  and `params` (numeric request parameters: `{ max_tokens = "> 4096" }`, operators `<`, `<=`,
  `>`, `>=`, `==`, `!=`). `not = { ... }`: none of those conditions holds. All conditions of a
  selector must hold.
- **Parameter bounds** (`params`): `max_tokens`, `n`, `prompt_tokens` (counted natively),
  `temperature`, `top_p`: a number (the maximum) or `{ max = ..., min = ..., action = "reject" |
  "clamp" }` (clamping lowers the value sent to the provider; `prompt_tokens` cannot be clamped).
  `stream` and `tools`: `false` refuses requests that stream or carry tools.
- **Partitions** (`per`): any of `key`, `team`, `user`, `model`, `resolved_model`, `provider`,
  `endpoint`, `ip`. A request without the attribute (no user) counts under `user=-`.

How policies combine: every policy whose scope matches is evaluated, in configuration order;
the request is admitted only if every enforcing rule admits it. The first denial (in order)
is the one the client is told about; the decision trail lists every verdict. Access and
parameter rules are checked before limits, so a refused request consumes no capacity.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

Mode = Literal["enforce", "shadow"]
Count = Literal["total", "input", "output"]
OnExceed = Literal["block", "audit", "truncate"]
Unpriced = Literal["block", "allow", "estimate"]
StoreFailure = Literal["fail_open", "fail_closed", "local"]
PARTITION_ATTRIBUTES = ("key", "team", "user", "model", "resolved_model", "provider", "endpoint", "ip")


class Selector(msgspec.Struct, forbid_unknown_fields=True, frozen=True, rename={"not_": "not"}):
    key: str | list[str] | None = None
    team: str | list[str] | None = None
    user: str | list[str] | None = None
    model: str | list[str] | None = None
    resolved_model: str | list[str] | None = None
    provider: str | list[str] | None = None
    endpoint: str | list[str] | None = None
    tag: str | list[str] | None = None
    ip: str | list[str] | None = None
    params: dict[str, str] = {}
    not_: Selector | None = None


class RateSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    limit: int
    per: str | float = "1m"
    burst: int | None = None


class TokenRateSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    limit: int
    per: str | float = "1m"
    burst: int | None = None
    count: Count = "total"
    cached_weight: float = 1.0
    reasoning_weight: float = 1.0


class BudgetSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    usd: float | None = None
    tokens: int | None = None
    per: str = "month"
    utc_offset: str = "+00:00"
    on_exceed: OnExceed = "block"
    unpriced: Unpriced = "block"
    estimate_price: list[float] = msgspec.field(default_factory=lambda: [10.0, 30.0])
    count: Count = "total"
    cached_weight: float = 1.0
    reasoning_weight: float = 1.0


class Bound(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max: float | None = None
    min: float | None = None
    action: Literal["reject", "clamp"] = "reject"


class ParamsSpec(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    max_tokens: float | Bound | None = None
    n: float | Bound | None = None
    prompt_tokens: float | Bound | None = None
    temperature: float | Bound | None = None
    top_p: float | Bound | None = None
    stream: bool | None = None
    tools: bool | None = None


class PolicyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    description: str = ""
    mode: Mode = "enforce"
    match: Selector = Selector()
    per: str | list[str] = []
    requests: str | RateSpec | None = None
    tokens: str | TokenRateSpec | None = None
    concurrency: int | None = None
    budget: BudgetSpec | None = None
    allow: Selector | None = None
    deny: bool | str | None = None
    require_headers: list[str] = []
    params: ParamsSpec | None = None
    # What to do when the shared state store (Redis) is unreachable; default: `fail_closed` for
    # dollar budgets, `fail_open` otherwise.
    on_store_unavailable: StoreFailure | None = None


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`[limits]`: how admission estimates what a request may consume."""

    # Output tokens reserved for a request that sets no `max_tokens` (capped by the model's
    # maximum output where the catalog knows it).
    default_max_output_tokens: int = 4096


# -- shorthand parsing -----------------------------------------------------------------------

_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600, "d": 86400,
          "day": 86400, "w": 604800, "week": 604800}  # fmt: skip
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKM]?)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$")
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):(\d{2})$")
_MULTIPLIERS = {"": 1, "k": 1000, "K": 1000, "M": 1_000_000}


class ShorthandError(ValueError):
    pass


def parse_duration(value: str | float) -> float:
    """`"1m"`, `"30s"`, `"24h"`, `"7d"` or a number of seconds -> seconds."""
    if isinstance(value, int | float):
        if value <= 0:
            raise ShorthandError(f"expected a positive duration, got {value}")
        return float(value)
    m = _DURATION_RE.match(value)
    if m is None or m.group(2) not in _UNITS:
        raise ShorthandError(f"expected a duration such as `30s`, `1m`, `24h` or `7d`, got `{value}`")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise ShorthandError(f"expected a positive duration, got `{value}`")
    return seconds


def parse_rate(value: str) -> tuple[int, float]:
    """`"60/min"`, `"100k/1h"` -> (limit, period in seconds)."""
    m = _RATE_RE.match(value)
    if m is None or m.group(4) not in _UNITS:
        raise ShorthandError(f"expected a rate such as `60/min`, `1000/s` or `100k/1h`, got `{value}`")
    limit = float(m.group(1)) * _MULTIPLIERS[m.group(2)]
    if not limit.is_integer() or limit < 1:
        raise ShorthandError(f"expected a whole number of at least 1 per window, got `{value}`")
    period = float(m.group(3) or 1) * _UNITS[m.group(4)]
    if period <= 0:
        raise ShorthandError(f"expected a positive window, got `{value}`")
    return int(limit), period


def parse_utc_offset(value: str) -> int:
    """`"+02:00"` -> seconds east of UTC."""
    m = _OFFSET_RE.match(value)
    if m is None:
        raise ShorthandError(f"expected a UTC offset such as `+02:00` or `-05:30`, got `{value}`")
    seconds = int(m.group(2)) * 3600 + int(m.group(3)) * 60
    if seconds >= 86400 or int(m.group(3)) >= 60:
        raise ShorthandError(f"expected a UTC offset under 24 hours, got `{value}`")
    return seconds if m.group(1) == "+" else -seconds


def format_window(seconds: float) -> str:
    """A window as people write it: `1m`, `30s`, `1h`, `1d`, `90s`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
