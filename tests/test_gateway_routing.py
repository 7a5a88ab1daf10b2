"""Routing and resilience end to end: the real gateway over the fault-injecting mock upstream.

Routes (`[[routes]]`) send requests to targets addressed as `provider/model`, where the upstream
model name picks the mock's fault (`fail-429-after-1`, `fail-500-once`, `fail-503`, `reset`,
`hang`, `slow-first-token`, `cut-stream`, `stall-stream`, `malformed-chunk`, `no-done`,
`context-length`; anything else is a healthy answer). Each test checks what the caller got
(status, body, stream events in its own API), how long it took (monotonic clock: lower bounds
from the rule that applies, upper bounds generous), what the upstream saw (`/_mock/counts`),
and the usage record's attempt list (reasons, outcomes) read back through the admin API.

The main gateway never opens a circuit and has an ample retry budget, so tests do not disturb
each other; the circuit breaker and the retry budget each get a gateway of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from conftest import Server, start_gateway, start_mock_providers, stop
from gateway_support import (
    ALICE_KEY,
    SECRETS,
    USER,
    anthropic_event_names,
    attempts,
    call,
    common_tables,
    mock_counts,
    provider_table,
    record,
    reset_mock,
    sse_data,
)
from tollway.testing.mock_providers import REPLY, SLOW_SECONDS

FIRST_BYTE_S = 0.5  # [server.timeouts] first_byte and idle of the main gateway
DEADLINE_S = 2.5  # [routing] deadline_s of the main gateway
SLACK_S = 3.0  # what a loaded two-core machine may add to a bound; never a reason to fail
HEALTHY = {"oa": "gpt-4o-mini", "oa2": "gpt-4o-mini", "an": "claude-haiku-4-5", "gm": "gemini-2.5-flash"}
KIND_OF = {"oa": "openai", "an": "anthropic", "gm": "gemini", "bd": "bedrock", "az": "azure"}


def providers(url: str) -> str:
    tables = [provider_table(name, kind, url) for name, kind in KIND_OF.items()]
    tables.append(provider_table("oa2", "openai", url))
    # Longer timeouts than the server's: a slow first token is waited for here...
    patient = "[providers.timeouts]\nconnect = 1\nfirst_byte = 3\nidle = 3\ntotal = 10\n"
    tables.append(provider_table("patient", "openai", url, patient))
    # ...and here only the request's deadline cuts an attempt short.
    slowpoke = "[providers.timeouts]\nconnect = 1\nfirst_byte = 30\nidle = 30\ntotal = 60\n"
    tables.append(provider_table("slowpoke", "openai", url, slowpoke))
    return "".join(tables)


def route(name: str, *targets: str | tuple[str, float], extra: str = "") -> str:
    """A `[[routes]]` table; a target is `provider/model`, or that and a weight."""
    listed = ", ".join(
        f'{{ model = "{t[0]}", weight = {t[1]} }}' if isinstance(t, tuple) else f'{{ model = "{t}" }}' for t in targets
    )
    return f'[[routes]]\nname = "{name}"\ntargets = [{listed}]\n{extra}\n'


def gateway_text(url: str, routing: str, routes: str) -> str:
    return f"""
[server]
host = "127.0.0.1"

[server.timeouts]
connect = 1
first_byte = {FIRST_BYTE_S}
idle = {FIRST_BYTE_S}
total = 5
{common_tables()}
{routing}
{providers(url)}
{routes}
"""


MAIN_ROUTING = f"""
[routing]
max_attempts = 4
deadline_s = {DEADLINE_S}

[routing.retry]
max_retries = 3
base_delay_ms = 10
max_delay_ms = 50
honour_retry_after_up_to_s = 3

[routing.retry_budget]
min_per_second = 1000

