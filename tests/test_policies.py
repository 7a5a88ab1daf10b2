"""Traffic policies through the real gateway: each denial's status, body and headers, shadow
mode, the concurrency overshoot bound, settlement on every path, truncation, hot reload with a
broken config, and the `tollway policy test` / `policy replay` / `check` commands."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from conftest import Server, gateway_config, key_hash, start_gateway, stop
from tollway._native import TokenCounter

ADMIN = "tw-admin-policies"
KEYS = {
    name: f"tw-policy-{name}-key"
    for name in ("rl", "rl1", "shadow", "conc", "budget", "intern", "params", "tok", "trunc")
}
MESSAGES = [{"role": "user", "content": "Say hello in five words"}]

POLICIES = """
[[policies]]
name = "rl-rpm"
match = { key = "rl" }
per = "key"
requests = "3/1h"

[[policies]]
name = "rl-one"
match = { key = "rl1" }
per = "key"
requests = "1/1h"

[[policies]]
name = "shadow-rpm"
description = "trying out a limit before enforcing it"
match = { key = "shadow" }
mode = "shadow"
requests = "1/1h"

[[policies]]
name = "one-at-a-time"
match = { key = "conc" }
concurrency = 1

[[policies]]
name = "ten-cents"
match = { key = "budget" }
per = "key"
budget = { usd = 0.10, per = "month" }

[[policies]]
name = "no-interns"
match = { team = "interns" }
deny = "interns may not call models yet"

[[policies]]
name = "bounds"
match = { key = "params" }
params = { max_tokens = { max = 64, action = "clamp" }, n = 1 }

[[policies]]
name = "tokens-per-month"
match = { key = "tok" }
tokens = "10000/30d"   # refills under one token per test run, so the arithmetic below is exact

[[policies]]
name = "output-cap"
match = { key = "trunc" }
budget = { tokens = 3, per = "day", count = "output", on_exceed = "truncate" }
"""


def policy_config(upstream_port: int) -> str:
    keys = "\n".join(
        f'[[keys]]\nname = "{name}"\nhash = "{key_hash(key)}"\n' + ('team = "interns"\n' if name == "intern" else "")
        for name, key in KEYS.items()
    )
    return (
        gateway_config(upstream_port)
        + f"""
[[providers]]
name = "pricedmock"
kind = "mock"
mock = {{ latency_ms = 600, reply = "a b c d e" }}

[[models]]
name = "mock-priced"
provider = "pricedmock"

[[providers]]
name = "longmock"
kind = "mock"
mock = {{ stream_chunks = 8, chunk_delay_ms = 20, reply = "alpha beta gamma delta epsilon zeta eta theta iota kappa" }}

[[models]]
name = "mock-long"
provider = "longmock"
tokenizer = "o200k_base"

[[catalog]]
name = "mock-priced"
provider = "mock"
input = 0.0
output = 50.0

[admin]
key_hash = "{key_hash(ADMIN)}"

