"""Every provider adapter end to end against the mock upstream (a real HTTP server speaking each
provider's wire format), for both client APIs, streamed and not, with tools and reasoning; the
results are read with the official SDKs' types. Faults are in `test_providers_faults.py`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from conftest import Server
from providers_support import (
    USER,
    WEATHER_TOOL_ANTHROPIC,
    WEATHER_TOOL_OPENAI,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
    run,
)
from tollway.errors import UpstreamError
from tollway.testing.mock_providers import (
    GEMINI_THOUGHT_SIGNATURE,
    REPLY,
    THINKING,
    THINKING_SIGNATURE,
    TOOL_PREAMBLE,
)
from tollway.upstream import FailureKind, failure_of
from tollway.usage import Usage

KINDS = ["anthropic", "openai", "gemini", "bedrock", "azure"]


def openai_body(**extra: Any) -> dict[str, Any]:
    return {"model": "alias", "messages": USER, "max_tokens": 200, **extra}


def anthropic_body(**extra: Any) -> dict[str, Any]:
    return {"model": "alias", "max_tokens": 200, "messages": USER, **extra}


def reported(mock: Server) -> dict[str, Any]:
    """The usage the mock reported for the last request, in `Usage` terms."""
    usage = mock.get_json("/_mock/last")["usage"]
    return dict(usage)


def assert_usage(usage: Usage | None, mock: Server) -> None:
    assert usage is not None
    expected = reported(mock)
    assert {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    } == expected
    assert usage.cached_tokens > 0  # the mock always reports cache reads: they must survive translation


@pytest.mark.parametrize("kind", KINDS)
def test_openai_client_plain_answer(kind: str, mock_providers: Server) -> None:
    out = run(kind, mock_providers.url, "plain", openai_body())
    completion = openai_completion(out.body)
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == out.usage.prompt_tokens  # type: ignore[union-attr]
    assert_usage(out.usage, mock_providers)


@pytest.mark.parametrize("kind", KINDS)
def test_openai_client_stream(kind: str, mock_providers: Server) -> None:
    out = run(
        kind, mock_providers.url, "plain", openai_body(stream=True, stream_options={"include_usage": True}), stream=True
    )
    _, final = openai_stream(out.body)
    assert final.choices[0].message.content == REPLY
    assert final.choices[0].finish_reason == "stop"
    assert len(out.chunks) > 3, "the stream must be forwarded as it arrives, not buffered"
    assert final.usage is not None and final.usage.completion_tokens == out.usage.completion_tokens  # type: ignore[union-attr]
    assert_usage(out.usage, mock_providers)


@pytest.mark.parametrize("kind", KINDS)
def test_openai_client_stream_without_usage_option(kind: str, mock_providers: Server) -> None:
    out = run(kind, mock_providers.url, "plain", openai_body(stream=True), stream=True)
    chunks, _ = openai_stream(out.body)
    assert b'"usage"' not in out.body and all(c.choices for c in chunks)
    assert_usage(out.usage, mock_providers)  # the gateway still measured it


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_tool_call(kind: str, stream: bool, mock_providers: Server) -> None:
    body = openai_body(tools=[WEATHER_TOOL_OPENAI], tool_choice="auto", stream=stream)
    out = run(kind, mock_providers.url, "tool-call", body, stream=stream)
    final = openai_stream(out.body)[1] if stream else openai_completion(out.body)
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == TOOL_PREAMBLE
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and orjson.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_client_plain_answer(kind: str, stream: bool, mock_providers: Server) -> None:
    out = run(kind, mock_providers.url, "plain", anthropic_body(stream=stream), api="anthropic", stream=stream)
    message = anthropic_stream(out.body)[1] if stream else anthropic_message(out.body)
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    usage = out.usage
    assert usage is not None
    assert message.usage.output_tokens == usage.completion_tokens
    assert message.usage.cache_read_input_tokens == usage.cached_tokens
    assert_usage(usage, mock_providers)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_client_tool_use(kind: str, stream: bool, mock_providers: Server) -> None:
    body = anthropic_body(tools=[WEATHER_TOOL_ANTHROPIC], tool_choice={"type": "auto"}, stream=stream)
    out = run(kind, mock_providers.url, "tool-call", body, api="anthropic", stream=stream)
    message = anthropic_stream(out.body)[1] if stream else anthropic_message(out.body)
    assert [b.type for b in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert tool.name == "get_weather" and tool.input == {"city": "Paris"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_client_thinking(kind: str, stream: bool, mock_providers: Server) -> None:
    body = anthropic_body(max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2048}, stream=stream)
    # `claude` in the name: Bedrock passes thinking only to Anthropic models; `think`: the mock reasons.
    out = run(kind, mock_providers.url, "anthropic.claude-think", body, api="anthropic", stream=stream)
    message = anthropic_stream(out.body)[1] if stream else anthropic_message(out.body)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == THINKING  # type: ignore[union-attr]
    # The signature Anthropic and Claude on Bedrock need back in the next turn reaches the client.
    expected_signature = THINKING_SIGNATURE if kind in ("anthropic", "bedrock") else ""
    assert message.content[0].signature == expected_signature  # type: ignore[union-attr]
    # Bedrock's Converse usage has no reasoning-token count; the others report one.
    assert out.usage is not None
    assert out.usage.reasoning_tokens == (0 if kind == "bedrock" else len(THINKING.split()))


@pytest.mark.parametrize("kind", KINDS)
def test_anthropic_client_multi_turn_with_tool_result(kind: str, mock_providers: Server) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_7", "name": "get_weather", "input": {"city": "Oslo"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_7", "content": "cold"}]},
    ]
    body = anthropic_body(messages=messages, tools=[WEATHER_TOOL_ANTHROPIC], system="Be brief.")
    out = run(kind, mock_providers.url, "tool-call", body, api="anthropic")
    message = anthropic_message(out.body)
    assert message.content[0].text == REPLY  # type: ignore[union-attr]  # a tool result came back: it answers


# -- what each provider received ------------------------------------------------------------------


def test_anthropic_provider_receives_a_translated_openai_request(mock_providers: Server) -> None:
    body = {
        "model": "alias",
        "messages": [{"role": "system", "content": "Be brief."}, *USER],
        "temperature": 0.3,
        "stop": ["END"],
    }
    run("anthropic", mock_providers.url, "claude-up", body)
    last = mock_providers.get_json("/_mock/last")
    assert last["path"] == "/v1/messages"
    assert last["headers"]["x-api-key"] == "test-key-1"
    assert last["headers"]["anthropic-version"] == "2023-06-01"
    assert last["body"] == {
        "model": "claude-up",
        "messages": [{"role": "user", "content": [{"type": "text", "text": USER[0]["content"]}]}],
        "max_tokens": 4096,
        "system": [{"type": "text", "text": "Be brief."}],
        "temperature": 0.3,
        "stop_sequences": ["END"],
    }


def test_anthropic_provider_relays_an_anthropic_request(mock_providers: Server) -> None:
    body = anthropic_body(system=[{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}], top_k=5)
    run("anthropic", mock_providers.url, "claude-up", body, api="anthropic")
    sent = mock_providers.get_json("/_mock/last")["body"]
    assert sent == {**body, "model": "claude-up"}  # as sent, but the upstream model name


ROTATING = {
    "anthropic": ("x-api-key", 'kind = "anthropic"\nbase_url = "{{url}}/v1"\napi_key = {keys}'),
    "gemini": ("x-goog-api-key", 'kind = "gemini"\nbase_url = "{{url}}/v1beta"\napi_key = {keys}'),
    "azure": ("api-key", 'kind = "azure"\nbase_url = "{{url}}"\napi_key = {keys}'),
    "openai": ("authorization", 'kind = "openai"\nbase_url = "{{url}}/v1"\napi_key = {keys}'),
}


def sent_keys(mock: Server, header: str) -> list[str]:
    return [r["headers"][header].removeprefix("Bearer ") for r in mock.get_json("/_mock/requests")]


@pytest.mark.parametrize("kind", sorted(ROTATING))
def test_key_rotation_skips_a_rejected_key(kind: str, mock_providers: Server) -> None:
    mock_providers.request("POST", "/_mock/reset")
    header, table = ROTATING[kind]
    keys = '[{{ env = "TW_TEST_BAD_KEY" }}, {{ env = "TW_TEST_KEY" }}]'
    out = run(kind, mock_providers.url, "plain", openai_body(), calls=3, table=table.format(keys=keys))
    assert openai_completion(out.body).choices[0].message.content == REPLY
    sent = sent_keys(mock_providers, header)
    # Call 1 starts at the bad key (rejected) and moves on; the bad key then cools down, so
    # calls 2 and 3 go straight to the good one.
    assert sent == ["bad-key-0", "test-key-1", "test-key-1", "test-key-1"]


@pytest.mark.parametrize("kind", sorted(ROTATING))
def test_key_rotation_spreads_calls_and_skips_a_rate_limited_key(kind: str, mock_providers: Server) -> None:
    mock_providers.request("POST", "/_mock/reset")
    header, table = ROTATING[kind]
    keys = '[{{ env = "TW_TEST_KEY" }}, {{ env = "TW_TEST_KEY2" }}, {{ env = "TW_TEST_LIMITED_KEY" }}]'
    run(kind, mock_providers.url, "plain", openai_body(), calls=4, table=table.format(keys=keys))
    assert sent_keys(mock_providers, header) == [
        "test-key-1",
        "test-key-2",
        "limited-key-0",
        "test-key-1",
        "test-key-2",
    ]


def test_openai_provider_receives_a_translated_anthropic_request(mock_providers: Server) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"}]},
    ]
    body = anthropic_body(
        system="Be brief.",
        messages=messages,
        tools=[WEATHER_TOOL_ANTHROPIC],
        top_k=3,
        stream=True,
        stop_sequences=["X"],
    )
    run("openai", mock_providers.url, "gpt-up", body, api="anthropic", stream=True)
    last = mock_providers.get_json("/_mock/last")
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["authorization"] == "Bearer test-key-1"
    assert "anthropic-version" not in last["headers"]
    assert last["body"] == {
        "model": "gpt-up",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": USER[0]["content"]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"},
        ],
        "max_tokens": 200,
        "stream": True,
        "stream_options": {"include_usage": True},
        "stop": ["X"],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The weather in a city",
                    "parameters": WEATHER_TOOL_ANTHROPIC["input_schema"],
                },
            }
        ],
    }  # `top_k` has no OpenAI equivalent: dropped


def test_gemini_provider_receives_a_translated_request(mock_providers: Server) -> None:
    body = openai_body(messages=[{"role": "system", "content": "Be brief."}, *USER], temperature=0.1)
    run("gemini", mock_providers.url, "gemini-up", body)
    last = mock_providers.get_json("/_mock/last")
    assert last["path"] == "/v1beta/models/gemini-up:generateContent"
    assert last["headers"]["x-goog-api-key"] == "test-key-1"
    assert last["body"] == {
        "contents": [{"role": "user", "parts": [{"text": USER[0]["content"]}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.1, "maxOutputTokens": 200},
    }
    run("gemini", mock_providers.url, "gemini-up", openai_body(stream=True), stream=True)
    last = mock_providers.get_json("/_mock/last")
    assert last["path"] == "/v1beta/models/gemini-up:streamGenerateContent" and last["query"] == {"alt": "sse"}


def test_gemini_thought_signature_round_trip(mock_providers: Server) -> None:
    """A Gemini function call's thought signature goes to the client in the tool call id and
    back to Gemini with the call, as Gemini 3 requires."""
    out = run("gemini", mock_providers.url, "tool-call", openai_body(tools=[WEATHER_TOOL_OPENAI]))
    message = openai_completion(out.body).choices[0].message
    history = [
        *USER,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny"},  # type: ignore[index]
    ]
    run("gemini", mock_providers.url, "tool-call", openai_body(messages=history, tools=[WEATHER_TOOL_OPENAI]))
    contents = mock_providers.get_json("/_mock/last")["body"]["contents"]
    call = contents[1]["parts"][-1]
    assert call == {
        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
        "thoughtSignature": GEMINI_THOUGHT_SIGNATURE,
    }
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}],
    }


def test_bedrock_provider_receives_a_signed_translated_request(mock_providers: Server) -> None:
    model = "anthropic.claude-3-5-sonnet-20240620-v1:0"
    body = anthropic_body(system="Be brief.", top_k=7, stop_sequences=["END"], temperature=0.5)
    run("bedrock", mock_providers.url, model, body, api="anthropic")
    last = mock_providers.get_json("/_mock/last")
    # The model id is percent-encoded in the path; the mock verified the SigV4 signature over it.
    assert last["path"] == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert last["model"] == model
    authorization = last["headers"]["authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCKEXAMPLE/")
    assert "/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=" in authorization
    assert last["body"] == {
        "messages": [{"role": "user", "content": [{"text": USER[0]["content"]}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 200, "temperature": 0.5, "stopSequences": ["END"]},
        "additionalModelRequestFields": {"top_k": 7},
    }


def test_bedrock_rejects_a_bad_signature(mock_providers: Server) -> None:
    table = (
        'kind = "bedrock"\nbase_url = "{url}"\nregion = "us-east-1"\n'
        'aws_access_key_id = {{ env = "TW_TEST_AWS_ID" }}\naws_secret_access_key = {{ env = "TW_TEST_KEY" }}'
    )
    with pytest.raises(UpstreamError) as info:
        run("bedrock", mock_providers.url, "plain", openai_body(), table=table)
    failure = failure_of(info.value)
    assert failure.kind is FailureKind.CREDENTIALS and failure.upstream_status == 403