[routing.circuit]
consecutive_failures = 1000
min_requests = 1000
"""

MAIN_ROUTES = "".join(
    [
        route("wait-same-provider", "oa/fail-429-after-1", "oa/gpt-4o-mini"),
        route("wait-too-long", "oa/fail-429", "oa/gpt-4o-mini", "an/claude-haiku-4-5"),
        route("bare-429", "oa/fail-429-bare", "an/claude-haiku-4-5"),
        route("flaky", "oa/fail-500-once", "oa2/fail-500-once"),
        route("down", "oa/fail-503", "an/fail-503", "gm/fail-503"),
        route("down-wide", "oa/fail-502", "an/fail-502", "gm/fail-502", "bd/fail-502", "az/fail-502"),
        route("down-twice", "oa/fail-529", "an/fail-529", extra="retry = { max_retries = 5 }"),
        route("reset", "oa/reset", "an/claude-haiku-4-5"),
        route("hang", "oa/hang", "an/claude-haiku-4-5"),
        route("slow", "oa/slow-first-token", "an/claude-haiku-4-5"),
        route("slow-patient", "patient/slow-first-token", "an/claude-haiku-4-5"),
        route("deadline", "slowpoke/hang", "an/claude-haiku-4-5"),
        route("malformed", "oa/malformed-chunk", "an/claude-haiku-4-5"),
        route("ctx", "oa/context-length", extra='fallback_on_context_length = "big"'),
        route("big", "an/claude-haiku-4-5"),
        route("ctx-none", "oa/context-length", "an/claude-haiku-4-5"),
        *(route(f"cut-{p}", f"{p}/cut-stream", "oa2/gpt-4o-mini") for p in KIND_OF),
        *(route(f"stall-{p}", f"{p}/stall-stream", "oa2/gpt-4o-mini") for p in KIND_OF),
        *(route(f"no-done-{p}", f"{p}/no-done", "oa2/gpt-4o-mini") for p in KIND_OF),
        *(route(f"malformed-{p}", f"{p}/malformed-chunk", "oa2/gpt-4o-mini") for p in KIND_OF),
        route("weighted", ("oa/gpt-4o-mini", 3), ("an/claude-haiku-4-5", 1), extra='strategy = "weighted"'),
    ]
)


@pytest.fixture(scope="module")
def mock() -> Iterator[Server]:
    """A mock of this module's own: its request counts and `fail-500-once` state are ours."""
    server = start_mock_providers()
    yield server
    stop(server.proc)


@pytest.fixture(scope="module")
def gw(mock: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    text = gateway_text(mock.url, MAIN_ROUTING, MAIN_ROUTES)
    server = start_gateway(text, tmp_path_factory.mktemp("gw-routing"), SECRETS)
    yield server
    stop(server.proc)


@pytest.fixture
def fresh(mock: Server) -> Server:
    reset_mock(mock)
    return mock


def timed(gw: Server, api: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes, float]:
    started = time.monotonic()
    status, headers, payload = call(gw, api, body)
    return status, headers, payload, time.monotonic() - started


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": USER}
    if stream:
        body["stream"] = True
    return body


def answer_text(api: str, payload: bytes, stream: bool) -> str:
    """The answer's text as the client's API carries it."""
    if not stream:
        parsed = json.loads(payload)
        if api == "openai":
            return str(parsed["choices"][0]["message"]["content"])
        return "".join(b["text"] for b in parsed["content"] if b["type"] == "text")
    out = []
    for data in sse_data(payload):
        if data == b"[DONE]":
            continue
        event = json.loads(data)
        if api == "openai":
            out.extend(c["delta"].get("content") or "" for c in event.get("choices", []))
        elif event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
            out.append(event["delta"]["text"])
    return "".join(out)


# -- retries, waits and fallbacks before the first byte ---------------------------------------


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_429_retry_after_is_waited_for_before_the_same_provider(api: str, gw: Server, fresh: Server) -> None:
    status, headers, payload, elapsed = timed(gw, api, chat("wait-same-provider"))
    assert status == 200, payload
    assert answer_text(api, payload, False) == REPLY
    assert headers["x-tollway-provider"] == "oa" and headers["x-tollway-model"] == "gpt-4o-mini"
    # `Retry-After: 1` from provider `oa`: its next target is not called before a second passed.
    assert elapsed >= 1.0
    assert elapsed < 1.0 + SLACK_S
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("oa", "primary", "rate_limited"), ("oa", "retry", "ok")]
    assert [a["status"] for a in rec["attempts"]] == [429, 200]
    assert rec["status"] == 200 and rec["completion_source"] == "provider"
    assert mock_counts(fresh) == {"fail-429-after-1": 1, "gpt-4o-mini": 1}


