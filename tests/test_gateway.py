"""End to end: the real `tollway serve` in front of a real mock OpenAI server, driven by the
official `openai` SDK and by raw HTTP for every error path."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import openai
import pytest

from conftest import ALICE_KEY, BOB_KEY, UPSTREAM_SECRET, Server
from tollway.testing.mock_openai import REPLY

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello in five words"}]


def chat(gateway: Server, body: Any, key: str | None = ALICE_KEY, headers: dict[str, str] | None = None):
    h = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        h["authorization"] = f"Bearer {key}"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return gateway.request("POST", CHAT, raw, h)


def assert_error(status: int, headers: dict[str, str], body: bytes, want_status: int, code: str) -> dict[str, Any]:
    assert status == want_status, body
    assert headers["content-type"] == "application/json"
    request_id = headers["x-request-id"]
    assert re.fullmatch(r"req_[0-9a-f]{24}", request_id)
    error = json.loads(body)["error"]
    assert error["code"] == code, error
    assert error["request_id"] == request_id
    assert error["message"]
    assert UPSTREAM_SECRET not in body.decode()
    return error


# -- the happy paths, through the official SDK ------------------------------------------------


def test_chat_non_streaming_via_sdk(openai_client: openai.OpenAI, upstream: Server) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None and completion.usage.completion_tokens == len(REPLY.split())
    assert raw.headers["x-tollway-provider"] == "up"
    assert raw.headers["x-tollway-model"] == "gpt-mock"
    assert raw.headers["x-upstream-request-id"] == "upstream-req-1"
    assert float(raw.headers["x-tollway-overhead-ms"]) >= 0
    # The alias was resolved: upstream was asked for its own model name.
    sent = json.loads(upstream.get_json("/_mock/last")["body"])
    assert sent["model"] == "gpt-mock"


def test_chat_streaming_via_sdk_hides_injected_usage(openai_client: openai.OpenAI, upstream: Server) -> None:
    chunks = list(openai_client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    # The client did not ask for usage, so it sees no usage chunk and no usage member...
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    # ...although the gateway asked upstream for it (to measure the request).
    sent = json.loads(upstream.get_json("/_mock/last")["body"])
    assert sent["stream_options"] == {"include_usage": True}


def test_chat_streaming_raw_bytes_carry_no_usage_member(gateway: Server) -> None:
    status, headers, body = chat(gateway, {"model": "gpt-test", "messages": MESSAGES, "stream": True})
    assert status == 200
    assert headers["content-type"] == "text/event-stream"
    assert b'"usage"' not in body
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    for line in events[:-1]:
        json.loads(line[6:])  # every forwarded event is intact JSON


def test_chat_streaming_with_usage_requested(openai_client: openai.OpenAI) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(REPLY.split())
    assert all(c.usage is None for c in chunks[:-1])


def test_builtin_mock_provider(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(model="mock-gpt", messages=MESSAGES)
    assert completion.choices[0].message.content == "one two three four five six seven eight"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 8
    assert completion.usage.prompt_tokens == 4 + 5
    chunks = list(
        openai_client.chat.completions.create(
            model="mock-gpt", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four five six seven eight"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 4
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 17
    cut = openai_client.chat.completions.create(model="mock-gpt", messages=MESSAGES, max_tokens=3)
    assert cut.choices[0].message.content == "one two three"
    assert cut.choices[0].finish_reason == "length"


def test_overhead_header_excludes_the_provider_wait(openai_client: openai.OpenAI) -> None:
    started = time.monotonic()
    raw = openai_client.chat.completions.with_raw_response.create(model="mock-slow", messages=MESSAGES)
    assert time.monotonic() - started >= 1.5  # the provider took 1.5 s...
    assert 0 <= float(raw.headers["x-tollway-overhead-ms"]) < 100  # ...which is not the gateway's time


def test_models_lists_what_the_key_may_use(gateway: Server) -> None:
    alice = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ALICE_KEY, max_retries=0)
    bob = openai.OpenAI(base_url=gateway.url + "/v1", api_key=BOB_KEY, max_retries=0)
    alice_models = {m.id for m in alice.models.list()}
    assert {"gpt-test", "mock-gpt", "gpt-dead", "fail-500"} <= alice_models
    assert [m.id for m in bob.models.list()] == ["gpt-test"]
    alice.close()
    bob.close()


def test_health_and_readiness(gateway: Server) -> None:
    assert gateway.get_json("/healthz") == {"status": "ok"}
    ready = gateway.get_json("/readyz")
    assert ready["status"] == "ready" and ready["models"] >= 4


# -- auth -------------------------------------------------------------------------------------


def test_missing_key_is_401(gateway: Server) -> None:
    assert_error(*chat(gateway, {"model": "gpt-test", "messages": MESSAGES}, key=None), 401, "missing_api_key")


def test_wrong_key_is_401(gateway: Server) -> None:
    error = assert_error(
        *chat(gateway, {"model": "gpt-test", "messages": MESSAGES}, key="tw-nope"), 401, "invalid_api_key"
    )
    assert error["type"] == "authentication_error"


def test_x_api_key_header_authenticates(gateway: Server) -> None:
    status, _, body = chat(
        gateway, {"model": "mock-gpt", "messages": MESSAGES}, key=None, headers={"x-api-key": ALICE_KEY}
    )
    assert status == 200, body


def test_sdk_sees_authentication_error(gateway: Server) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="tw-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    client.close()


def test_model_not_allowed_for_key_is_403(gateway: Server) -> None:
    error = assert_error(
        *chat(gateway, {"model": "mock-gpt", "messages": MESSAGES}, key=BOB_KEY), 403, "model_not_allowed"
    )
    assert "`bob`" in error["message"] and "`mock-gpt`" in error["message"]


# -- bad input --------------------------------------------------------------------------------


def test_invalid_json_is_400(gateway: Server) -> None:
    assert_error(*chat(gateway, b'{"model": "gpt-test", "messages": ['), 400, "invalid_json")
    assert_error(*chat(gateway, b"[1, 2]"), 400, "invalid_json")
    assert_error(*chat(gateway, b""), 400, "invalid_json")


def test_missing_model_or_messages_is_400(gateway: Server) -> None:
    error = assert_error(*chat(gateway, {"messages": MESSAGES}), 400, "missing_model")
    assert error["param"] == "model"
    error = assert_error(*chat(gateway, {"model": "gpt-test"}), 400, "missing_messages")
    assert error["param"] == "messages"
    assert_error(*chat(gateway, {"model": "gpt-test", "messages": []}), 400, "missing_messages")


def test_unknown_model_is_404(gateway: Server) -> None:
    error = assert_error(*chat(gateway, {"model": "gpt-99", "messages": MESSAGES}), 404, "model_not_found")
    assert "`gpt-99`" in error["message"]


def test_body_over_limit_is_413(gateway: Server) -> None:
    big = {"model": "gpt-test", "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert_error(*chat(gateway, big), 413, "request_too_large")


def test_chunked_body_over_limit_is_413(gateway: Server) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    body = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "y" * 70_000}]}).encode()
    conn.request(
        "POST",
        CHAT,
        body=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
        headers={"authorization": f"Bearer {ALICE_KEY}", "content-type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert_error(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), 413, "request_too_large")
    conn.close()


def test_unknown_path_and_method(gateway: Server) -> None:
    status, headers, body = gateway.request("GET", "/v1/nope")
    assert_error(status, headers, body, 404, "unknown_url")
    status, headers, body = gateway.request("GET", CHAT)
    assert_error(status, headers, body, 405, "method_not_allowed")


def test_request_ids_are_unique(gateway: Server) -> None:
    ids = {gateway.request("GET", "/healthz")[1]["x-request-id"] for _ in range(20)}
    assert len(ids) == 20


# -- upstream failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("fail-500", 502, "upstream_server_error"),
        ("fail-503", 502, "upstream_server_error"),
        ("fail-401", 502, "upstream_credentials_rejected"),
        ("not-json", 502, "upstream_bad_response"),
    ],
)
def test_upstream_errors_become_502_naming_the_provider(gateway: Server, model: str, status: int, code: str) -> None:
    error = assert_error(*chat(gateway, {"model": model, "messages": MESSAGES}), status, code)
    assert "provider `up`" in error["message"]


def test_upstream_429_passes_retry_after(gateway: Server) -> None:
    status, headers, body = chat(gateway, {"model": "fail-429", "messages": MESSAGES})
    assert_error(status, headers, body, 429, "upstream_rate_limited")
    assert headers["retry-after"] == "7"


def test_upstream_400_keeps_status_and_message(gateway: Server) -> None:
    error = assert_error(*chat(gateway, {"model": "fail-400", "messages": MESSAGES}), 400, "upstream_rejected_request")
    assert "mock failure 400" in error["message"]


def test_upstream_unreachable_is_502(gateway: Server) -> None:
    error = assert_error(*chat(gateway, {"model": "gpt-dead", "messages": MESSAGES}), 502, "upstream_unreachable")
    assert "provider `dead`" in error["message"]


def test_upstream_first_byte_timeout_is_504(gateway: Server) -> None:
    started = time.monotonic()
    error = assert_error(*chat(gateway, {"model": "slow-headers", "messages": MESSAGES}), 504, "upstream_timeout")
    assert time.monotonic() - started < 5
    assert "first-byte" in error["message"]


def test_stream_request_failing_before_first_byte_gets_json_error(gateway: Server) -> None:
    status, headers, body = chat(gateway, {"model": "fail-500", "messages": MESSAGES, "stream": True})
    assert_error(status, headers, body, 502, "upstream_server_error")


def _sse_events(body: bytes) -> list[bytes]:
    return [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]


def test_stream_idle_timeout_ends_with_error_event(gateway: Server, openai_client: openai.OpenAI) -> None:
    status, _, body = chat(gateway, {"model": "stall-stream", "messages": MESSAGES, "stream": True})
    assert status == 200
    events = _sse_events(body)
    last = json.loads(events[-1])
    assert last["error"]["code"] == "upstream_timeout"
    assert "idle" in last["error"]["message"]
    assert b"[DONE]" not in body
    with pytest.raises(openai.APIError):
        list(openai_client.chat.completions.create(model="stall-stream", messages=MESSAGES, stream=True))


def test_broken_stream_ends_with_error_event(gateway: Server, openai_client: openai.OpenAI) -> None:
    status, _, body = chat(gateway, {"model": "broken-stream", "messages": MESSAGES, "stream": True})
    assert status == 200
    events = _sse_events(body)
    assert len(events) == 4  # role chunk, two content chunks, then the gateway's error event
    assert json.loads(events[-1])["error"]["code"] == "upstream_broken_stream"
    with pytest.raises(openai.APIError):
        list(openai_client.chat.completions.create(model="broken-stream", messages=MESSAGES, stream=True))


def test_client_disconnect_mid_stream_ends_upstream_request(gateway: Server, upstream: Server) -> None:
    before = upstream.get_json("/_mock/stats")
    body = json.dumps({"model": "slow-stream", "messages": MESSAGES, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST "
            + CHAT.encode()
            + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {ALICE_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 3:
            chunk = sock.recv(65536)
            assert chunk, "gateway closed the stream early"
            received += chunk
    # The upstream sees its peer (the gateway) go away long before its 5 s stream would end.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        stats = upstream.get_json("/_mock/stats")
        if stats["streams_aborted"] > before["streams_aborted"]:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"upstream stream was not ended after the client left: {stats}")
    assert stats["streams_completed"] == before["streams_completed"]


# -- what crosses the gateway -----------------------------------------------------------------


def test_headers_forwarded_upstream_are_clean(gateway: Server, upstream: Server) -> None:
    status, _, body = chat(
        gateway,
        {"model": "gpt-test", "messages": MESSAGES},
        headers={
            "connection": "keep-alive, x-drop-me",
            "x-drop-me": "1",
            "x-keep-me": "2",
            "x-api-key": "client-key-should-not-travel",
            "proxy-authorization": "Basic abc",
            "openai-organization": "org-1",
        },
    )
    assert status == 200, body
    seen = {k.lower(): v for k, v in upstream.get_json("/_mock/last")["headers"].items()}
    assert seen["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert ALICE_KEY not in json.dumps(seen)
    for dropped in ("x-drop-me", "x-api-key", "proxy-authorization"):
        assert dropped not in seen
    assert seen["x-keep-me"] == "2"
    assert seen["openai-organization"] == "org-1"
    assert seen.get("connection", "keep-alive").lower() == "keep-alive"
