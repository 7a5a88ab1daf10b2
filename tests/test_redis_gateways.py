"""Three `tollway serve` processes sharing one real Redis: limits hold across them under a
barrier-synchronised burst (requests, tokens, dollars), Redis killed under load follows each
policy's `on_store_unavailable`, limits are shared again by themselves once Redis is back, and a
frozen Redis delays no request beyond the Redis timeout."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from conftest import RedisServer, Server, key_hash, start_gateway, start_redis, stop

ADMIN = "tw-admin-redis-gateways"
KEYS = ("burst", "tokens", "dollars", "open", "local", "closed", "shared", "frozen")
MESSAGES = [{"role": "user", "content": "Say hello"}]

POLICIES = """
[[policies]]
name = "burst-rpm"
match = { key = "burst" }
per = "key"
requests = "50/min"
on_store_unavailable = "fail_closed"

[[policies]]
name = "burst-tokens"
match = { key = "tokens" }
per = "key"
tokens = { limit = 5000, per = "24h", count = "output" }
on_store_unavailable = "fail_closed"

[[policies]]
name = "burst-dollars"
match = { key = "dollars" }
per = "key"
budget = { usd = 0.50, per = "month" }

[[policies]]
name = "open"
match = { key = "open" }
requests = "100000/min"
on_store_unavailable = "fail_open"

[[policies]]
name = "local"
match = { key = "local" }
requests = "100000/min"
on_store_unavailable = "local"

[[policies]]
name = "closed"
match = { key = "closed" }
requests = "100000/min"
on_store_unavailable = "fail_closed"

[[policies]]
name = "shared"
match = { key = "shared" }
requests = "4/1h"
on_store_unavailable = "fail_closed"

[[policies]]
name = "frozen"
match = { key = "frozen" }
requests = "100000/min"
"""


def gateway_toml(redis_url: str, index: int, timeout_ms: int) -> str:
    keys = "\n".join(f'[[keys]]\nname = "{k}"\nhash = "{key_hash(secret(k))}"\n' for k in KEYS)
    return f"""
[server]
host = "127.0.0.1"
log_level = "warning"

[state]
backend = "redis"
url = "{redis_url}"
timeout_ms = {timeout_ms}
breaker_failures = 3
breaker_reset_ms = 300

[ledger]
path = "ledger-{index}.sqlite3"
flush_interval_ms = 20

[logging]
access_log = false

[admin]
key_hash = "{key_hash(ADMIN)}"

[[providers]]
name = "fast"
kind = "mock"
mock = {{ reply = "a b c d e" }}

[[providers]]
name = "slow"
kind = "mock"
mock = {{ latency_ms = 2500, reply = "a b c d e" }}

[[models]]
name = "mock-fast"
provider = "fast"

[[models]]
name = "mock-slow"
provider = "slow"

[[catalog]]
name = "mock-slow"
provider = "mock"
input = 0.0
output = 50.0