def test_429_retry_after_over_the_cap_rules_the_provider_out(gw: Server, fresh: Server) -> None:
    """`Retry-After: 7` is over `honour_retry_after_up_to_s = 3`: the same provider's other
    target is skipped, another provider serves at once."""
    status, headers, payload, elapsed = timed(gw, "openai", chat("wait-too-long"))
    assert status == 200, payload
    assert headers["x-tollway-provider"] == "an"
    assert elapsed < 7.0  # the 7 s were not waited for
    rec = record(gw, headers["x-request-id"])
    made = [a for a in attempts(rec) if a[1] != "skipped"]
    assert made == [("oa", "primary", "rate_limited"), ("an", "retry", "ok")]
    assert ("oa", "skipped", "provider_waiting") in attempts(rec)
    assert mock_counts(fresh) == {"fail-429": 1, "claude-haiku-4-5": 1}


def test_429_without_retry_after_moves_on_after_the_backoff(gw: Server, fresh: Server) -> None:
    status, headers, _, elapsed = timed(gw, "openai", chat("bare-429"))
    assert status == 200 and headers["x-tollway-provider"] == "an"
    assert elapsed < SLACK_S  # a backoff of at most `max_delay_ms` = 50 ms
    assert attempts(record(gw, headers["x-request-id"])) == [
        ("oa", "primary", "rate_limited"),
        ("an", "retry", "ok"),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_500_then_200_is_retried_to_success(stream: bool, gw: Server, fresh: Server) -> None:
    """The upstream fails the first call of `fail-500-once` and answers the next: the retry (on
    the next target, never the same one twice) gets the answer."""
    status, headers, payload = call(gw, "openai", chat("flaky", stream))
    assert status == 200, payload
    assert answer_text("openai", payload, stream) == REPLY
    if stream:
        assert payload.endswith(b"data: [DONE]\n\n")
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("oa", "primary", "server_error"), ("oa2", "retry", "ok")]
    assert [a["status"] for a in rec["attempts"]] == [500, 200]
    assert rec["status"] == 200 and rec["error_code"] is None
    assert mock_counts(fresh) == {"fail-500-once": 2}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_persistent_503_tries_each_target_once_then_502(api: str, gw: Server, fresh: Server) -> None:
    status, headers, payload = call(gw, api, chat("down"))
    assert status == 502
    body = json.loads(payload)
    if api == "openai":
        error = body["error"]
        assert error["code"] == "upstream_server_error" and error["request_id"] == headers["x-request-id"]
    else:
        assert body["type"] == "error" and body["error"]["type"] == "api_error"
        error = body["error"]
    # The last failure answers, naming its provider.
    assert "provider `gm`" in error["message"]
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [
        ("oa", "primary", "server_error"),
        ("an", "retry", "server_error"),
        ("gm", "retry", "server_error"),
    ]
    assert "no further attempt: exhausted" in rec["error"]
    assert rec["completion_source"] == "none" and rec["cost_usd"] == 0
    assert mock_counts(fresh) == {"fail-503": 3}


def test_attempts_stop_at_max_attempts(gw: Server, fresh: Server) -> None:
    status, headers, _ = call(gw, "openai", chat("down-wide"))
    assert status == 502
    rec = record(gw, headers["x-request-id"])
    assert [a[0] for a in attempts(rec)] == ["oa", "an", "gm", "bd"]  # max_attempts = 4 of 5 targets
    assert "no further attempt: max_attempts" in rec["error"]
    assert mock_counts(fresh) == {"fail-502": 4}


