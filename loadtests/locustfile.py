"""Locust scenarios against a tollway gateway; `run.py` (`make loadtest`) starts the mock upstream
and a gateway per scenario and runs each one headless.

- `ChatUser` (scenario `chat`): non-streamed `POST /v1/chat/completions` with the bench key.
- `StreamUser` (scenario `stream`): the same, streamed; the stream must carry content and end
  with `data: [DONE]`.
- `PoliciesUser` (scenario `policies`): non-streamed, each request from one of 200 keys at
  random, against a gateway with 100 policies of which 5 match each request; the answer must
  carry the rate-limit headers those policies add. A 429 is a failure: the limits are set far
  above what a run reaches.

Every answer is checked (status, JSON shape or stream), so a failure under load is counted as
one. At the end each scenario that ran is held to its budget (`scenarios.py`): its p50, p95
and p99 (over every request, from locust's unrounded times) and its failure ratio; a broken
budget is printed and makes locust exit 1. With `LOADTEST_RESULT=path`, the figures are also
written there as JSON (for `run.py`'s summary).

By hand, against a gateway serving `scenarios.gateway_config(...)`:

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 16 -r 16 -t 20s --host http://127.0.0.1:8080 ChatUser

Each user pauses a random time averaging 1 / `LOADTEST_USER_RATE` s (default 25/s) between an
answer and its next request (0: no pause), so latency is measured at a set load (16 users: about
380 req/s, a fifth of what one gateway worker serves on 2 shared cores) rather than at
saturation, where it is only users / throughput.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, constant, events, task
from scenarios import BENCH_KEY, MODEL, POLICY_KEYS, SCENARIOS, budget, percentile, violations

PATH = "/v1/chat/completions"
BODY = {
    "model": MODEL,
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Write one short sentence about foxes."}],
}
STREAM_BODY = {**BODY, "stream": True}


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


BENCH_HEADERS = _headers(BENCH_KEY)
POLICY_HEADERS = [_headers(key) for key in POLICY_KEYS]

USER_RATE = float(os.environ.get("LOADTEST_USER_RATE") or 25)


def poisson_wait(rate: float) -> Callable[[Any], float]:
    """Random pauses averaging 1/rate s between a user's requests: the users' requests arrive
    independently, as clients' do (a constant pace would have all users fire together)."""

    def wait_time(_user: Any) -> float:
        return random.expovariate(rate)

    return wait_time


WAIT = poisson_wait(USER_RATE) if USER_RATE > 0 else constant(0)


