"""OpenAI chat -> Gemini `generateContent` and back: requests, answers, usage, thought
signatures carried in tool call ids, and the stream decoder."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from providers_support import anthropic_stream, openai_stream
from tollway.errors import TranslationError, UpstreamError
from tollway.providers._anthropic_format import AnthropicStreamEncoder, anthropic_request_to_openai
from tollway.providers._gemini_format import (
    SKIP_SIGNATURE,
    GeminiStreamDecoder,
    call_id,
    gemini_response_to_openai,
    openai_request_to_gemini,
    signature_of,
    usage_from_gemini,
)
from tollway.providers._openai_format import OpenAIStreamEncoder
from tollway.providers._stream import FinishPart, Part, ReasoningPart, TextPart, ToolCallArgs, ToolCallStart
from tollway.upstream import FailureKind, failure_of
from tollway.usage import Usage

SIGNATURE = base64.b64encode(b"\x00\xfftrusted-thought\xfe").decode()


def test_request_roles_parts_and_tools() -> None:
    signed = call_id(SIGNATURE)
    body = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Metric units."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.webp?s=1"}},
                    {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    {
                        "id": signed,
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Rome"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": signed, "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
        ],
        "temperature": 0.4,
        "top_p": 0.8,
        "_top_k": 20,
        "max_tokens": 300,
        "stop": "END",
        "seed": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "user": "u1",
        "logit_bias": {"1": 2},
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "tools": [
            {"type": "function", "function": {"name": "weather", "description": "w", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "time"}},
        ],
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
    }
    out = openai_request_to_gemini(body, "gemini-2.5-flash")
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Metric units."}]}
    user, model, results = out["contents"]
    assert user == {
        "role": "user",
        "parts": [
            {"text": "Compare"},
            {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
            {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/x.webp?s=1"}},
            {"inlineData": {"mimeType": "audio/wav", "data": "UklG"}},
        ],
    }
    assert model == {
        "role": "model",
        "parts": [
            {"text": "Looking."},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}, "thoughtSignature": SIGNATURE},
            {"functionCall": {"name": "time", "args": {}}},
        ],
    }
    # Results are matched by function name, found from the call ids; JSON objects stay objects.
    assert results == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "weather", "response": {"temp": 21}}},
            {"functionResponse": {"name": "time", "response": {"result": "noon"}}},
        ],
    }
    assert out["generationConfig"] == {
        "temperature": 0.4,
        "topP": 0.8,
        "topK": 20,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.25,
        "seed": 3,
        "maxOutputTokens": 300,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
    }
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {"name": "weather", "description": "w", "parametersJsonSchema": {"type": "object"}},
                {"name": "time"},
            ]
        }
    ]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}}


@pytest.mark.parametrize(
    ("choice", "mode"), [("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"})]
)
def test_tool_choice_modes(choice: str, mode: dict[str, Any]) -> None:
    body = {"messages": [], "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": choice}
    assert openai_request_to_gemini(body, "m")["toolConfig"] == {"functionCallingConfig": mode}


def test_reasoning_and_anthropic_thinking() -> None:
    out = openai_request_to_gemini({"messages": [], "reasoning_effort": "low"}, "m")
    assert out["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 1024}}
    out = openai_request_to_gemini({"messages": [], "reasoning_effort": "none"}, "m")
    assert out["generationConfig"] == {"thinkingConfig": {"thinkingBudget": 0}}
    anthropic = {
        "model": "m",
        "max_tokens": 5000,
        "messages": [],
        "thinking": {"type": "enabled", "budget_tokens": 3000},
    }
    out = openai_request_to_gemini(anthropic_request_to_openai(anthropic), "m")
    assert out["generationConfig"] == {
        "maxOutputTokens": 5000,
        "thinkingConfig": {"thinkingBudget": 3000, "includeThoughts": True},
    }


def test_gemini_3_calls_without_a_signature_get_the_documented_sentinel() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": "call_x", "function": {"name": "f", "arguments": "{}"}}]},
        ]
    }
    parts = openai_request_to_gemini(body, "gemini-3-pro-preview")["contents"][1]["parts"]
    assert parts == [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": SKIP_SIGNATURE}]
    parts = openai_request_to_gemini(body, "gemini-2.5-pro")["contents"][1]["parts"]
    assert parts == [{"functionCall": {"name": "f", "args": {}}}]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"messages": [], "n": 3}, "`n`"),
        ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}, "answers no tool call"),
        ({"messages": [], "tools": [{"type": "custom", "custom": {}}]}, "custom"),
        ({"messages": [], "reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]}, "file_id"),
    ],
)
def test_requests_gemini_cannot_express(body: dict[str, Any], match: str) -> None:
    with pytest.raises(TranslationError, match=match):
        openai_request_to_gemini(body, "m")


@given(st.binary(min_size=1, max_size=300))
def test_thought_signatures_survive_the_tool_call_id(raw: bytes) -> None:
    signature = base64.b64encode(raw).decode()
    identifier = call_id(signature)
    assert signature_of(identifier) == signature
    assert identifier.replace("_", "").replace("-", "").isalnum()  # safe as an Anthropic tool_use id too


def test_plain_ids_carry_no_signature() -> None:
    assert signature_of(call_id(None)) is None and signature_of("call_abc") is None


def test_usage_counts_thoughts_as_output_and_cache_as_input() -> None:
    meta = {
        "promptTokenCount": 100,
        "toolUsePromptTokenCount": 5,
        "candidatesTokenCount": 40,
        "thoughtsTokenCount": 60,
        "cachedContentTokenCount": 30,
        "totalTokenCount": 205,
    }
    assert usage_from_gemini(meta) == Usage(
        prompt_tokens=105, completion_tokens=100, cached_tokens=30, reasoning_tokens=60
    )


def test_response_to_openai() -> None:
    response = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Considering.", "thought": True},
                        {"text": "It is "},
                        {"text": "warm."},
                        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": SIGNATURE},
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5},
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "r1",
    }
    completion, usage = gemini_response_to_openai(response, "gemini-2.5-flash")
    parsed = ChatCompletion.model_validate(completion)
    message = parsed.choices[0].message
    assert message.content == "It is warm." and parsed.choices[0].finish_reason == "tool_calls"
    assert parsed.model == "gemini-2.5-flash-001"
    (call,) = message.tool_calls or []
    assert call.function.name == "f" and orjson.loads(call.function.arguments) == {"a": 1}
    assert signature_of(call.id) == SIGNATURE
    assert completion["choices"][0]["message"]["reasoning_content"] == "Considering."
    assert usage == Usage(prompt_tokens=10, completion_tokens=5)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
     ("PROHIBITED_CONTENT", "content_filter"), ("OTHER", "stop"), ("MALFORMED_FUNCTION_CALL", "stop")],
)  # fmt: skip
def test_finish_reasons(reason: str, finish: str) -> None:
    completion, _ = gemini_response_to_openai({"candidates": [{"content": {"parts": []}, "finishReason": reason}]}, "m")
    assert completion["choices"][0]["finish_reason"] == finish


def test_blocked_prompt_is_a_content_filter_finish() -> None:
    completion, _ = gemini_response_to_openai({"promptFeedback": {"blockReason": "SAFETY"}}, "m")
    assert completion["choices"][0]["finish_reason"] == "content_filter"
    decoder = GeminiStreamDecoder("p")
    assert decoder.feed(orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"}}).decode()) == [
        FinishPart("content_filter")
    ]
    assert decoder.complete


def _chunk(parts: list[dict[str, Any]], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}}
    if finish:
        candidate["finishReason"] = finish
    payload: dict[str, Any] = {"candidates": [candidate]}
    if usage:
        payload["usageMetadata"] = usage
    return orjson.dumps(payload).decode()


STREAM = [
    _chunk([{"text": "Plan.", "thought": True}], usage={"promptTokenCount": 9}),
    _chunk([{"text": "Hello"}]),
    _chunk([{"text": " there"}, {"functionCall": {"name": "f", "args": {"x": [1]}}, "thoughtSignature": SIGNATURE}]),
    _chunk(
        [],
        "STOP",
        usage={"promptTokenCount": 9, "candidatesTokenCount": 7, "thoughtsTokenCount": 2, "cachedContentTokenCount": 4},
    ),
]


def test_stream_decoder() -> None:
    decoder = GeminiStreamDecoder("p")
    parts: list[Part] = []
    for data in STREAM:
        assert not decoder.complete
        parts += decoder.feed(data)
    assert decoder.complete
    start = parts[3]
    assert isinstance(start, ToolCallStart) and signature_of(start.id) == SIGNATURE
    assert parts == [
        ReasoningPart("Plan."),
        TextPart("Hello"),
        TextPart(" there"),
        ToolCallStart(0, start.id, "f"),
        ToolCallArgs(0, '{"x":[1]}'),
        FinishPart("tool_calls"),
    ]
    assert decoder.usage == Usage(prompt_tokens=9, completion_tokens=9, cached_tokens=4, reasoning_tokens=2)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_stream_to_both_clients_with_the_sdks(api: str) -> None:
    decoder = GeminiStreamDecoder("p")
    encoder = OpenAIStreamEncoder("c", "g", 1, True) if api == "openai" else AnthropicStreamEncoder("msg_1", "g")
    frames: list[bytes] = []
    for data in STREAM:
        frames += encoder.encode(decoder.feed(data))
    frames += encoder.finish(decoder.usage)
    if api == "openai":
        final = openai_stream(b"".join(frames))[1]
        assert final.choices[0].message.content == "Hello there"
        assert final.choices[0].message.tool_calls[0].function.arguments == '{"x":[1]}'
        assert final.usage.completion_tokens_details.reasoning_tokens == 2
    else:
        message = anthropic_stream(b"".join(frames))[1]
        assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
        assert message.content[2].input == {"x": [1]}  # type: ignore[union-attr]
        assert message.stop_reason == "tool_use" and message.usage.cache_read_input_tokens == 4


def test_stream_error_chunk_is_a_failure() -> None:
    decoder = GeminiStreamDecoder("p")
    with pytest.raises(UpstreamError) as info:
        decoder.feed('{"error": {"code": 500, "message": "Internal error", "status": "INTERNAL"}}')
    assert failure_of(info.value).kind is FailureKind.BROKEN_STREAM