def test_more_retries_than_targets_never_repeats_a_target(gw: Server, fresh: Server) -> None:
    """`max_retries = 5` and `max_attempts = 4`, but two targets: two attempts, each target once."""
    status, headers, _ = call(gw, "openai", chat("down-twice"))
    assert status == 502
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("oa", "primary", "server_error"), ("an", "retry", "server_error")]
    assert mock_counts(fresh) == {"fail-529": 2}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_connection_reset_fails_over(stream: bool, gw: Server, mock: Server) -> None:
    call(gw, "openai", chat("bare-429"))  # leaves a pooled connection to provider `oa`
    reset_mock(mock)
    status, headers, payload, elapsed = timed(gw, "openai", chat("reset", stream))
    assert status == 200, payload
    assert headers["x-tollway-provider"] == "an"
    assert answer_text("openai", payload, stream) == REPLY
    assert elapsed < SLACK_S
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("oa", "primary", "unreachable"), ("an", "retry", "ok")]
    assert rec["attempts"][0]["status"] is None
    # The upstream read the request once: a request written to a connection that then fails is
    # never sent again on that target (the provider may already be generating); only a request
    # not yet written when a pooled connection turned out closed is retried on a fresh one.
    assert mock_counts(mock) == {"reset": 1, "claude-haiku-4-5": 1}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_hanging_upstream_times_out_at_first_byte_and_fails_over(stream: bool, gw: Server, fresh: Server) -> None:
    status, headers, payload, elapsed = timed(gw, "openai", chat("hang", stream))
    assert status == 200, payload
    assert answer_text("openai", payload, stream) == REPLY
    assert FIRST_BYTE_S <= elapsed < FIRST_BYTE_S + SLACK_S
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("oa", "primary", "timeout"), ("an", "retry", "ok")]
    assert rec["attempts"][0]["latency_ms"] >= FIRST_BYTE_S * 1000 * 0.99
    assert "first-byte" in rec["attempts"][0]["error"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_slow_first_token_past_the_timeout_fails_over_before_the_first_byte(
    stream: bool, gw: Server, fresh: Server
) -> None:
    """Nothing reached the client while the first token was late: the next target answers."""
    status, headers, payload, elapsed = timed(gw, "anthropic", chat("slow", stream))
    assert status == 200, payload
    assert headers["x-tollway-provider"] == "an"
    assert answer_text("anthropic", payload, stream) == REPLY
    assert FIRST_BYTE_S <= elapsed < FIRST_BYTE_S + SLACK_S
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("oa", "primary", "timeout"), ("an", "retry", "ok")]


def test_slow_first_token_within_the_timeout_is_waited_for(gw: Server, fresh: Server) -> None:
    status, headers, payload, elapsed = timed(gw, "openai", chat("slow-patient", True))
    assert status == 200, payload
    assert answer_text("openai", payload, True) == REPLY
    assert elapsed >= SLOW_SECONDS
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("patient", "primary", "ok")]
    assert rec["attempts"][0]["ttft_ms"] >= SLOW_SECONDS * 1000
    assert rec["ttft_ms"] >= SLOW_SECONDS * 1000


def test_one_deadline_cuts_an_attempt_short_and_ends_the_request(gw: Server, fresh: Server) -> None:
    """The provider would wait 30 s for a first byte; the request's deadline ends the attempt,
    and no further attempt starts after it."""
    status, headers, payload, elapsed = timed(gw, "openai", chat("deadline"))
    assert status == 504
    assert json.loads(payload)["error"]["code"] == "upstream_timeout"
    assert DEADLINE_S * 0.99 <= elapsed < DEADLINE_S + SLACK_S
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("slowpoke", "primary", "timeout")]
    assert "no further attempt: deadline" in rec["error"]
    assert mock_counts(fresh) == {"hang": 1}