{keys}
{POLICIES}
"""
    )


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("policies")


@pytest.fixture(scope="module")
def gw(upstream: Server, policy_dir: Path) -> Iterator[Server]:
    config = policy_config(upstream.port)
    (policy_dir / "tollway.toml").write_text(config)
    server = start_gateway(config, policy_dir, {"TEST_UPSTREAM_KEY": "sk-up"})
    yield server
    stop(server.proc)


def call(
    gw: Server, key: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {KEYS[key]}"}
    return gw.request("POST", path, json.dumps(body).encode(), headers)


def record(gw: Server, request_id: str) -> dict[str, Any]:
    status, _, body = gw.request(
        "GET", f"/_tollway/requests/{request_id}", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert status == 200, body
    return json.loads(body)  # type: ignore[no-any-return]


def chat(model: str = "mock-gpt", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


# -- denials: status, body, headers ------------------------------------------------------------


def test_rate_limit_denial_with_headers_and_explanation(gw: Server) -> None:
    for remaining in ("2", "1", "0"):
        status, headers, _ = call(gw, "rl", chat())
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == remaining
        assert headers["x-ratelimit-reset-requests"].endswith(("s", "m"))
    status, headers, body = call(gw, "rl", chat())
    assert status == 429
    retry_after = int(headers["retry-after"])
    assert 1100 <= retry_after <= 1200  # one request per 20 minutes refills the bucket
    error = json.loads(body)["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert error["request_id"] == headers["x-request-id"]
    message = error["message"]
    assert "policy `rl-rpm` allows 3 requests per 1h for key=rl" in message
    assert "3 requests in use" in message and "retry in" in message and "Remedy:" in message
    rec = record(gw, headers["x-request-id"])
    assert rec["status"] == 429 and rec["attempts"] == []
    [verdict] = rec["decisions"]
    assert (verdict["policy"], verdict["verdict"], verdict["used"], verdict["limit"]) == ("rl-rpm", "deny", 3, 3)
    assert "Blocked by policy `rl-rpm`" in rec["explanation"]


def test_denial_in_the_anthropic_format(gw: Server) -> None:
    # A key of its own (one request an hour), so the test holds whatever ran before it.
    client = anthropic.Anthropic(base_url=gw.url, api_key=KEYS["rl1"], max_retries=0)
    client.messages.create(model="mock-gpt", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="mock-gpt", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error" and "rl-one" in body["error"]["message"]


def test_shadow_mode_never_blocks(gw: Server) -> None:
    assert call(gw, "shadow", chat())[0] == 200
    status, headers, _ = call(gw, "shadow", chat())
    assert status == 200
    assert headers["x-tollway-shadow-deny"] == "shadow-rpm"
    rec = record(gw, headers["x-request-id"])
    assert [(v["policy"], v["verdict"], v["mode"]) for v in rec["decisions"]] == [
        ("shadow-rpm", "would_deny", "shadow")
    ]
    assert "would have denied (shadow mode: not enforced)" in rec["explanation"]


def test_access_rule_403(gw: Server) -> None:
    status, _, body = call(gw, "intern", chat())
    assert status == 403
    error = json.loads(body)["error"]
    assert error["code"] == "access_denied" and "interns may not call models yet" in error["message"]


def test_parameter_bounds_clamp_and_reject(gw: Server, upstream: Server) -> None:
    status, headers, _ = call(gw, "params", chat("gpt-test", max_tokens=5000))
    assert status == 200
    sent = json.loads(upstream.get_json("/_mock/last")["body"])
    assert sent["max_tokens"] == 64  # clamped on the way upstream
    verdict = record(gw, headers["x-request-id"])["decisions"][0]
    assert verdict["verdict"] == "clamp" and "lowered to 64" in verdict["detail"]
    status, _, body = call(gw, "params", chat(n=3))
    assert status == 400 and json.loads(body)["error"]["code"] == "parameter_out_of_bounds"


def test_concurrency_limit(gw: Server) -> None:
    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(call(gw, "conc", chat("mock-slow"))[0]))
    first.start()
    deadline = time.monotonic() + 5
    while True:  # until the first request holds its lease
        status, _, body = call(gw, "conc", chat())
        if status == 429 or time.monotonic() > deadline:
            break
    assert status == 429 and json.loads(body)["error"]["code"] == "concurrency_limit_exceeded"
    first.join(10)
    assert results == [200]
    assert call(gw, "conc", chat())[0] == 200  # the lease was released


def test_budget_overshoot_bound_with_concurrent_requests(gw: Server) -> None:
    """Remaining budget $0.10; twenty concurrent requests that may each cost $0.05 (1,000
    output tokens at $50 per million): exactly two are admitted."""
    barrier = threading.Barrier(20)
    statuses: list[int] = []
    codes: list[str] = []

    def one() -> None:
        barrier.wait()
        status, _, body = call(gw, "budget", chat("mock-priced", max_tokens=1000))
        statuses.append(status)
        if status != 200:
            codes.append(json.loads(body)["error"]["code"])

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses.count(200) == 2
    assert set(codes) == {"budget_exceeded"} and statuses.count(429) == 18


# -- settlement on every path --------------------------------------------------------------------


def _prompt(body: dict[str, Any]) -> int:
    return TokenCounter("o200k_base").count_openai_chat(json.dumps(body).encode())[0]


def test_reservations_settle_on_every_path(gw: Server) -> None:
    """Token-rate reservations: released when no model call happened (upstream 500), settled at
    the provider's usage on success, at the delivered (partial) count on a disconnect."""
    failing = chat("fail-500", max_tokens=100)
    assert call(gw, "tok", failing)[0] == 502
    ok = chat("gpt-test", max_tokens=100)
    status, headers, _ = call(gw, "tok", ok)
    assert status == 200
    # Only this request's reservation is held: the failed one gave everything back.
    assert int(headers["x-ratelimit-remaining-tokens"]) == 10000 - (_prompt(ok) + 100)
    settled = record(gw, headers["x-request-id"])
    used = settled["prompt_tokens"] + settled["completion_tokens"]
    # A client that leaves mid-stream: settled at what was delivered.
    stream = chat("slow-stream", max_tokens=500, stream=True)
    body = json.dumps(stream).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {KEYS['tok']}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"word") < 3:
            chunk = sock.recv(65536)
            assert chunk
            received += chunk
    request_id = next(
        line.split(b":", 1)[1].strip().decode() for line in received.split(b"\r\n") if line.startswith(b"x-request-id")
    )
    deadline = time.monotonic() + 10
    while True:
        status, _, raw = gw.request(
            "GET", f"/_tollway/requests/{request_id}", headers={"authorization": f"Bearer {ADMIN}"}
        )
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    partial = json.loads(raw)
    assert partial["completion_source"] == "partial"
    used += partial["prompt_tokens"] + partial["completion_tokens"]
    probe = chat("gpt-test", max_tokens=1)
    status, headers, _ = call(gw, "tok", probe)
    assert int(headers["x-ratelimit-remaining-tokens"]) == 10000 - used - (_prompt(probe) + 1)


