"""OpenAI chat -> Bedrock Converse and back: requests, answers, usage and the stream decoder."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.chat import ChatCompletion

from providers_support import anthropic_stream, openai_stream
from tollway.errors import TranslationError
from tollway.providers._anthropic_format import AnthropicStreamEncoder, anthropic_request_to_openai
from tollway.providers._bedrock_format import (
    BedrockStreamDecoder,
    bedrock_response_to_openai,
    openai_request_to_bedrock,
    usage_from_bedrock,
)
from tollway.providers._openai_format import OpenAIStreamEncoder
from tollway.providers._stream import FinishPart, Part, ReasoningPart, TextPart, ToolCallArgs, ToolCallStart
from tollway.upstream import FailureKind, failure_of
from tollway.usage import Usage

CLAUDE = "anthropic.claude-sonnet-4-20250514-v1:0"


def test_request_roles_blocks_tools_and_config() -> None:
    body = {
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Read these"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}},
                    {
                        "type": "file",
                        "file": {"filename": "Q3 report (final).pdf", "file_data": "data:application/pdf;base64,JVBE"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "thinking_blocks": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "b64"},
                ],
                "tool_calls": [
                    {"id": "tooluse_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "tooluse_1", "content": "done"},
            {"role": "user", "content": "And?"},
        ],
        "max_tokens": 256,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 1,
        "user": "u",
        "tools": [
            {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
        ],
        "tool_choice": "required",
    }
    out = openai_request_to_bedrock(body, "amazon.nova-pro-v1:0")
    assert out["system"] == [{"text": "Be brief."}, {"cachePoint": {"type": "default"}}]
    user, assistant, results = out["messages"]
    assert user == {
        "role": "user",
        "content": [
            {"text": "Read these"},
            {"image": {"format": "jpeg", "source": {"bytes": "/9j/"}}},
            {"document": {"format": "pdf", "name": "Q3 report (final)", "source": {"bytes": "JVBE"}}},
        ],
    }
    assert assistant == {
        "role": "assistant",
        "content": [
            {"reasoningContent": {"reasoningText": {"text": "hm", "signature": "sig"}}},
            {"reasoningContent": {"redactedContent": "b64"}},
            {"text": "Checking."},
            {"toolUse": {"toolUseId": "tooluse_1", "name": "f", "input": {"a": 1}}},
        ],
    }
    assert results == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "done"}]}}, {"text": "And?"}],
    }
    assert out["inferenceConfig"] == {"maxTokens": 256, "temperature": 0.7, "topP": 0.9, "stopSequences": ["END"]}
    assert out["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "f", "description": "d", "inputSchema": {"json": {"type": "object"}}}}],
        "toolChoice": {"any": {}},
    }
    assert "additionalModelRequestFields" not in out  # not an Anthropic model


def test_anthropic_fields_go_to_claude_models_only() -> None:
    anthropic = {
        "model": "m",
        "max_tokens": 4000,
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "messages": [{"role": "user", "content": "hi"}],
    }
    body = anthropic_request_to_openai(anthropic)
    assert openai_request_to_bedrock(body, CLAUDE)["additionalModelRequestFields"] == {
        "top_k": 5,
        "thinking": {"type": "enabled", "budget_tokens": 2000},
    }
    assert "additionalModelRequestFields" not in openai_request_to_bedrock(body, "meta.llama3-70b-instruct-v1:0")
    effort = {"messages": [], "max_tokens": 3000, "reasoning_effort": "medium"}
    fields = openai_request_to_bedrock(effort, CLAUDE)["additionalModelRequestFields"]
    assert fields == {"thinking": {"type": "enabled", "budget_tokens": 2999}}


def test_tool_choice_none_leaves_the_tools_out_when_it_can() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = openai_request_to_bedrock(
        {"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "none"}, "m"
    )
    assert "toolConfig" not in out
    history = [
        {"role": "assistant", "tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t", "content": "r"},
    ]
    with pytest.raises(TranslationError, match="tool_choice: none"):
        openai_request_to_bedrock({"messages": history, "tools": tools, "tool_choice": "none"}, "m")


def image(url: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (image("https://x/a.png"), "inline"),
        (image("data:image/tiff;base64,AA"), "tiff"),
        ({"messages": [], "n": 2}, "`n`"),
        ({"messages": [], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input_audio"),
    ],
)
def test_requests_bedrock_cannot_express(body: dict[str, Any], match: str) -> None:
    with pytest.raises(TranslationError, match=match):
        openai_request_to_bedrock(body, "m")


def test_usage_adds_cache_reads_and_writes_to_the_prompt() -> None:
    usage = usage_from_bedrock(
        {
            "inputTokens": 10,
            "outputTokens": 20,
            "totalTokens": 80,
            "cacheReadInputTokens": 40,
            "cacheWriteInputTokens": 10,
        }
    )
    assert usage == Usage(prompt_tokens=60, completion_tokens=20, cached_tokens=40, cache_write_tokens=10)


def test_response_to_openai() -> None:
    response = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [
                    {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "sig"}}},
                    {"text": "Answer"},
                    {"toolUse": {"toolUseId": "tooluse_9", "name": "f", "input": {"q": "x"}}},
                ],
            }
        },
        "stopReason": "tool_use",
        "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        "metrics": {"latencyMs": 100},
    }
    completion, usage = bedrock_response_to_openai(response, CLAUDE)
    parsed = ChatCompletion.model_validate(completion)
    assert parsed.choices[0].finish_reason == "tool_calls" and parsed.choices[0].message.content == "Answer"
    call = (parsed.choices[0].message.tool_calls or [])[0]
    assert call.id == "tooluse_9" and orjson.loads(call.function.arguments) == {"q": "x"}
    message = completion["choices"][0]["message"]
    assert message["reasoning_content"] == "Think."
    assert message["thinking_blocks"] == [{"type": "thinking", "thinking": "Think.", "signature": "sig"}]
    assert usage == Usage(prompt_tokens=3, completion_tokens=4)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
     ("guardrail_intervened", "content_filter"), ("content_filtered", "content_filter"),
     ("model_context_window_exceeded", "length")],
)  # fmt: skip
def test_stop_reasons(reason: str, finish: str) -> None:
    completion, _ = bedrock_response_to_openai({"stopReason": reason}, "m")
    assert completion["choices"][0]["finish_reason"] == finish


STREAM: list[tuple[str, dict[str, Any]]] = [
    ("messageStart", {"role": "assistant"}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hm."}}}),
    ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}}),
    ("contentBlockStop", {"contentBlockIndex": 0}),
    ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"text": "Hi"}, "p": "abc"}),
    ("contentBlockStop", {"contentBlockIndex": 1}),
    ("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_1", "name": "f"}}}),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": '{"a":'}}}),
    ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "2}"}}}),
    ("contentBlockStop", {"contentBlockIndex": 2}),
    ("messageStop", {"stopReason": "tool_use"}),
    ("metadata", {"usage": {"inputTokens": 5, "outputTokens": 9, "cacheReadInputTokens": 2}, "metrics": {}}),
]


def test_stream_decoder() -> None:
    decoder = BedrockStreamDecoder("p")
    parts: list[Part] = []
    for event_type, payload in STREAM:
        assert not decoder.complete
        parts += decoder.feed(event_type, payload)
    assert decoder.complete
    assert parts == [
        ReasoningPart("Hm."),
        ReasoningPart("", "sig"),
        TextPart("Hi"),
        ToolCallStart(0, "tooluse_1", "f"),
        ToolCallArgs(0, '{"a":'),
        ToolCallArgs(0, "2}"),
        FinishPart("tool_calls"),
    ]
    assert decoder.usage == Usage(prompt_tokens=7, completion_tokens=9, cached_tokens=2)


def test_stream_without_metadata_is_incomplete() -> None:
    decoder = BedrockStreamDecoder("p")
    for event_type, payload in STREAM[:-1]:
        decoder.feed(event_type, payload)
    assert not decoder.complete


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_stream_to_both_clients_with_the_sdks(api: str) -> None:
    decoder = BedrockStreamDecoder("p")
    encoder = OpenAIStreamEncoder("c", "m", 1, True) if api == "openai" else AnthropicStreamEncoder("msg_1", "m")
    frames: list[bytes] = []
    for event_type, payload in STREAM:
        frames += encoder.encode(decoder.feed(event_type, payload))
    frames += encoder.finish(decoder.usage)
    if api == "openai":
        final = openai_stream(b"".join(frames))[1]
        assert final.choices[0].message.content == "Hi" and final.choices[0].finish_reason == "tool_calls"
    else:
        message = anthropic_stream(b"".join(frames))[1]
        assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
        assert message.content[0].signature == "sig"  # type: ignore[union-attr]
        assert message.content[2].input == {"a": 2}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        ("throttlingException", FailureKind.RATE_LIMITED),
        ("modelStreamErrorException", FailureKind.SERVER_ERROR),
        ("internalServerException", FailureKind.SERVER_ERROR),
        ("serviceUnavailableException", FailureKind.SERVER_ERROR),
        ("validationException", FailureKind.CLIENT_ERROR),
        ("modelTimeoutException", FailureKind.TIMEOUT),
        ("somethingNew", FailureKind.BROKEN_STREAM),
    ],
)
def test_stream_exceptions(exception: str, kind: FailureKind) -> None:
    error = BedrockStreamDecoder("p").exception(exception, b'{"message": "slow down"}')
    failure = failure_of(error)  # type: ignore[arg-type]
    assert failure.kind is kind and failure.upstream_message == "slow down"