def test_malformed_answer_falls_back_without_backoff(gw: Server, fresh: Server) -> None:
    status, headers, payload = call(gw, "openai", chat("malformed"))
    assert status == 200, payload
    assert attempts(record(gw, headers["x-request-id"])) == [
        ("oa", "primary", "bad_response"),
        ("an", "fallback", "ok"),
    ]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_context_length_falls_back_to_the_larger_context_route(api: str, gw: Server, fresh: Server) -> None:
    status, headers, payload = call(gw, api, chat("ctx"))
    assert status == 200, payload
    assert answer_text(api, payload, False) == REPLY
    rec = record(gw, headers["x-request-id"])
    assert attempts(rec) == [("oa", "primary", "context_length"), ("an", "context_length_fallback", "ok")]
    assert rec["attempts"][0]["status"] == 400


def test_context_length_without_a_fallback_is_the_callers_400(gw: Server, fresh: Server) -> None:
    """Another target of the same route would not help: the prompt is too long, not the target
    broken. The request ends with the provider's words, in the caller's API."""
    client = anthropic.Anthropic(base_url=gw.url, api_key=ALICE_KEY, max_retries=0, timeout=20)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="ctx-none", max_tokens=50, messages=USER)  # type: ignore[arg-type]
    client.close()
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert "maximum context length" in body["error"]["message"]
    rec = record(gw, info.value.response.headers["x-request-id"])
    assert rec["error_code"] == "context_length_exceeded"
    assert attempts(rec) == [("oa", "primary", "context_length")]
    assert mock_counts(fresh) == {"context-length": 1}


# -- after the first byte: no failover, an explicit error event ---------------------------------


def assert_error_event(api: str, payload: bytes, code: str, anthropic_type: str) -> dict[str, Any]:
    """The stream ends with the gateway's error event in the client's API, never a clean end."""
    if api == "openai":
        last = json.loads(sse_data(payload)[-1])
        assert last["error"]["code"] == code
        assert b"data: [DONE]" not in payload
        return dict(last["error"])
    names = anthropic_event_names(payload)
    assert names[-1] == "error" and "message_stop" not in names
    last = json.loads(sse_data(payload)[-1])
    assert last["type"] == "error" and last["error"]["type"] == anthropic_type
    return dict(last["error"])


def assert_broken_record(rec: dict[str, Any], provider: str, outcome: str, code: str) -> None:
    assert rec["status"] == 200 and rec["error_code"] == code
    assert attempts(rec) == [(provider, "primary", outcome)]  # the fallback target is never tried
    assert rec["attempts"][0]["ttft_ms"] is not None  # the client had bytes of this attempt
    assert rec["completion_source"] == "partial"
    assert rec["completion_tokens"] > 0


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", list(KIND_OF))
def test_stream_cut_after_the_first_byte_ends_with_an_error_event(
    provider: str, api: str, gw: Server, fresh: Server
) -> None:
    status, headers, payload = call(gw, api, chat(f"cut-{provider}", True))
    assert status == 200 and headers["x-tollway-provider"] == provider
    text = answer_text(api, payload[: payload.rfind(b"data: ")], True)
    assert text and REPLY.startswith(text) and text != REPLY  # a part of the answer, and no more
    error = assert_error_event(api, payload, "upstream_broken_stream", "api_error")
    assert f"provider `{provider}`" in error["message"]
    assert_broken_record(record(gw, headers["x-request-id"]), provider, "broken_stream", "upstream_broken_stream")
    assert mock_counts(fresh) == {"cut-stream": 1}