def test_truncating_budget_ends_a_stream_with_an_error_event(gw: Server) -> None:
    status, headers, body = call(gw, "trunc", chat("mock-long", stream=True))
    assert status == 200
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    last = json.loads(events[-1][6:])
    assert last["error"]["code"] == "budget_exhausted" and "output-cap" in last["error"]["message"]
    assert b"[DONE]" not in body
    text = "".join((json.loads(e[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or "" for e in events[:-1])
    assert 0 < len(text.split()) < 10  # cut well before the end of the 10-word answer
    rec = record(gw, headers["x-request-id"])
    assert rec["attempts"][0]["outcome"] == "truncated"
    assert [v["verdict"] for v in rec["decisions"]] == ["truncate"]


# -- reload -------------------------------------------------------------------------------------


RELOAD_BASE = """
[server]
host = "127.0.0.1"

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-gpt"
provider = "mock"

[[keys]]
name = "rl"
hash = "{hash}"

[admin]
key_hash = "{admin}"

[[policies]]
name = "kept"
requests = "100/1h"

[[policies]]
name = "changing"
requests = "{limit}/1h"
"""


def test_reload_sighup_admin_and_broken_config(tmp_path: Path) -> None:
    path = tmp_path / "tollway.toml"

    def write(limit: int) -> None:
        path.write_text(RELOAD_BASE.format(hash=key_hash(KEYS["rl"]), admin=key_hash(ADMIN), limit=limit))

    write(2)
    gw = start_gateway(path.read_text(), tmp_path)
    # start_gateway wrote its own copy; reload reads the file it serves.
    config_file = next(tmp_path.glob("tollway-*.toml"))
    try:
        assert call(gw, "rl", chat())[0] == 200
        # A broken config is refused; the old one keeps serving.
        config_file.write_text(config_file.read_text() + '\n[[policies]]\nname = "bad"\nrequests = "lots"\n')
        status, _, body = gw.request("POST", "/_tollway/reload", headers={"authorization": f"Bearer {ADMIN}"})
        assert status == 400
        assert any("expected a rate such as `60/min`" in p for p in json.loads(body)["problems"])
        gw.proc.send_signal(signal.SIGHUP)
        assert call(gw, "rl", chat())[0] == 200  # second of two
        status, _, _ = call(gw, "rl", chat())
        assert status == 429  # the old limit (2) still applies
        # A valid change by SIGHUP: `changing` gets a new limit (fresh counter); `kept` keeps its count.
        config_file.write_text(RELOAD_BASE.format(hash=key_hash(KEYS["rl"]), admin=key_hash(ADMIN), limit=5))
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gw.get_json("/readyz")["reloads"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.get_json("/readyz")["reloads"] == 1
        status, headers, _ = call(gw, "rl", chat())
        assert status == 200
        rec = record(gw, headers["x-request-id"])
        remaining = {v["policy"]: v["remaining"] for v in rec["decisions"]}
        assert remaining == {"kept": 100 - 2 - 1, "changing": 5 - 1}  # the refused request kept nothing
    finally:
        output = stop(gw.proc)
    assert "reload (SIGHUP) refused" in output and "reload (admin API) refused" in output
    assert "expected a rate such as" in output


# -- the commands -------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollway.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_policy_test_command(gw: Server, policy_dir: Path) -> None:
    tests = policy_dir / "policy-tests.toml"
    tests.write_text(
        """
config = "tollway.toml"

[[tests]]
name = "rl may send three requests an hour"
request = { key = "rl", model = "mock-gpt" }
repeat = 4
expect = { decision = "deny", policy = "rl-rpm", status = 429, code = "rate_limit_exceeded" }

[[tests]]
name = "a nearly spent budget refuses a large request"
request = { key = "budget", model = "mock-priced", max_tokens = 1000 }
prior = [{ policy = "ten-cents", used = 0.06 }]
expect = { decision = "deny", policy = "ten-cents" }

[[tests]]
name = "shadow never blocks"
request = { key = "shadow", model = "mock-gpt" }
repeat = 2
expect = { decision = "allow", shadow = ["shadow-rpm"] }

[[tests]]
name = "a wrong expectation fails"
request = { key = "intern", model = "mock-gpt" }
expect = { decision = "allow" }
"""
    )
    out = run_cli("policy", "test", str(tests))
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "PASS  rl may send three requests an hour"
    assert "PASS  a nearly spent budget refuses a large request" in lines
    assert "PASS  shadow never blocks" in lines
    assert "FAIL  a wrong expectation fails" in lines
    assert any("no-interns (access): DENIED" in line for line in lines)
    assert lines[-1] == "3 passed, 1 failed"


def test_policy_replay_command(gw: Server, policy_dir: Path) -> None:
    # Traffic the module's tests have recorded (the shadow key sent several requests).
    for _ in range(3):
        assert call(gw, "shadow", chat())[0] == 200
    gw.request("GET", "/_tollway/usage", headers={"authorization": f"Bearer {ADMIN}"})  # flush the ledger
    stricter = (policy_dir / "tollway.toml").read_text().replace('mode = "shadow"\n', "")
    new = policy_dir / "enforced.toml"
    new.write_text(stricter)
    out = run_cli("policy", "replay", "--config", str(new), "--ledger-config", str(policy_dir / "tollway.toml"))
    assert out.returncode == 0, out.stderr
    assert "shadow-rpm: would now block" in out.stdout


def test_check_warns_about_policies_that_cannot_match(tmp_path: Path) -> None:
    path = tmp_path / "warn.toml"
    path.write_text(
        f"""
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "mock-gpt"
provider = "mock"

[[keys]]
name = "a"
hash = "{key_hash("a")}"
team = "t"

[[policies]]
name = "typo"
match = {{ model = "mock-gtp" }}
requests = "1/s"

[[policies]]
name = "dup1"
requests = "5/s"

[[policies]]
name = "dup2"
requests = "5/s"

[[policies]]
name = "money"
budget = {{ usd = 5 }}
"""
    )
    out = run_cli("check", str(path))
    assert out.returncode == 0, out.stderr
    err = out.stderr
    assert "policies[0] (`typo`): can never match: no [[models]] or [[routes]] entry is called `mock-gtp`" in err
    assert "policies[2] (`dup2`): the same scope and rules as policy `dup1`" in err
    assert "policies[3] (`money`): a dollar budget over unpriced model(s) `mock-gpt`" in err


def test_openai_sdk_sees_rate_limit_headers(gw: Server) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["tok"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="mock-gpt", messages=MESSAGES, max_tokens=10)  # type: ignore[arg-type]
    assert raw.parse().choices[0].message.content
    # The token limit that applied, in OpenAI's header names; no request-rate policy applies.
    assert raw.headers["x-ratelimit-limit-tokens"] == "10000"
    assert 0 < int(raw.headers["x-ratelimit-remaining-tokens"]) < 10000
    assert raw.headers["x-ratelimit-reset-tokens"].endswith(("ms", "s"))
    assert raw.headers.get("x-ratelimit-limit-requests") is None


def test_watch_config_reloads_on_change(tmp_path: Path) -> None:
    text = RELOAD_BASE.format(hash=key_hash(KEYS["rl"]), admin=key_hash(ADMIN), limit=2).replace(
        '[server]\nhost = "127.0.0.1"', '[server]\nhost = "127.0.0.1"\nwatch_config = true'
    )
    gw = start_gateway(text, tmp_path)
    config_file = next(tmp_path.glob("tollway-*.toml"))
    try:
        before = gw.get_json("/readyz")["config"]
        config_file.write_text(text.replace('requests = "2/1h"', 'requests = "7/1h"'))
        deadline = time.monotonic() + 10
        while gw.get_json("/readyz")["reloads"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = gw.get_json("/readyz")
        assert ready["reloads"] == 1 and ready["config"] != before
        status, headers, _ = call(gw, "rl", chat())
        assert status == 200
        limits = {v["policy"]: v["limit"] for v in record(gw, headers["x-request-id"])["decisions"]}
        assert limits["changing"] == 7
    finally:
        stop(gw.proc)
