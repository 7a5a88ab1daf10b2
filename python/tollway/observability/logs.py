"""Structured access logs: one JSON line per request, to stderr, with the request id.

The line is built from the usage record, which holds no secret by construction (virtual keys
appear by name, provider keys never). Lines are written in batches, one `write` per event-loop
turn, so a busy worker costs one system call per batch rather than per request.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson

from tollway.usage.record import UsageRecord

_FIELDS = (
    "request_id",
    "endpoint",
    "api",
    "key",
    "team",
    "user",
    "client_ip",
    "requested_model",
    "provider",
    "upstream_model",
    "stream",
    "status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "completion_source",
    "cost_usd",
    "cost_source",
    "latency_ms",
    "ttft_ms",
    "overhead_ms",
    "client_disconnected",
)


def access_line(record: UsageRecord) -> bytes:
    entry: dict[str, Any] = {"ts": round(record.finished_at, 6), "type": "access"}
    for name in _FIELDS:
        value = getattr(record, name)
        if value is not None and value != "" and value is not False:
            entry[name] = value
    entry["attempts"] = len(record.attempts)
    denied = [v.policy for v in record.decisions if v.verdict == "deny"]
    if denied:
        entry["denied_by"] = denied
    shadow = [v.policy for v in record.decisions if v.verdict == "would_deny"]
    if shadow:
        entry["would_deny"] = shadow
    return orjson.dumps(entry) + b"\n"


class AccessLog:
    """Batches access lines and writes them to a file descriptor (stderr by default)."""

    def __init__(self, fd: int | None = None) -> None:
        self._fd = fd if fd is not None else sys.stderr.fileno()
        self._pending: list[bytes] = []
        self._scheduled = False

    def write(self, record: UsageRecord) -> None:
        self._pending.append(access_line(record))
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

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