{keys}
{POLICIES}
"""


def secret(key: str) -> str:
    return f"tw-redis-gateways-{key}"


def start_three(redis: RedisServer, tmp: Path, timeout_ms: int) -> list[Server]:
    servers: list[Server] = []
    try:
        for i in range(3):
            servers.append(start_gateway(gateway_toml(redis.url, i, timeout_ms), tmp))
    except BaseException:
        for server in servers:
            stop(server.proc)
        raise
    return servers


def post(server: Server, key: str, model: str = "mock-fast", timeout: float = 30, **extra: Any) -> tuple[int, str]:
    """One chat request: its status and error code (empty on success)."""
    body = json.dumps({"model": model, "messages": MESSAGES, **extra}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=body,
            headers={"content-type": "application/json", "authorization": f"Bearer {secret(key)}"},
        )
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    code = json.loads(data)["error"]["code"] if response.status != 200 else ""
    return response.status, code


def burst(servers: list[Server], n: int, request: Callable[[Server], tuple[int, str]]) -> list[tuple[int, str]]:
    """`n` requests released together (a barrier), spread round-robin over the gateways."""
    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[int, str]:
        barrier.wait(30)
        return request(servers[i % len(servers)])

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n)))


def readiness(server: Server) -> dict[str, Any]:
    state: dict[str, Any] = server.get_json("/readyz")["state"]
    return state


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateways(shared_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    # A generous timeout: these tests are about sharing, not about a slow Redis (and the
    # policies fail closed, so a timeout could only lower the counts asserted).
    servers = start_three(shared_redis, tmp_path_factory.mktemp("redis-gateways"), timeout_ms=2000)
    yield servers
    for server in servers:
        stop(server.proc)


def test_a_request_rate_holds_across_three_gateways(gateways: list[Server]) -> None:
    results = burst(gateways, 200, lambda s: post(s, "burst"))
    assert sum(status == 200 for status, _ in results) == 50
    assert {r for r in results if r[0] != 200} == {(429, "rate_limit_exceeded")}
    assert all(readiness(s) == readiness(s) | {"backend": "redis", "available": True} for s in gateways)


def test_a_token_rate_holds_across_three_gateways(gateways: list[Server]) -> None:
    """5,000 output tokens a day; each request reserves its `max_tokens` of 100 and is still in
    flight (a slow model) when the others are decided: exactly 50 fit."""
    results = burst(gateways, 200, lambda s: post(s, "tokens", "mock-slow", max_tokens=100))
    assert sum(status == 200 for status, _ in results) == 50
    assert {r for r in results if r[0] != 200} == {(429, "token_rate_limit_exceeded")}


def test_a_dollar_cap_holds_across_three_gateways(gateways: list[Server]) -> None:
    """$0.50 a month; each request may cost $0.05 (1,000 output tokens at $50 per million), so
    exactly 10 of 60 concurrent requests are admitted, and what they spent stays within the cap
    (the documented overshoot is only usage beyond a reservation: none here)."""
    results = burst(gateways, 60, lambda s: post(s, "dollars", "mock-slow", max_tokens=1000))
    assert sum(status == 200 for status, _ in results) == 10
    assert {r for r in results if r[0] != 200} == {(429, "budget_exceeded")}

    def totals() -> tuple[int, float]:
        requests, cost = 0, 0.0
        for server in gateways:
            status, _, body = server.request(
                "GET", "/_tollway/usage?key=dollars", headers={"authorization": f"Bearer {ADMIN}"}
            )
            assert status == 200, body
            for row in json.loads(body)["rows"]:
                requests += row["requests"]
                cost += row["cost_usd"]
        return requests, cost

    wait_until(lambda: totals()[0] == 60, 10, "every request recorded")
    spent = totals()[1]
    assert 0 < spent <= 0.50


def test_several_workers_of_one_gateway_share_a_limit(shared_redis: RedisServer, tmp_path: Path) -> None:
    """`workers > 1` is allowed with the Redis backend, and the workers count together."""
    config = gateway_toml(shared_redis.url, 9, 2000).replace("[server]\n", "[server]\nworkers = 2\n")
    config = config.replace('requests = "4/1h"', 'requests = "7/1h"')  # a limit of its own
    server = start_gateway(config, tmp_path)
    try:
        results = burst([server], 30, lambda s: post(s, "shared"))
    finally:
        stop(server.proc)
    assert sorted(status for status, _ in results) == [200] * 7 + [429] * 23


# -- Redis failures ---------------------------------------------------------------------------------


@pytest.fixture
def fragile(tmp_path: Path) -> Iterator[tuple[RedisServer, list[Server]]]:
    """Three gateways with the default 50 ms Redis timeout, on a Redis the test may kill."""
    redis = start_redis()
    try:
        servers = start_three(redis, tmp_path, timeout_ms=50)
    except BaseException:
        redis.stop()
        raise
    yield redis, servers
    for server in servers:
        stop(server.proc)
    redis.stop()


class Load:
    """Requests for `keys` sent in a loop to every gateway until stopped, with when each ended."""

    def __init__(self, servers: list[Server], keys: tuple[str, ...]) -> None:
        self.results: list[tuple[float, str, int, str, float]] = []  # (ended, key, status, code, seconds)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(server, key)) for server in servers for key in keys]

    def _run(self, server: Server, key: str) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            status, code = post(server, key, timeout=10)
            ended = time.monotonic()
            self.results.append((ended, key, status, code, ended - began))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def since(self, t: float, key: str) -> list[tuple[int, str]]:
        return [(status, code) for ended, k, status, code, _ in self.results if k == key and ended > t]


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.05)


def test_redis_killed_under_load_then_back(fragile: tuple[RedisServer, list[Server]]) -> None:
    redis, servers = fragile
    with Load(servers, ("open", "local", "closed")) as load:
        wait_until(lambda: len(load.results) >= 30, 10, "load running")
        killed_at = time.monotonic()
        redis.kill()
        wait_until(lambda: len(load.since(killed_at + 0.3, "closed")) >= 10, 10, "requests after the kill")
        redis.restart()
        back_at = time.monotonic()
        # Shared state again by itself: the fail-closed policy admits again on every gateway.
        wait_until(
            lambda: (
                all(readiness(s)["available"] for s in servers)
                and load.since(time.monotonic() - 0.2, "closed").count((200, "")) >= 3
            ),
            5,
            "shared state back",
        )
        recovered = time.monotonic() - back_at
    for key in ("open", "local"):
        after = load.since(killed_at, key)
        assert after and all(status == 200 for status, _ in after), (key, sorted(set(after)))
    after = load.since(killed_at, "closed")
    assert set(after) <= {(200, ""), (503, "state_store_unavailable")}, sorted(set(after))
    assert (503, "state_store_unavailable") in after
    assert recovered < 5
    # The limits are shared again: 4 an hour across the three gateways (Redis came back empty).
    results = burst(servers, 12, lambda s: post(s, "shared"))
    assert sorted(status for status, _ in results) == [200] * 4 + [429] * 8


def test_a_frozen_redis_delays_requests_by_at_most_its_timeout(fragile: tuple[RedisServer, list[Server]]) -> None:
    redis, servers = fragile
    baseline = [post(servers[0], "frozen") for _ in range(5)]
    assert all(status == 200 for status, _ in baseline)
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        timings = []
        for i in range(30):
            began = time.monotonic()
            status, _ = post(servers[i % 3], "frozen", timeout=5)
            timings.append(time.monotonic() - began)
            assert status == 200  # `fail_open`, the default for request rates
        # The Redis timeout (50 ms) plus the request's own latency, with room for a shared machine.
        assert max(timings) < 0.5, timings
        assert all(not readiness(s)["available"] for s in servers)
        assert all(readiness(s)["degraded_since"] is not None for s in servers)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    wait_until(lambda: all(post(s, "frozen")[0] == 200 and readiness(s)["available"] for s in servers), 5, "back")
    metrics = servers[0].request("GET", "/metrics")[2].decode()
    assert "tollway_state_store_up 1" in metrics
    assert 'tollway_state_degraded_decisions_total{policy="frozen",mode="fail_open"}' in metrics
