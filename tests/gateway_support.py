"""Helpers for the end-to-end gateway tests (`test_gateway_providers.py`, `test_gateway_routing.py`):
one `[[providers]]` table per provider kind pointing at the multi-provider mock, raw HTTP calls
in either client API, the usage record from the admin API, and parsing of streamed bodies."""

from __future__ import annotations

import json
import time
from typing import Any

from conftest import ALICE_KEY, Server, key_hash
from providers_support import PROVIDER_TABLES, SECRETS

ADMIN_KEY = "tw-admin-gateway-tests-key"
KINDS = ("openai", "anthropic", "gemini", "bedrock", "azure")
USER = [{"role": "user", "content": "Say hello to the tollway tests"}]
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"

__all__ = ["ALICE_KEY", "SECRETS"]


def provider_table(name: str, kind: str, url: str, extra: str = "") -> str:
    """A `[[providers]]` table of `kind` named `name`, with the mock's test credentials."""
    return f'[[providers]]\nname = "{name}"\n{PROVIDER_TABLES[kind].format(url=url)}\n{extra}\n'


def common_tables(ledger_dir_name: str = "usage.sqlite3") -> str:
    """The admin key, a ledger flushed often, and the caller's key."""
    return f"""
[admin]
key_hash = "{key_hash(ADMIN_KEY)}"

[ledger]
path = "{ledger_dir_name}"
flush_interval_ms = 20

[logging]
access_log = false

[[keys]]
name = "alice"
hash = "{key_hash(ALICE_KEY)}"
"""


def call(
    gw: Server, api: str, body: dict[str, Any], key: str = ALICE_KEY, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One raw request in the OpenAI (`/v1/chat/completions`) or Anthropic (`/v1/messages`) API."""
    h = {"content-type": "application/json", "authorization": f"Bearer {key}", **(headers or {})}
    if api == "anthropic":
        h["anthropic-version"] = "2023-06-01"
        body = {"max_tokens": 100, **body}
    return gw.request("POST", CHAT if api == "openai" else MESSAGES, json.dumps(body).encode(), h)


def record(gw: Server, request_id: str, deadline_s: float = 10.0) -> dict[str, Any]:
    """The usage record of a request, from `GET /_tollway/requests/{id}`; polled with a deadline,
    since a request's record is handed to the ledger as the response ends."""
    deadline = time.monotonic() + deadline_s
    while True:
        status, _, body = gw.request("GET", f"/_tollway/requests/{request_id}", headers={"x-api-key": ADMIN_KEY})
        if status == 200:
            return json.loads(body)  # type: ignore[no-any-return]
        assert status == 404, body
        if time.monotonic() > deadline:
            raise AssertionError(f"no usage record for {request_id} within {deadline_s}s")
        time.sleep(0.02)


def mock_counts(mock: Server) -> dict[str, int]:
    return mock.get_json("/_mock/counts")


def reset_mock(mock: Server) -> None:
    status, _, body = mock.request("POST", "/_mock/reset")
    assert status == 200, body


def sse_data(body: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order."""
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def anthropic_event_names(body: bytes) -> list[str]:
    return [line[7:].decode() for line in body.split(b"\n") if line.startswith(b"event: ")]


def attempts(rec: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(provider, reason, outcome) of each attempt of a record."""
    return [(a["provider"], a["reason"], a["outcome"]) for a in rec["attempts"]]