@pytest.mark.parametrize("provider", ["oa", "an"])
def test_sdks_raise_on_the_error_event_of_a_cut_stream(provider: str, gw: Server) -> None:
    """Both SDKs turn the gateway's error event into an exception: the caller cannot mistake
    the part it got for a whole answer."""
    oa = openai.OpenAI(base_url=gw.url + "/v1", api_key=ALICE_KEY, max_retries=0, timeout=20)
    chunks = oa.chat.completions.create(model=f"cut-{provider}", messages=USER, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError) as failed:
        list(chunks)
    oa.close()
    assert f"provider `{provider}`" in failed.value.message
    an = anthropic.Anthropic(base_url=gw.url, api_key=ALICE_KEY, max_retries=0, timeout=20)
    manager = an.messages.stream(model=f"cut-{provider}", max_tokens=100, messages=USER)  # type: ignore[arg-type]
    with pytest.raises(anthropic.APIStatusError) as broken, manager as events:
        events.until_done()
    an.close()
    assert f"provider `{provider}`" in str(broken.value)


def test_non_streamed_answer_cut_midway_fails_over(gw: Server, fresh: Server) -> None:
    """Without a stream nothing reached the client: a body cut in the middle is retried."""
    status, headers, payload = call(gw, "openai", chat("cut-an"))
    assert status == 200 and headers["x-tollway-provider"] == "oa2"
    assert answer_text("openai", payload, False) == REPLY
    assert attempts(record(gw, headers["x-request-id"])) == [("an", "primary", "broken_stream"), ("oa2", "retry", "ok")]


# The stalling and malformed streams go wrong at their third upstream event. For these pairs
# of (provider, client API) the first two carry nothing the client is sent yet (Anthropic's
# `message_start` and `ping` for an OpenAI client; Azure's content-filter event and role chunk
# for an Anthropic client), so the fault comes before the first byte and the next target answers.
BEFORE_FIRST_BYTE = {("an", "openai"), ("az", "anthropic")}


def assert_failed_over(api: str, payload: bytes, rec: dict[str, Any], provider: str, outcome: str, reason: str) -> None:
    assert answer_text(api, payload, True) == REPLY
    assert attempts(rec) == [(provider, "primary", outcome), ("oa2", reason, "ok")]
    assert rec["status"] == 200 and rec["error_code"] is None


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", list(KIND_OF))
def test_stalled_stream_ends_at_the_idle_timeout(provider: str, api: str, gw: Server, fresh: Server) -> None:
    status, headers, payload, elapsed = timed(gw, api, chat(f"stall-{provider}", True))
    assert status == 200
    assert FIRST_BYTE_S <= elapsed < FIRST_BYTE_S + SLACK_S
    rec = record(gw, headers["x-request-id"])
    assert mock_counts(fresh)["stall-stream"] == 1
    if (provider, api) in BEFORE_FIRST_BYTE:
        assert_failed_over(api, payload, rec, provider, "timeout", "retry")
        return
    error = assert_error_event(api, payload, "upstream_timeout", "timeout_error")
    assert "idle" in error["message"]
    assert rec["status"] == 200 and rec["error_code"] == "upstream_timeout"
    assert attempts(rec) == [(provider, "primary", "timeout")]
    assert rec["completion_source"] in ("partial", "estimated")


# The OpenAI and Azure adapters relay an OpenAI client's stream without parsing events that
# carry no usage (docs/providers.md): a malformed content event reaches that client as sent.
RELAYED_UNREAD = {("oa", "openai"), ("az", "openai")}


@pytest.mark.parametrize(
    ("provider", "api"), [(p, a) for p in KIND_OF for a in ("openai", "anthropic") if (p, a) not in RELAYED_UNREAD]
)
def test_malformed_stream_event(provider: str, api: str, gw: Server, fresh: Server) -> None:
    status, headers, payload = call(gw, api, chat(f"malformed-{provider}", True))
    assert status == 200
    rec = record(gw, headers["x-request-id"])
    assert mock_counts(fresh)["malformed-chunk"] == 1
    if (provider, api) in BEFORE_FIRST_BYTE:
        assert_failed_over(api, payload, rec, provider, "bad_response", "fallback")
        return
    assert_error_event(api, payload, "upstream_bad_response", "api_error")
    assert rec["error_code"] == "upstream_bad_response"
    assert attempts(rec) == [(provider, "primary", "bad_response")]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", list(KIND_OF))
