"""The usage record: one per request the gateway received on an API endpoint, whatever happened.

A record answers "where did my tokens go?" (who, which model, tokens by type, cost) and "what
happened to this request?" (every attempt, the decision trail, status, timings). It is built
by the request pipeline, handed to the ledger (a bounded queue drained by a background writer),
and read back by `tollway usage`, `tollway explain` and the admin API.

Times are seconds since the Unix epoch (float). Costs are USD (float) with their provenance;
budgets charge integer micro-USD computed from the same prices. Token counts carry their
source: `provider` (reported upstream), `counted` (counted by tollway from what passed
through), `partial` (counted from what was delivered before the stream broke or the client
left), `estimated` (tollway's estimate; nothing was delivered to count) or `none` (no model
call was made: rejected before any attempt).
"""

from __future__ import annotations

from typing import Literal

import msgspec

TokenSource = Literal["provider", "counted", "partial", "estimated", "none"]
CostSource = Literal["catalog", "config", "unpriced", "none"]


class Attempt(msgspec.Struct, forbid_unknown_fields=True):
    """One upstream attempt: which target, how it ended, how long it took."""

    provider: str
    model: str  # the upstream model name sent to the provider
    status: int | None = None  # the provider's HTTP status, if one arrived
    # `ok`, or the failure kind (`unreachable`, `timeout`, `server_error`, `rate_limited`,
    # `credentials`, `client_error`, `bad_response`, `broken_stream`, `client_disconnected`,
    # `circuit_open`, ...).
    outcome: str = "ok"
    error: str | None = None  # a one-line reason, never a secret
    latency_ms: float = 0.0
    ttft_ms: float | None = None  # time to first token (streams)
    # Why this target was tried: `primary`, `retry`, `fallback`, `context_length_fallback`; or
    # `skipped` for a target the router passed over without calling it (outcome `circuit_open`
    # or `provider_waiting`).
    reason: str = "primary"


class PolicyVerdict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """What one matched policy decided, with the numbers that explain it.

    `gc=False`: its fields are strings and numbers, so it can be in no reference cycle, and
    the collector need not know of it; made several times per request, it is a quarter
    cheaper to make and free without (msgspec's "Disabling garbage collection")."""

    policy: str
    kind: str  # `rate`, `tokens`, `concurrency`, `budget`, `access`, `params`
    # `allow`, `deny`, `would_deny` (shadow mode), `audit` (over a cap in audit mode),
    # `clamp` / `would_clamp` (a parameter was, or would be, lowered), `truncate` (a stream was
    # ended at a budget's cap), `not_evaluated` (an earlier rule refused the request),
    # `degraded_allow`, `degraded_deny` (the state store was unavailable).
    verdict: str
    mode: str = "enforce"  # `enforce` or `shadow`
    partition: str | None = None  # the partition key the numbers are for, e.g. `team=research`
    limit: float | None = None
    window: str | None = None  # human form: `1m`, `day`, `rolling 1h`
    used: float | None = None
    requested: float | None = None
    remaining: float | None = None
    retry_after_s: float | None = None
    resets_at: float | None = None  # epoch seconds
    unit: str | None = None  # `requests`, `tokens`, `usd`, `in-flight`
    detail: str | None = None  # for access and parameter rules: what matched and why


class UsageRecord(msgspec.Struct, forbid_unknown_fields=True):
    request_id: str
    received_at: float
    finished_at: float = 0.0
    first_byte_at: float | None = None  # first byte of the response sent to the client
    endpoint: str = ""  # e.g. `/v1/chat/completions`
    api: str = "openai"  # the client's API format: `openai` or `anthropic`
    # Who called.
    key: str | None = None  # the virtual key's name (never the key)
    team: str | None = None
    user: str | None = None
    tags: list[str] = []
    client_ip: str | None = None
    # What was asked and what served it.
    requested_model: str | None = None
    # Numeric request parameters policies look at (`max_tokens`, `n`, `temperature`, `top_p`),
    # kept so `tollway policy replay` can re-evaluate the request.
    params: dict[str, float] = {}
    provider: str | None = None
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0  # the HTTP status the client got (200 for a stream that started)
    error_code: str | None = None  # tollway's error code when the request failed
    error: str | None = None
    # Tokens (see `tollway.usage.Usage` for what each includes).
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_source: TokenSource = "none"
    completion_source: TokenSource = "none"
    # Cost.
    cost_usd: float = 0.0
    cost_source: CostSource = "none"
    # Timings.
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    overhead_ms: float | None = None  # the gateway's own time, provider waits excluded
    client_disconnected: bool = False
    attempts: list[Attempt] = []
    decisions: list[PolicyVerdict] = []

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
