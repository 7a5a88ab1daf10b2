"""Usage accounting end to end: one record per request, on every path, priced, queryable,
explainable, exported as metrics and traces, and free of secrets.

A gateway with a ledger, an admin key and tracing runs in front of the mock OpenAI upstream;
requests go through the official SDK and raw HTTP; records are read back through the admin API
and the `tollway usage` / `tollway explain` commands.
"""

from __future__ import annotations

import http.server
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ALICE_KEY, BOB_KEY, Server, gateway_config, key_hash, start_gateway, stop
from tollway._native import TokenCounter
from tollway.testing.mock_openai import REPLY

ADMIN_KEY = "tw-admin-usage-tests-key"
CANARY_PROVIDER_KEY = "sk-canary-provider-0f9e8d7c6b5a"
MESSAGES = [{"role": "user", "content": "Say hello in five words"}]


class OtlpCollector(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: decodes each export with OpenTelemetry's own protobufs."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    for resource_spans in request.resource_spans:
                        for scope_spans in resource_spans.scope_spans:
                            collector.spans.extend(scope_spans.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def span_for(self, request_id: str, deadline_s: float = 15.0) -> Any:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            with self.lock:
                for span in self.spans:
                    attrs = {a.key: a.value for a in span.attributes}
                    if "tollway.request_id" in attrs and attrs["tollway.request_id"].string_value == request_id:
                        return span
            time.sleep(0.05)
        raise AssertionError(f"no span for {request_id} within {deadline_s}s")


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    server = OtlpCollector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def usage_config(upstream_port: int, collector_port: int) -> str:
    return (
        gateway_config(upstream_port)
        + f"""
[[models]]
name = "gpt-4o-mini"
provider = "up"

[[models]]
name = "counted"
provider = "up"
upstream = "no-usage"
tokenizer = "o200k_base"

[[models]]
name = "uncounted"
provider = "up"
upstream = "no-usage"

[[models]]
name = "gpt-slow"
provider = "up"
upstream = "slow-stream"

[[models]]
name = "gpt-canary"
provider = "canary"
upstream = "gpt-4o-mini"

[[providers]]
name = "canary"
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = {{ env = "CANARY_KEY" }}

[admin]
key_hash = "{key_hash(ADMIN_KEY)}"

[ledger]
path = "usage.sqlite3"
flush_interval_ms = 50

[tracing]
otlp_endpoint = "http://127.0.0.1:{collector_port}/v1/traces"
"""
    )


@pytest.fixture(scope="module")
def usage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("usage")


@pytest.fixture(scope="module")
def gw(upstream: Server, usage_dir: Path, collector: OtlpCollector) -> Iterator[Server]:
    config = usage_config(upstream.port, collector.server_address[1])
    (usage_dir / "tollway.toml").write_text(config)
    server = start_gateway(config, usage_dir, {"TEST_UPSTREAM_KEY": "sk-up", "CANARY_KEY": CANARY_PROVIDER_KEY})
    yield server
    server.output.append(stop(server.proc))


def chat(gw: Server, body: dict[str, Any], key: str | None = ALICE_KEY) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return gw.request("POST", "/v1/chat/completions", json.dumps(body).encode(), headers)


def admin_get(gw: Server, path: str) -> tuple[int, Any]:
    status, _, body = gw.request("GET", path, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    return status, json.loads(body)


def record(gw: Server, request_id: str) -> dict[str, Any]:
    status, body = admin_get(gw, f"/_tollway/requests/{request_id}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def o200k(text: str) -> int:
    return TokenCounter("o200k_base").count(text)


# -- one record per request, on every path ---------------------------------------------------


def test_success_record_has_every_field(gw: Server) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=ALICE_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    completion = raw.parse()
    rec = record(gw, raw.headers["x-request-id"])
    assert rec["key"] == "alice" and rec["team"] == "research"
    assert rec["endpoint"] == "/v1/chat/completions" and rec["api"] == "openai"
    assert (rec["requested_model"], rec["provider"], rec["upstream_model"]) == ("gpt-4o-mini", "up", "gpt-4o-mini")
    assert rec["status"] == 200 and rec.get("stream", False) is False
    assert completion.usage is not None
    assert rec["prompt_tokens"] == completion.usage.prompt_tokens
    assert rec["completion_tokens"] == completion.usage.completion_tokens
    assert rec["prompt_source"] == rec["completion_source"] == "provider"
    # gpt-4o-mini: $0.15 / $0.60 per million tokens (the shipped catalog).
    expected = (completion.usage.prompt_tokens * 0.15 + completion.usage.completion_tokens * 0.60) / 1e6
    assert rec["cost_usd"] == pytest.approx(expected) and rec["cost_source"] == "catalog"
    assert rec["latency_ms"] > 0 and rec["overhead_ms"] >= 0
    assert rec["received_at"] <= rec["finished_at"]
    assert [(a["provider"], a["outcome"], a["reason"], a["status"]) for a in rec["attempts"]] == [
        ("up", "ok", "primary", 200)
    ]
    assert "Served by up / gpt-4o-mini: HTTP 200" in rec["explanation"]


def test_upstream_error_record(gw: Server) -> None:
    status, headers, _ = chat(gw, {"model": "fail-500", "messages": MESSAGES})
    assert status == 502
    rec = record(gw, headers["x-request-id"])
    assert rec["status"] == 502 and rec["error_code"] == "upstream_server_error"
    # A 500 is retryable, but this route has one target: tried once, never twice.
    assert [(a["outcome"], a["status"]) for a in rec["attempts"]] == [("server_error", 500)]
    assert rec["completion_source"] == "none" and rec["completion_tokens"] == 0
    # Nothing was answered: no usage is recorded or charged.
    assert (rec["prompt_source"], rec["prompt_tokens"], rec["cost_source"]) == ("none", 0, "none")
    assert "Tokens: none recorded (no answer was produced)." in rec["explanation"]


@pytest.mark.slow
def test_timeout_record(gw: Server) -> None:
    status, headers, _ = chat(gw, {"model": "slow-headers", "messages": MESSAGES})
    assert status == 504
    rec = record(gw, headers["x-request-id"])
    assert rec["error_code"] == "upstream_timeout"
    assert rec["attempts"][0]["outcome"] == "timeout"
    assert 1900 <= rec["attempts"][0]["latency_ms"] < 5000  # first_byte = 2 s


def test_rejected_request_is_recorded_too(gw: Server) -> None:
    status, headers, _ = chat(gw, {"model": "gpt-test", "messages": MESSAGES}, key="tw-wrong-key")
    assert status == 401
    rec = record(gw, headers["x-request-id"])
    assert rec["status"] == 401 and rec["error_code"] == "invalid_api_key"
    assert rec["key"] is None and rec["attempts"] == []
    assert "Caller: not identified" in rec["explanation"]
    status, headers, _ = chat(gw, {"model": "gpt-4o-mini", "messages": MESSAGES}, key=BOB_KEY)
    assert status == 403
    assert record(gw, headers["x-request-id"])["error_code"] == "model_not_allowed"


def test_stream_with_provider_usage(gw: Server) -> None:
    status, headers, body = chat(gw, {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
    rec = record(gw, headers["x-request-id"])
    assert rec["stream"] is True
    assert rec["completion_source"] == "provider" and rec["completion_tokens"] == len(REPLY.split())
    assert rec["ttft_ms"] > 0 and rec["ttft_ms"] <= rec["latency_ms"]


def test_stream_without_provider_usage_is_counted(gw: Server) -> None:
    status, headers, _ = chat(gw, {"model": "counted", "messages": MESSAGES, "stream": True})
    assert status == 200
    rec = record(gw, headers["x-request-id"])
    assert rec["completion_source"] == "counted"
    assert rec["completion_tokens"] == o200k(REPLY)
    assert rec["prompt_source"] == "counted"
    assert (
        rec["prompt_tokens"]
        == TokenCounter("o200k_base").count_openai_chat(
            json.dumps({"model": "counted", "messages": MESSAGES, "stream": True}).encode()
        )[0]
    )
    # The same model without a known tokenizer: an estimate, and said so.
    status, headers, _ = chat(gw, {"model": "uncounted", "messages": MESSAGES, "stream": True})
    rec = record(gw, headers["x-request-id"])
    assert rec["completion_source"] == "estimated" and rec["completion_tokens"] == o200k(REPLY)


def test_non_streamed_answer_without_usage_is_counted(gw: Server) -> None:
    status, headers, _ = chat(gw, {"model": "counted", "messages": MESSAGES})
    assert status == 200
    rec = record(gw, headers["x-request-id"])
    assert rec["prompt_source"] == "counted" and rec["prompt_tokens"] > 0
    assert rec["completion_source"] == "counted" and rec["completion_tokens"] == o200k(REPLY)


def test_client_disconnect_mid_stream_records_partial_usage(gw: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    body = json.dumps({"model": "gpt-slow", "messages": MESSAGES, "stream": True}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer {ALICE_KEY}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    received = b""
    while received.count(b"word") < 5:
        chunk = sock.recv(65536)
        assert chunk, "the stream ended early"
        received += chunk
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in received.split(b"\r\n")
        if line.lower().startswith(b"x-request-id")
    )
    sock.close()
    deadline = time.monotonic() + 10
    while True:
        status, rec = admin_get(gw, f"/_tollway/requests/{request_id}")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200, rec
    assert rec["client_disconnected"] is True and rec["status"] == 499
    assert rec["completion_source"] == "partial"
    # What was delivered is counted: at least the words the client saw, never zero, and well
    # short of the whole 100-word answer.
    assert 5 <= rec["completion_tokens"] < 200
    assert rec["attempts"][0]["outcome"] == "client_disconnected"
    assert "client disconnected" in rec["explanation"]


def test_unpriced_model_is_never_silently_free(gw: Server) -> None:
    status, headers, _ = chat(gw, {"model": "gpt-test", "messages": MESSAGES})
    assert status == 200
    rec = record(gw, headers["x-request-id"])
    assert rec["cost_source"] == "unpriced" and rec["cost_usd"] == 0
    assert "Cost: unpriced" in rec["explanation"]
    families = {f.name: f for f in text_string_to_metric_families(gw.request("GET", "/metrics")[2].decode())}
    unpriced = families["tollway_unpriced_requests"]
    assert any(s.labels.get("model") == "gpt-test" and s.value >= 1 for s in unpriced.samples)


# -- asking questions ---------------------------------------------------------------------------


def test_usage_totals_grouped_and_filtered(gw: Server) -> None:
    for _ in range(2):
        assert chat(gw, {"model": "gpt-4o-mini", "messages": MESSAGES})[0] == 200
    assert chat(gw, {"model": "gpt-test", "messages": MESSAGES}, key=BOB_KEY)[0] == 200
    status, body = admin_get(gw, "/_tollway/usage?since=1h&by=key,model")
    assert status == 200, body
    rows = {(r["key"], r["model"]): r for r in body["rows"]}
    mini = rows[("alice", "gpt-4o-mini")]
    assert mini["requests"] >= 2 and mini["cost_usd"] > 0 and mini["prompt_tokens"] > 0
    assert rows[("bob", "gpt-test")]["unpriced_requests"] >= 1
    status, body = admin_get(gw, "/_tollway/usage?since=1h&by=key,model&key=bob")
    assert {r["key"] for r in body["rows"]} == {"bob"} and "gpt-test" in {r["model"] for r in body["rows"]}
    status, body = admin_get(gw, "/_tollway/usage?by=colour")
    assert status == 400 and "colour" in body["error"]["message"]
    # The admin API needs the admin key.
    assert gw.request("GET", "/_tollway/usage", headers={"authorization": f"Bearer {ALICE_KEY}"})[0] == 401


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_usage_and_explain_commands(gw: Server, usage_dir: Path) -> None:
    status, headers, _ = chat(gw, {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert status == 200
    request_id = headers["x-request-id"]
    record(gw, request_id)  # flushed to the ledger
    config = str(usage_dir / "tollway.toml")
    out = run_cli("usage", "--config", config, "--since", "1h", "--by", "key,model")
    assert out.returncode == 0, out.stderr
    assert "alice" in out.stdout and "gpt-4o-mini" in out.stdout and "unpriced" in out.stdout
    out = run_cli("usage", "--config", config, "--by", "model", "--json")
    rows = json.loads(out.stdout)["rows"]
    assert any(r["model"] == "gpt-4o-mini" and r["requests"] >= 1 for r in rows)
    out = run_cli("explain", request_id, "--config", config)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"Request {request_id}" in text
    assert "Caller: key `alice`, team `research`" in text
    assert "1. up / gpt-4o-mini (primary): succeeded, HTTP 200" in text
    assert "Cost: $" in text and "prices from the catalog" in text
    assert run_cli("explain", "req_nope", "--config", config).returncode == 1


def test_metrics_exposition(gw: Server) -> None:
    assert chat(gw, {"model": "gpt-4o-mini", "messages": MESSAGES})[0] == 200
    status, headers, body = gw.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = families["tollway_requests"]
    assert any(
        s.labels
        == {"endpoint": "/v1/chat/completions", "model": "gpt-4o-mini", "provider": "up", "status_class": "2xx"}
        and s.value >= 1
        for s in requests.samples
    )
    tokens = families["tollway_tokens"]
    assert {s.labels["type"] for s in tokens.samples} >= {"prompt", "completion"}
    assert "tollway_request_duration_seconds" in families
    assert "tollway_ledger_queue_depth" in families
    # Bounded labels: no request ids, users or keys in any label.
    assert "req_" not in body.decode() and "alice" not in body.decode()


def test_trace_follows_genai_conventions(gw: Server, collector: OtlpCollector) -> None:
    status, headers, _ = chat(gw, {"model": "gpt-4o-mini", "messages": MESSAGES})
    assert status == 200
    span = collector.span_for(headers["x-request-id"])
    attrs = {a.key: a.value for a in span.attributes}
    assert span.name == "chat gpt-4o-mini"
    assert attrs["gen_ai.operation.name"].string_value == "chat"
    assert attrs["gen_ai.request.model"].string_value == "gpt-4o-mini"
    assert attrs["gen_ai.provider.name"].string_value == "openai"
    assert attrs["gen_ai.usage.output_tokens"].int_value == len(REPLY.split())
    assert [e.name for e in span.events] == ["gen_ai.attempt"]


def test_access_line_shape() -> None:
    """The line's fixed shape (the gateway's real lines are checked at the end of the module)."""
    from tollway.observability.logs import access_line
    from tollway.usage.record import UsageRecord

    line = json.loads(access_line(UsageRecord(request_id="req_x", received_at=1.0, status=200, key="alice")))
    assert line["request_id"] == "req_x" and line["type"] == "access"
    assert (line["key"], line["status"], line["team"], line["attempts"]) == ("alice", 200, None, 0)


# -- secrets never leak; records survive a restart ------------------------------------------


def test_secrets_never_appear_and_records_survive_restart(gw: Server, upstream: Server, usage_dir: Path) -> None:
    bodies = []
    for model, stream in (("gpt-canary", False), ("gpt-canary", True), ("fail-401", False), ("fail-500", False)):
        status, headers, body = chat(gw, {"model": model, "messages": MESSAGES, "stream": stream})
        bodies.append(body)
    status, headers, body = chat(gw, {"model": "gpt-canary", "messages": MESSAGES}, key=ALICE_KEY + "x")
    bodies.append(body)
    request_id = headers["x-request-id"]
    record(gw, request_id)
    # The canary provider key did reach the upstream (so it was in use)...
    sent = upstream.get_json("/_mock/last")
    assert sent is not None
    metrics = gw.request("GET", "/metrics")[2]
    # ...and appears nowhere the gateway writes.
    output = stop(gw.proc)
    gw.output.append(output)
    for secret in (CANARY_PROVIDER_KEY, ALICE_KEY, BOB_KEY, ADMIN_KEY):
        assert secret not in output
        assert secret.encode() not in metrics
        assert all(secret.encode() not in body for body in bodies)
    rows = sqlite3.connect(usage_dir / "usage.sqlite3").execute("SELECT * FROM requests").fetchall()
    dump = repr(rows)
    for secret in (CANARY_PROVIDER_KEY, ALICE_KEY, BOB_KEY, ADMIN_KEY):
        assert secret not in dump
    # One JSON access line per request, each with its request id.
    access = [json.loads(line) for line in output.splitlines() if line.startswith('{"ts"')]
    by_id = {line["request_id"]: line for line in access}
    assert len(by_id) == len(access) > 20  # one line per request, for every test of the module
    last = by_id[request_id]
    assert (last["status"], last["error_code"], last["key"]) == (401, "invalid_api_key", None)
    # The clean shutdown flushed the queue; a new gateway on the same ledger finds the records.
    again = start_gateway(
        (usage_dir / "tollway.toml").read_text(), usage_dir, {"TEST_UPSTREAM_KEY": "sk-up", "CANARY_KEY": "x"}
    )
    try:
        status, body = admin_get(again, f"/_tollway/requests/{request_id}")
        assert status == 200 and body["error_code"] == "invalid_api_key"
    finally:
        stop(again.proc)
