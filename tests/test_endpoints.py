"""Endpoints beside chat: Anthropic's `count_tokens` (answered natively), `/v1/models`, and the
Anthropic Messages API served by the built-in mock provider."""

from __future__ import annotations

import json

import anthropic
import pytest

from conftest import ALICE_KEY, BOB_KEY, Server
from tollway._native import TokenCounter


def test_count_tokens_with_the_anthropic_sdk(gateway: Server) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=ALICE_KEY, max_retries=0)
    messages = [{"role": "user", "content": "How many tokens is this sentence, roughly?"}]
    counted = client.messages.count_tokens(model="mock-gpt", messages=messages)  # type: ignore[arg-type]
    body = json.dumps({"model": "mock-gpt", "messages": messages}).encode()
    # No tokenizer is configured for the mock model: the default counter, Anthropic's rule.
    assert counted.input_tokens == TokenCounter("o200k_base").count_anthropic_messages(body)[0] > 5


def test_count_tokens_errors(gateway: Server) -> None:
    headers = {"content-type": "application/json", "x-api-key": ALICE_KEY}
    status, _, body = gateway.request("POST", "/v1/messages/count_tokens", b"{not json", headers)
    error = json.loads(body)  # in Anthropic's format, as the endpoint is Anthropic's
    assert status == 400 and error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    status, _, body = gateway.request(
        "POST", "/v1/messages/count_tokens", json.dumps({"model": "nope", "messages": []}).encode(), headers
    )
    assert status == 404
    bob = {"content-type": "application/json", "x-api-key": BOB_KEY}
    status, _, _ = gateway.request(
        "POST", "/v1/messages/count_tokens", json.dumps({"model": "mock-gpt", "messages": []}).encode(), bob
    )
    assert status == 403


@pytest.mark.parametrize("stream", [False, True])
def test_messages_api_on_the_mock_provider(gateway: Server, stream: bool) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=ALICE_KEY, max_retries=0)
    messages = [{"role": "user", "content": "Hello"}]
    if stream:
        with client.messages.stream(model="mock-gpt", max_tokens=100, messages=messages) as events:  # type: ignore[arg-type]
            text = "".join(events.text_stream)
            final = events.get_final_message()
    else:
        final = client.messages.create(model="mock-gpt", max_tokens=100, messages=messages)  # type: ignore[arg-type]
        text = "".join(b.text for b in final.content if b.type == "text")
    assert text == "one two three four five six seven eight"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 8
