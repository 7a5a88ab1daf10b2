"""No work for callers who have left, and no unbounded wait for a pooled connection.

A request whose client disconnected is never sent to the provider afterwards (it would cost
tokens nobody reads); one in flight has its upstream connection closed at once (the provider
stops generating); each is recorded as 499. A request waiting for a free pooled connection
waits no longer than the first-byte timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Server
from gateway_support import ADMIN_KEY
from hostile_support import (
    assert_clean_error,
    chat,
    hostile_gateway,
    nonce,
    open_raw,
    poll,
    raw_clients,
    raw_request,
    reset,
    running_hostile,
    scenario_stats,
)

POOL = 32
CLIENTS = 1000


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_hostile(tmp_path_factory) as server:
        yield server


def statuses(gw: Server, model: str) -> dict[int, int]:
    """Requests per status recorded for `model`, from the admin API's usage totals."""
    status, _, body = gw.request(
        "GET", f"/_tollway/usage?since=1h&by=status&model={model}", headers={"x-api-key": ADMIN_KEY}
    )
    assert status == 200, body
    return {int(row["status"]): int(row["requests"]) for row in json.loads(body)["rows"]}


@pytest.mark.slow
def test_clients_that_left_cost_no_upstream_request(hostile: Server, tmp_path: Path) -> None:
    """1,000 clients open streamed requests to `hold` (the provider never answers) through one
    worker allowing 32 connections to the provider; 2 s later they all disconnect. The provider
    receives at most 32 requests in all (the queued ones are never sent, even seconds later),
    the 32 in-flight upstream connections are closed within 2 s, and all 1,000 requests are
    recorded as 499 within 5 s.

    Today: the cancelled requests free their pool slots one by one, and requests queued behind
    them are sent before their own cancellation lands: the provider receives 60 to 100 requests
    for callers who have all left."""
    with hostile_gateway(hostile, tmp_path, max_connections_per_host=POOL, first_byte=60, total=120) as gw:
        reset(hostile)
        with raw_clients(gw, (raw_request(gw, "hold", nonce("gone")) for _ in range(CLIENTS))):
            poll(f"{POOL} requests in flight", lambda: scenario_stats(hostile, "hold")["requests"] >= POOL, 10)
            time.sleep(2.0)  # the clients wait a while, as people do, before giving up
            in_flight = scenario_stats(hostile, "hold")["requests"]
            assert in_flight == POOL, f"{in_flight} requests sent over a pool of {POOL}"
        left_at = time.monotonic()
        poll(
            "the provider sees the in-flight connections closed",
            lambda: scenario_stats(hostile, "hold")["peer_closed"] >= POOL,
            2.0,
        )
        # Nothing to poll for: a request sent late would arrive within this window.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - left_at)))
        sent = scenario_stats(hostile, "hold")
        assert sent["requests"] <= POOL, (
            f"the provider received {sent['requests']} requests for {CLIENTS} callers who left "
            f"(at most {POOL} were in flight when they did)"
        )
        assert sent["peer_closed"] == sent["requests"], sent
        poll("1,000 records of 499", lambda: statuses(gw, "hold") == {499: CLIENTS}, 5.0, interval_s=0.2)


def test_waiting_for_a_pooled_connection_counts_toward_the_first_byte_timeout(hostile: Server, tmp_path: Path) -> None:
    """With one connection allowed and a long stream occupying it, a second request waits for
    the connection no longer than the first-byte timeout (1 s): 504 `upstream_timeout`, and it
    never reaches the provider.

    Today: the wait for a pooled connection has no deadline; the request waits until the stream
    ends (10 s) and is then sent."""
    with hostile_gateway(hostile, tmp_path, max_connections_per_host=1, first_byte=1, idle=5, total=60) as gw:
        reset(hostile)
        holder = open_raw(gw, raw_request(gw, "trickle", f"{nonce('holder')} count=40 every=250"))
        try:
            poll("the stream in flight", lambda: scenario_stats(hostile, "trickle")["requests"] == 1, 5)
            reply = chat(gw, "ok", nonce("waiter"), timeout=20)
            assert_clean_error(reply, (504,), "upstream_timeout")
            assert reply.elapsed < 2.5, f"answered after {reply.elapsed:.2f}s"
            assert scenario_stats(hostile, "ok")["requests"] == 0, "the request that timed out was sent"
        finally:
            holder.close()
