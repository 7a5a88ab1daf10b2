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
    # Anthropic's message framing is an approximation whatever the tokenizer, and the response says so.
    raw = client.messages.with_raw_response.count_tokens(model="mock-gpt", messages=messages)  # type: ignore[arg-type]
    assert raw.headers["x-tollway-token-count"] == "approximate"
    assert raw.parse().input_tokens == counted.input_tokens


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


# -- OpenAI's embeddings and Responses API, passed through ------------------------------------


def test_embeddings_via_sdk(gateway: Server, upstream: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ALICE_KEY, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model="gpt-test", input=["one two three", "four five"])
    result = raw.parse()
    assert [d.embedding for d in result.data] == [[0.25, -0.5, 0.125]] * 2
    assert result.usage.prompt_tokens == 5
    assert json.loads(upstream.get_json("/_mock/last")["body"])["model"] == "gpt-mock"  # the upstream's name
    assert raw.headers["x-tollway-provider"] == "up"


def test_embeddings_errors(gateway: Server) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer {ALICE_KEY}"}
    status, _, body = gateway.request("POST", "/v1/embeddings", json.dumps({"model": "gpt-test"}).encode(), headers)
    assert status == 400 and json.loads(body)["error"]["code"] == "missing_input"
    # The built-in mock provider serves chat only.
    status, _, body = gateway.request(
        "POST", "/v1/embeddings", json.dumps({"model": "mock-gpt", "input": "x"}).encode(), headers
    )
    assert status == 400 and json.loads(body)["error"]["code"] == "unsupported_endpoint"


@pytest.mark.parametrize("stream", [False, True])
def test_responses_api_passthrough(gateway: Server, stream: bool) -> None:
    import openai

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ALICE_KEY, max_retries=0)
    if stream:
        with client.responses.stream(model="gpt-test", input="say something") as events:
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            final = events.get_final_response()
    else:
        final = client.responses.create(model="gpt-test", input="say something")
        text = final.output_text
    from tollway.testing.mock_openai import REPLY

    assert text == REPLY
    assert final.usage is not None and final.usage.input_tokens == 2
    assert final.usage.output_tokens == len(REPLY.split())


def test_well_known_models_route_by_the_catalog(mock_providers: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A model the catalog knows (`claude-sonnet-5`, kind `anthropic`) needs no [[models]]
    entry: it goes to the configured provider of its kind."""
    from conftest import start_gateway, stop
    from gateway_support import ALICE_KEY as KEY
    from gateway_support import SECRETS, common_tables, provider_table

    config = provider_table("claude", "anthropic", mock_providers.url) + common_tables()
    gw = start_gateway(config, tmp_path, SECRETS)
    try:
        client = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
        raw = client.messages.with_raw_response.create(
            model="claude-sonnet-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.parse().content
        assert raw.headers["x-tollway-provider"] == "claude"
        assert raw.headers["x-tollway-model"] == "claude-sonnet-5"
        status, _, _ = gw.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({"model": "not-in-any-catalog", "messages": [{"role": "user", "content": "x"}]}).encode(),
            {"content-type": "application/json", "authorization": f"Bearer {KEY}"},
        )
        assert status == 404
    finally:
        stop(gw.proc)
