"""A usage record in plain words: what `tollway explain <request-id>` prints.

It answers "what happened to this request?" in the order things happened: who called, what was
asked, which policies matched and what each decided (with its numbers), which targets were
tried and why each failed, what was served, and what it cost.
"""

from __future__ import annotations

import datetime as dt

from tollway.usage.record import PolicyVerdict, UsageRecord

_SOURCES = {
    "provider": "as reported by the provider",
    "counted": "counted by tollway",
    "partial": "counted by tollway from what was delivered before the answer was cut",
    "estimated": "estimated by tollway",
    "none": "none: no answer was produced",
}


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _num(value: float | None) -> str:
    if value is None:
        return "?"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def _amount(value: float | None, unit: str | None) -> str:
    if unit == "usd":
        return f"${value:,.6f}".rstrip("0").rstrip(".") if value is not None else "$?"
    if not unit:
        return _num(value)
    if unit == "in-flight":
        return f"{_num(value)} in flight"
    # `1 request`, `2 requests`.
    return f"{_num(value)} {unit[:-1] if value == 1 and unit.endswith('s') else unit}"


def verdict_line(v: PolicyVerdict) -> str:
    """One policy's decision with its numbers, e.g. `team-tpm (tokens, per team=research):
    DENIED: 98,000 tokens in use of 100,000 tokens per 1m, 5,000 tokens requested; retry in 12.5 s`."""
    scope = f", per {v.partition}" if v.partition and v.partition != "*" else ""
    mode = " [shadow]" if v.mode == "shadow" else ""
    words = {
        "allow": "allowed",
        "deny": "DENIED",
        "would_deny": "would have denied (shadow mode: not enforced)",
        "audit": "over its cap, recorded only (audit)",
        "clamp": "clamped the request",
        "would_clamp": "would have clamped the request (shadow mode)",
        "truncate": "cut the answer at its cap",
        "not_evaluated": "not evaluated (an earlier rule refused the request)",
        "degraded_allow": "allowed without its shared state (store unavailable)",
        "degraded_deny": "DENIED: its shared state is unavailable (fail closed)",
    }
    text = f"{v.policy} ({v.kind}{scope}){mode}: {words.get(v.verdict, v.verdict)}"
    numbers = []
    limit = None
    if v.limit is not None:
        limit = _amount(v.limit, v.unit) + (f" per {v.window}" if v.window and v.unit != "in-flight" else "")
    if v.verdict != "not_evaluated":
        if v.used is not None:
            numbers.append(f"{_amount(v.used, v.unit)} in use")
        if v.requested is not None:
            numbers.append(f"{_amount(v.requested, v.unit)} requested")
        if v.remaining is not None and v.verdict == "allow":
            numbers.append(f"{_amount(v.remaining, v.unit)} left")
    if limit is not None:
        numbers.append(f"limit {limit}")
    if v.retry_after_s is not None and v.verdict in ("deny", "would_deny", "degraded_deny"):
        numbers.append(f"retry in {v.retry_after_s:.3g} s")
    if v.resets_at is not None and v.verdict != "not_evaluated":
        numbers.append(f"resets {_when(v.resets_at)}")
    if numbers:
        text += ": " + ", ".join(numbers)
    if v.detail and v.verdict != "not_evaluated":
        text += f" ({v.detail})"
    return text


def explain(record: UsageRecord) -> str:
    r = record
    lines = [f"Request {r.request_id}, received {_when(r.received_at)} on {r.endpoint} ({r.api} API)."]
    # Who.
    if r.key is None:
        lines.append("Caller: not identified (no valid virtual key).")
    else:
        who = f"Caller: key `{r.key}`"
        if r.team:
            who += f", team `{r.team}`"
        if r.user:
            who += f", user `{r.user}`"
        if r.tags:
            who += ", tags " + ", ".join(f"`{t}`" for t in r.tags)
        if r.client_ip:
            who += f", from {r.client_ip}"
        lines.append(who + ".")
    # What.
    if r.requested_model:
        lines.append(f"Asked for model `{r.requested_model}`{', streamed' if r.stream else ''}.")
    # Policies.
    if r.decisions:
        lines.append("Policies that matched:")
        lines.extend(f"  - {verdict_line(v)}" for v in r.decisions)
        denied = [v for v in r.decisions if v.verdict in ("deny", "degraded_deny")]
        if denied:
            lines.append(f"Blocked by policy `{denied[0].policy}`.")
    elif r.key is not None and r.requested_model:
        lines.append("No policy matched.")
    # Attempts.
    if r.attempts:
        lines.append("Attempts:")
        for i, a in enumerate(r.attempts, 1):
            if a.reason == "skipped":
                lines.append(f"  {i}. {a.provider} / {a.model}: skipped ({a.outcome.replace('_', ' ')})")
                continue
            outcome = "succeeded" if a.outcome == "ok" else a.outcome.replace("_", " ")
            status = f", HTTP {a.status}" if a.status else ""
            ttft = f", first token after {a.ttft_ms:.1f} ms" if a.ttft_ms is not None else ""
            line = f"  {i}. {a.provider} / {a.model} ({a.reason}): {outcome}{status} after {a.latency_ms:.1f} ms{ttft}"
            if a.error:
                line += f": {a.error}"
            lines.append(line)
    # Outcome.
    if r.status == 200 and r.error_code is None and not r.client_disconnected:
        lines.append(f"Served by {r.provider} / {r.upstream_model}: HTTP 200 in {r.latency_ms:.1f} ms.")
    elif r.client_disconnected:
        lines.append(f"The client disconnected after {r.latency_ms:.1f} ms; the upstream request was ended.")
    else:
        lines.append(f"Answered HTTP {r.status} ({r.error_code or 'error'}) after {r.latency_ms:.1f} ms.")
        if r.error:
            lines.append(f"Reason: {r.error}")
    if r.ttft_ms is not None:
        lines.append(f"Time to first token: {r.ttft_ms:.1f} ms.")
    if r.overhead_ms is not None:
        lines.append(f"Gateway overhead: {r.overhead_ms:.3f} ms.")
    # Usage and cost.
    if r.completion_source != "none" or r.prompt_source != "none":
        parts = [f"{r.prompt_tokens:,} prompt ({_SOURCES.get(r.prompt_source, r.prompt_source)})"]
        if r.cached_tokens:
            parts.append(f"{r.cached_tokens:,} of them cached")
        if r.cache_write_tokens:
            parts.append(f"{r.cache_write_tokens:,} written to cache")
        parts.append(f"{r.completion_tokens:,} completion ({_SOURCES.get(r.completion_source, r.completion_source)})")
        if r.reasoning_tokens:
            parts.append(f"{r.reasoning_tokens:,} of them reasoning")
        lines.append("Tokens: " + ", ".join(parts) + ".")
        if r.cost_source == "unpriced":
            lines.append(f"Cost: unpriced (no price for `{r.upstream_model}` in the catalog or config).")
        else:
            lines.append(f"Cost: ${r.cost_usd:.6f} (prices from the {r.cost_source}).")
    else:
        why = "no answer was produced" if r.attempts else "no model call was made"
        lines.append(f"Tokens: none recorded ({why}).")
    return "\n".join(lines)