def test_stream_without_its_end_marker_is_broken(provider: str, api: str, gw: Server, fresh: Server) -> None:
    """A stream that ends cleanly but without `[DONE]` / `message_stop` (or Gemini's final chunk,
    Bedrock's `messageStop`) is not presented as complete."""
    status, headers, payload = call(gw, api, chat(f"no-done-{provider}", True))
    assert status == 200
    error = assert_error_event(api, payload, "upstream_broken_stream", "api_error")
    assert f"provider `{provider}`" in error["message"]
    rec = record(gw, headers["x-request-id"])
    assert rec["error_code"] == "upstream_broken_stream"
    assert attempts(rec) == [(provider, "primary", "broken_stream")]


# -- weighted routing ---------------------------------------------------------------------------


def test_weighted_route_splits_requests_by_weight(gw: Server) -> None:
    """Weights 3:1. The router's random source cannot be seeded from the config, so the bounds
    are loose: 100 draws of p = 0.75 fall outside [50, 95] with a probability below 1e-7."""
    served: Counter[str] = Counter()
    for _ in range(100):
        status, headers, _ = call(gw, "openai", chat("weighted"))
        assert status == 200
        served[headers["x-tollway-provider"]] += 1
    assert set(served) == {"oa", "an"}
    assert 50 <= served["oa"] <= 95, served


# -- circuit breakers (a gateway of their own) ---------------------------------------------------

BREAKER_ROUTING = """
[routing]
max_attempts = 3
deadline_s = 10

[routing.retry]
base_delay_ms = 1
max_delay_ms = 5

[routing.retry_budget]
min_per_second = 1000

[routing.circuit]
consecutive_failures = 2
min_requests = 1000
open_for_s = 60
max_open_for_s = 600
"""

BREAKER_ROUTES = route("cb", "oa/fail-503", "an/claude-haiku-4-5") + route("cb-all", "oa/fail-502", "gm/fail-500")