def completion_problem(resp: Any) -> str | None:
    """What is wrong with a non-streamed chat completion answer, or None."""
    if resp.status_code != 200:
        return f"status {resp.status_code}: {(resp.text or '')[:300]}"
    try:
        body = json.loads(resp.text)
        message = body["choices"][0]["message"]
        usage = body["usage"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return f"not a chat completion ({exc!r}): {(resp.text or '')[:300]}"
    if body.get("object") != "chat.completion" or message.get("role") != "assistant":
        return f"unexpected object or role: {(resp.text or '')[:300]}"
    if not isinstance(message.get("content"), str) or not message["content"]:
        return "empty answer"
    if not isinstance(usage.get("total_tokens"), int) or usage["total_tokens"] <= 0:
        return f"no usage: {usage!r}"
    return None


def stream_problem(resp: Any) -> str | None:
    """What is wrong with a streamed chat completion answer, or None."""
    if resp.status_code != 200:
        return f"status {resp.status_code}: {(resp.text or '')[:300]}"
    if not resp.headers.get("content-type", "").startswith("text/event-stream"):
        return f"content-type {resp.headers.get('content-type')!r}"
    events_ = [e.strip() for e in (resp.text or "").replace("\r\n", "\n").split("\n\n") if e.strip()]
    if not events_ or events_[-1] != "data: [DONE]":
        return f"stream did not end with data: [DONE]: {(resp.text or '')[-300:]!r}"
    content = []
    for event in events_[:-1]:
        if not event.startswith("data: "):
            return f"not a data event: {event[:300]!r}"
        try:
            chunk = json.loads(event.removeprefix("data: "))
        except ValueError:
            return f"event is not JSON: {event[:300]!r}"
        if "error" in chunk:
            return f"error event: {event[:300]}"
        if chunk.get("object") != "chat.completion.chunk":
            return f"unexpected chunk: {event[:300]}"
        content.extend(c.get("delta", {}).get("content") or "" for c in chunk.get("choices", []))
    if not "".join(content):
        return "stream carried no content"
    return None


class ChatUser(FastHttpUser):
    scenario = "chat"
    wait_time = WAIT

    @task
    def chat(self) -> None:
        with self.client.post(PATH, json=BODY, headers=BENCH_HEADERS, catch_response=True, name="chat") as resp:
            if problem := completion_problem(resp):
                resp.failure(problem)


class StreamUser(FastHttpUser):
    scenario = "stream"
    wait_time = WAIT

    @task
    def stream(self) -> None:
        with self.client.post(
            PATH, json=STREAM_BODY, headers=BENCH_HEADERS, catch_response=True, name="stream"
        ) as resp:
            if problem := stream_problem(resp):
                resp.failure(problem)


class PoliciesUser(FastHttpUser):
    scenario = "policies"
    wait_time = WAIT

    @task
    def chat_as_random_key(self) -> None:
        headers = random.choice(POLICY_HEADERS)
        with self.client.post(PATH, json=BODY, headers=headers, catch_response=True, name="policies") as resp:
            if resp.status_code == 429:
                resp.failure(f"denied by a policy (limits are set never to be reached): {(resp.text or '')[:300]}")
            elif problem := completion_problem(resp):
                resp.failure(problem)
            elif not (resp.headers.get("x-ratelimit-limit-requests") and resp.headers.get("x-ratelimit-limit-tokens")):
                resp.failure("no x-ratelimit-limit-* headers: the matching policies were not applied")


# Every response time, unrounded (locust's own percentiles round to whole milliseconds).
_times: dict[str, list[float]] = {s: [] for s in SCENARIOS}


@events.request.add_listener
def _record(name: str, response_time: float, **_: Any) -> None:
    if name in _times:
        _times[name].append(response_time)


@events.quitting.add_listener
def _check_budgets(environment: Any, **_: Any) -> None:
    results = {}
    for user_class in environment.user_classes:
        scenario = user_class.scenario
        entry = environment.stats.entries.get((scenario, "POST"))
        times = sorted(_times[scenario])
        figures = {
            "requests": entry.num_requests if entry else 0,
            "failures": entry.num_failures if entry else 0,
            "fail_ratio": entry.fail_ratio if entry else 0.0,
            "rps": entry.total_rps if entry else 0.0,
            "p50_ms": percentile(times, 0.50),
            "p95_ms": percentile(times, 0.95),
            "p99_ms": percentile(times, 0.99),
            "max_ms": times[-1] if times else 0.0,
        }
        limits = budget(scenario)
        broken = violations(limits, figures)
        results[scenario] = {**figures, "budget": vars(limits), "broken": broken}
        verdict = "BUDGET EXCEEDED: " + "; ".join(broken) if broken else "within budget"
        print(
            f"[loadtest {scenario}] {figures['requests']} requests, {figures['rps']:.0f} req/s,"
            f" p50 {figures['p50_ms']:.2f} ms, p95 {figures['p95_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms,"
            f" {figures['failures']} failed (budget p50 {limits.p50_ms:g} / p95 {limits.p95_ms:g} /"
            f" p99 {limits.p99_ms:g} ms, failure ratio {limits.fail_ratio:g}): {verdict}",
            flush=True,
        )
        if broken:
            environment.process_exit_code = 1
    if environment.process_exit_code is None and not environment.runner.exceptions:
        # Within budget (which may allow some failures: locust would exit 1 on any).
        environment.process_exit_code = 0
    if path := os.environ.get("LOADTEST_RESULT"):
        with open(path, "w") as out:
            json.dump(results, out, indent=2)
