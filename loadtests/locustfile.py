"""Locust load test against the quickstart (`make run` in another terminal, then `make loadtest`).

Mixes non-streamed and streamed chat requests with the quickstart's documented demo key, and
checks each answer, so a failure under load shows up as a failure, not only as latency.
"""

from __future__ import annotations

import json

from locust import FastHttpUser, between, task

DEMO_KEY = "tw-demo-quickstart"
HEADERS = {"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"}
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Hello there, gateway."}]}


class ChatUser(FastHttpUser):
    wait_time = between(0, 0.01)

    @task(3)
    def chat(self) -> None:
        with self.client.post("/v1/chat/completions", json=BODY, headers=HEADERS, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {resp.text[:200]}")
            elif not json.loads(resp.text)["choices"][0]["message"]["content"]:
                resp.failure("empty answer")

    @task(1)
    def chat_stream(self) -> None:
        body = {**BODY, "stream": True}
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=HEADERS,
            catch_response=True,
            name="/v1/chat/completions [stream]",
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
            elif not resp.text.rstrip().endswith("data: [DONE]"):
                resp.failure("stream did not end with [DONE]")