@pytest.fixture(scope="module")
def breaker_gw(mock: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    text = gateway_text(mock.url, BREAKER_ROUTING, BREAKER_ROUTES)
    server = start_gateway(text, tmp_path_factory.mktemp("gw-breaker"), SECRETS)
    yield server
    stop(server.proc)


def test_open_circuit_skips_the_broken_target(breaker_gw: Server, fresh: Server) -> None:
    gw = breaker_gw
    for _ in range(2):  # two failures in a row open the circuit of `oa/fail-503`
        status, headers, _ = call(gw, "openai", chat("cb"))
        assert status == 200
        assert attempts(record(gw, headers["x-request-id"])) == [
            ("oa", "primary", "server_error"),
            ("an", "retry", "ok"),
        ]
    assert mock_counts(fresh) == {"fail-503": 2, "claude-haiku-4-5": 2}
    for _ in range(3):
        status, headers, _ = call(gw, "openai", chat("cb"))
        assert status == 200 and headers["x-tollway-provider"] == "an"
        # The skip is in the record, before the attempt that served the request.
        rec = record(gw, headers["x-request-id"])
        assert attempts(rec) == [("oa", "skipped", "circuit_open"), ("an", "primary", "ok")]
        assert rec["attempts"][0]["status"] is None and rec["attempts"][0]["latency_ms"] == 0
        assert "1. oa / fail-503: skipped (circuit open)" in rec["explanation"]
    # While open, the broken target got no request at all.
    assert mock_counts(fresh) == {"fail-503": 2, "claude-haiku-4-5": 5}
    # A skip is not an upstream failure: the metrics count the two real ones only.
    metrics = gw.request("GET", "/metrics")[2].decode()
    assert 'tollway_upstream_errors_total{provider="oa",kind="server_error"} 2' in metrics
    assert "circuit_open" not in metrics


def test_circuits_never_skip_every_target_of_a_route(breaker_gw: Server, fresh: Server) -> None:
    gw = breaker_gw
    for _ in range(2):  # both targets fail twice: both circuits open
        status, headers, _ = call(gw, "openai", chat("cb-all"))
        assert status == 502
        assert [a[2] for a in attempts(record(gw, headers["x-request-id"]))] == ["server_error", "server_error"]
    assert mock_counts(fresh) == {"fail-502": 2, "fail-500": 2}
    # Every circuit open: each request still makes exactly one attempt (a probe of the target
    # whose open period ends first), and gets that target's answer, not a refusal.
    probed = []
    for i in range(3):
        status, headers, payload = call(gw, "openai", chat("cb-all"))
        assert status == 502
        assert json.loads(payload)["error"]["code"] == "upstream_server_error"
        made = [a for a in record(gw, headers["x-request-id"])["attempts"] if a["reason"] != "skipped"]
        assert [(a["reason"], a["outcome"]) for a in made] == [("primary", "server_error")]
        probed.append(made[0]["model"])
        assert sum(mock_counts(fresh).values()) == 4 + i + 1
    # A failed probe doubles its target's open period, so the probes alternate.
    assert probed == ["fail-502", "fail-500", "fail-502"] or probed == ["fail-500", "fail-502", "fail-500"]


# -- the retry budget (a gateway of its own) -------------------------------------------------------

BUDGET_ROUTING = """
[routing]
deadline_s = 10

[routing.retry]
base_delay_ms = 1
max_delay_ms = 5

[routing.retry_budget]
ratio = 0.25
min_per_second = 0
window_s = 600

[routing.circuit]
consecutive_failures = 1000
min_requests = 1000
"""


@pytest.fixture(scope="module")
def budget_gw(mock: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    text = gateway_text(mock.url, BUDGET_ROUTING, route("budget", "oa/fail-503", "an/claude-haiku-4-5"))
    server = start_gateway(text, tmp_path_factory.mktemp("gw-budget"), SECRETS)
    yield server
    stop(server.proc)


def test_retry_budget_caps_retries_under_a_burst_of_failures(budget_gw: Server, fresh: Server) -> None:
    """Each request deposits a quarter of a retry and there is no reserve: of 12 concurrent
    requests whose first attempt fails, exactly 3 are retried, whatever the interleaving (the
    last failure to ask always finds the deposits of all 12)."""
    gw = budget_gw
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda _: call(gw, "openai", chat("budget")), range(12)))
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: 3, 502: 9}
    assert mock_counts(fresh) == {"fail-503": 12, "claude-haiku-4-5": 3}
    for status, headers, _ in results:
        rec = record(gw, headers["x-request-id"])
        if status == 200:
            assert attempts(rec) == [("oa", "primary", "server_error"), ("an", "retry", "ok")]
        else:
            assert attempts(rec) == [("oa", "primary", "server_error")]
            assert "no further attempt: retry_budget" in rec["error"]


# -- no loops: cyclic routes are refused before serving -----------------------------------------


def test_check_rejects_a_cyclic_fallback_naming_the_cycle(tmp_path: Path) -> None:
    config = tmp_path / "tollway.toml"
    config.write_text(
        '[[providers]]\nname = "oa"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n\n'
        + route("a", "oa/gpt-4o-mini", extra='fallback_on_context_length = "b"')
        + route("b", "oa/gpt-4o", "c")
        + route("c", "oa/gpt-4.1", extra='fallback_on_context_length = "a"')
    )
    done = subprocess.run(
        [sys.executable, "-m", "tollway.cli", "check", str(config)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done.stdout
    lines = config.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text == 'fallback_on_context_length = "a"')
    assert f"{config.name}:{line} routes[2].fallback_on_context_length: cyclic routes `a -> b -> c -> a`" in done.stderr
