"""Structured access logs: one JSON line per request, to stderr, with the request id.

The line is built from the usage record, which holds no secret by construction (virtual keys
appear by name, provider keys never). Lines are written in batches (every 50 ms, or 256
lines), so a busy worker costs one system call per batch rather than per request.
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from tollway.usage.record import UsageRecord


def access_line(record: UsageRecord) -> bytes:
    """The JSON line for one request: a fixed set of fields (absent ones are `null`)."""
    r = record
    entry = {
        "ts": round(r.finished_at, 6),
        "type": "access",
        "request_id": r.request_id,
        "endpoint": r.endpoint,
        "api": r.api,
        "key": r.key,
        "team": r.team,
        "user": r.user,
        "client_ip": r.client_ip,
        "model": r.requested_model,
        "provider": r.provider,
        "upstream_model": r.upstream_model,
        "stream": r.stream,
        "status": r.status,
        "error_code": r.error_code,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached_tokens": r.cached_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "completion_source": r.completion_source,
        "cost_usd": r.cost_usd,
        "cost_source": r.cost_source,
        "latency_ms": r.latency_ms,
        "ttft_ms": r.ttft_ms,
        "overhead_ms": r.overhead_ms,
        "client_disconnected": r.client_disconnected,
        "attempts": sum(1 for a in r.attempts if a.reason != "skipped"),
    }
    if r.decisions:
        entry["denied_by"] = [v.policy for v in r.decisions if v.verdict == "deny"] or None
        entry["would_deny"] = [v.policy for v in r.decisions if v.verdict == "would_deny"] or None
    return orjson.dumps(entry) + b"\n"


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
