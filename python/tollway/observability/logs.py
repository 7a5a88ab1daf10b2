"""Structured access logs: one JSON line per request, to stderr, with the request id.

The line is built from the usage record, which holds no secret by construction (virtual keys
appear by name, provider keys never). Lines are written in batches (every 50 ms, or 256
lines), so a busy worker costs one system call per batch rather than per request.
"""

from __future__ import annotations

import asyncio
import os
import sys

import msgspec

from tollway.usage.record import UsageRecord


class _Line(msgspec.Struct):
    """One access line; `UNSET` fields are left out of it. Built positionally and encoded by
    msgspec: 1.2 us per line in process, against 2.8 for the same dict through orjson with the
    time rounded by `round()` (0.5 us of those)."""

    ts: float
    type: str
    request_id: str
    endpoint: str
    api: str
    key: str | None
    team: str | None
    user: str | None
    client_ip: str | None
    model: str | None
    provider: str | None
    upstream_model: str | None
    stream: bool
    status: int
    error_code: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    completion_source: str
    cost_usd: float
    cost_source: str
    latency_ms: float
    ttft_ms: float | None
    overhead_ms: float | None
    client_disconnected: bool
    attempts: int
    denied_by: list[str] | msgspec.UnsetType | None = msgspec.UNSET
    would_deny: list[str] | msgspec.UnsetType | None = msgspec.UNSET


_encode = msgspec.json.Encoder().encode


def access_line(record: UsageRecord) -> bytes:
    """The JSON line for one request: a fixed set of fields (absent ones are `null`), and the
    policies that denied it or would have, when any policy matched."""
    r = record
    attempts = len(r.attempts)
    for a in r.attempts:
        if a.reason == "skipped":
            attempts -= 1
    line = _Line(
        int(r.finished_at * 1e6) / 1e6,  # microseconds (`round(t, 6)` costs 0.5 us)
        "access",
        r.request_id,
        r.endpoint,
        r.api,
        r.key,
        r.team,
        r.user,
        r.client_ip,
        r.requested_model,
        r.provider,
        r.upstream_model,
        r.stream,
        r.status,
        r.error_code,
        r.prompt_tokens,
        r.completion_tokens,
        r.cached_tokens,
        r.reasoning_tokens,
        r.completion_source,
        r.cost_usd,
        r.cost_source,
        r.latency_ms,
        r.ttft_ms,
        r.overhead_ms,
        r.client_disconnected,
        attempts,
    )
    if r.decisions:
        line.denied_by = [v.policy for v in r.decisions if v.verdict == "deny"] or None
        line.would_deny = [v.policy for v in r.decisions if v.verdict == "would_deny"] or None
    return _encode(line) + b"\n"


class AccessLog:
    """Batches access lines and writes them to a file descriptor (stderr by default): at most
    every `interval_s` seconds, or at once when `max_pending` lines are waiting. A system call
    per request would cost more than the rest of the logging."""

    def __init__(self, fd: int | None = None, interval_s: float = 0.05, max_pending: int = 256) -> None:
        self._fd = fd if fd is not None else sys.stderr.fileno()
        self._pending: list[bytes] = []
        self._scheduled = False
        self._interval = interval_s
        self._max = max_pending

    def write(self, record: UsageRecord) -> None:
        pending = self._pending
        pending.append(access_line(record))
        if len(pending) >= self._max:
            self.flush()
            return
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_later(self._interval, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:
            pass  # a closed stderr must not fail requests
