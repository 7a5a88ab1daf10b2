"""OpenAI chat <-> Anthropic Messages translation: requests, answers, usage and both stream
halves, checked against the official SDKs' types."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic.types import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from providers_support import openai_stream
from tollway.errors import TranslationError, UpstreamError
from tollway.providers._anthropic_format import (
    AnthropicStreamDecoder,
    AnthropicStreamEncoder,
    anthropic_message_to_openai,
    anthropic_request_to_openai,
    anthropic_usage,
    openai_completion_to_anthropic,
    openai_request_to_anthropic,
    usage_from_anthropic,
)
from tollway.providers._openai_format import OpenAIStreamDecoder, OpenAIStreamEncoder, to_openai_wire
from tollway.providers._stream import FinishPart, Part, ReasoningPart, TextPart, ToolCallArgs, ToolCallStart
from tollway.server.errors import ApiError, from_failure
from tollway.upstream import Failure, FailureKind, failure_of
from tollway.usage import Usage

PNG = "iVBORw0KGgo="


# -- requests: Anthropic -> OpenAI ----------------------------------------------------------------


def test_anthropic_request_with_system_multi_turn_images_and_tools() -> None:
    body = {
        "model": "claude-x",
        "max_tokens": 300,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "temperature": 0.2,
        "top_k": 40,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        "tools": [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Look it up.", "signature": "sig-1"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    }
    out = anthropic_request_to_openai(body)
    assert out["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
            "thinking_blocks": [{"type": "thinking", "thinking": "Look it up.", "signature": "sig-1"}],
            "reasoning_content": "Look it up.",
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": [{"type": "text", "text": "And tomorrow?"}]},
    ]
    assert out["max_tokens"] == 300 and out["temperature"] == 0.2
    assert out["stop"] == ["END"] and out["user"] == "u-1"
    assert out["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "weather", "parameters": {"type": "object"}},
        }
    ]
    assert out["tool_choice"] == "required" and out["parallel_tool_calls"] is False
    # What OpenAI's format cannot say rides in private keys, which never reach an OpenAI server.
    assert out["_top_k"] == 40 and out["_thinking"] == {"type": "enabled", "budget_tokens": 2048}
    wire = to_openai_wire(out)
    assert "_top_k" not in wire and "_thinking" not in wire
    assert "thinking_blocks" not in wire["messages"][2] and "reasoning_content" not in wire["messages"][2]


def test_anthropic_tool_result_errors_and_images() -> None:
    body = {
        "model": "m",
        "max_tokens": 10,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "a", "content": "disk full", "is_error": True},
                    {
                        "type": "tool_result",
                        "tool_use_id": "b",
                        "content": [
                            {"type": "text", "text": "a chart"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                        ],
                    },
                ],
            }
        ],
    }
    messages = anthropic_request_to_openai(body)["messages"]
    assert messages == [
        {"role": "tool", "tool_call_id": "a", "content": "Error: disk full"},
        {"role": "tool", "tool_call_id": "b", "content": "a chart"},
        # OpenAI's tool messages hold no images: they follow in a user message.
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_anthropic_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [], "tools": [{"name": "f"}], "tool_choice": choice}
    out = anthropic_request_to_openai(body)
    assert out["tool_choice"] == expected and "parallel_tool_calls" not in out
    assert out["tools"][0]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_anthropic_features_other_providers_lack_are_refused() -> None:
    base = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(TranslationError, match="web_search_20250305"):
        anthropic_request_to_openai({**base, "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    with pytest.raises(TranslationError, match="mcp_servers"):
        anthropic_request_to_openai({**base, "mcp_servers": [{"url": "https://x"}]})
    url_doc = {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}
    with pytest.raises(TranslationError, match="document"):
        anthropic_request_to_openai({**base, "messages": [{"role": "user", "content": [url_doc]}]})


def test_anthropic_streaming_request_asks_for_usage() -> None:
    out = anthropic_request_to_openai({"model": "m", "max_tokens": 5, "stream": True, "messages": []})
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}


# -- requests: OpenAI -> Anthropic ----------------------------------------------------------------


def test_openai_request_to_anthropic_full() -> None:
    body = {
        "model": "alias",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look:", "cache_control": {"type": "ephemeral"}},
                    {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
                    {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBER"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "one"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "Thanks"},
        ],
        "max_completion_tokens": 500,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "STOP",
        "user": "u-9",
        "seed": 7,
        "presence_penalty": 0.1,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
    }
    out = openai_request_to_anthropic(body, "claude-up", 4096)
    assert out["model"] == "claude-up" and out["max_tokens"] == 500
    assert out["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use metric units."}]
    user, assistant, results = out["messages"]
    assert user["content"] == [
        {"type": "text", "text": "Look:", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/b.png"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"},
            "title": "a.pdf",
        },
    ]
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}},
            {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
        ],
    }
    # Tool results and the next user message share one user turn (Anthropic alternates roles).
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "two"}]},
            {"type": "text", "text": "Thanks"},
        ],
    }
    assert out["stop_sequences"] == ["STOP"] and out["metadata"] == {"user_id": "u-9"}
    assert out["temperature"] == 0.5 and out["top_p"] == 0.9
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object"}}]
    assert out["tool_choice"] == {"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    for dropped in ("seed", "presence_penalty", "user", "parallel_tool_calls", "max_completion_tokens"):
        assert dropped not in out


def test_openai_request_defaults_and_reasoning_effort() -> None:
    out = openai_request_to_anthropic({"messages": [{"role": "user", "content": "hi"}]}, "c", 1234)
    assert out["max_tokens"] == 1234 and "thinking" not in out
    out = openai_request_to_anthropic(
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000, "reasoning_effort": "medium"}, "c", 1
    )
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 3999}  # capped below max_tokens
    out = openai_request_to_anthropic({"messages": [], "max_tokens": 30000, "reasoning_effort": "high"}, "c", 1)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    with pytest.raises(TranslationError, match="max_tokens"):
        openai_request_to_anthropic({"messages": [], "max_tokens": 500, "reasoning_effort": "low"}, "c", 1)


def test_openai_thinking_blocks_go_back_to_anthropic_first() -> None:
    block = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
    body = {
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "a",
                "thinking_blocks": [block, {"type": "redacted_thinking", "data": "xyz"}],
                "reasoning_content": "hmm",
            },
        ]
    }
    assistant = openai_request_to_anthropic(body, "c", 100)["messages"][1]
    assert assistant["content"] == [block, {"type": "redacted_thinking", "data": "xyz"}, {"type": "text", "text": "a"}]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"n": 2}, "`n`"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "audio"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "custom"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "function"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input_audio"),
        (
            {
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}
                ]
            },
            "not JSON",
        ),
    ],
)
def test_openai_requests_anthropic_cannot_express(extra: dict[str, Any], match: str) -> None:
    with pytest.raises(TranslationError, match=match):
        openai_request_to_anthropic({"messages": [{"role": "user", "content": "x"}], **extra}, "c", 100)


# -- answers and usage ------------------------------------------------------------------------------


def test_usage_both_ways_with_cache_and_thinking() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 20,
            "output_tokens": 50,
            "output_tokens_details": {"thinking_tokens": 30},
        }
    )
    assert usage == Usage(
        prompt_tokens=130, completion_tokens=50, cached_tokens=100, cache_write_tokens=20, reasoning_tokens=30
    )
    assert anthropic_usage(usage) == {
        "input_tokens": 10,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 100,
        "output_tokens": 50,
    }
    assert usage_from_anthropic(None) is None


def test_anthropic_message_to_openai_completion() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "Let me see.", "signature": "sig"},
            {"type": "text", "text": "It is "},
            {"type": "text", "text": "sunny."},
            {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": [1, 2]}},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "cache_read_input_tokens": 3, "output_tokens": 7},
    }
    completion, usage = anthropic_message_to_openai(message)
    parsed = ChatCompletion.model_validate({**completion, "usage": None})
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "It is sunny."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.id == "toolu_9" and call.function.name == "f" and orjson.loads(call.function.arguments) == {"a": [1, 2]}
    assert completion["choices"][0]["message"]["reasoning_content"] == "Let me see."
    assert completion["choices"][0]["message"]["thinking_blocks"][0]["signature"] == "sig"
    assert usage == Usage(prompt_tokens=8, completion_tokens=7, cached_tokens=3)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
def test_stop_reasons_to_openai(stop_reason: str, finish: str) -> None:
    completion, _ = anthropic_message_to_openai({"content": [], "stop_reason": stop_reason})
    assert completion["choices"][0]["finish_reason"] == finish


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")],
)
def test_openai_completion_to_anthropic_message(finish: str, stop_reason: str) -> None:
    completion = {
        "id": "chatcmpl-1",
        "model": "gpt-x",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {
                    "role": "assistant",
                    "content": "Hi.",
                    "reasoning_content": "thought",
                    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
            }
        ],
    }
    usage = Usage(prompt_tokens=20, completion_tokens=9, cached_tokens=4, reasoning_tokens=2)
    message = Message.model_validate(openai_completion_to_anthropic(completion, usage, "msg_abc"))
    assert message.id == "msg_abc" and message.stop_reason == stop_reason and message.model == "gpt-x"
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use"]
    assert message.usage.input_tokens == 16 and message.usage.cache_read_input_tokens == 4
    assert message.usage.output_tokens == 9


def test_openai_answer_with_invalid_tool_arguments_cannot_be_anthropic() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    completion = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}
    with pytest.raises(TranslationError, match="Anthropic's format"):
        openai_completion_to_anthropic(completion, None, "msg_1")


# -- streams ----------------------------------------------------------------------------------------


def _sse(kind: str, payload: dict[str, Any]) -> str:
    return orjson.dumps({"type": kind, **payload}).decode()


ANTHROPIC_EVENTS = [
    _sse(
        "message_start",
        {
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 12, "cache_read_input_tokens": 4, "output_tokens": 1},
            }
        },
    ),
    _sse("ping", {}),
    _sse("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    _sse("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Think"}}),
    _sse("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "sig=="}}),
    _sse("content_block_stop", {"index": 0}),
    _sse("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
    _sse("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Hel"}}),
    _sse("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "lo"}}),
    _sse("content_block_stop", {"index": 1}),
    _sse(
        "content_block_start",
        {"index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}},
    ),
    _sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}}),
    _sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}}),
    _sse("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
    _sse("content_block_stop", {"index": 2}),
    _sse("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 21}}),
    _sse("message_stop", {}),
]


def test_anthropic_stream_decodes_to_parts_and_usage() -> None:
    decoder = AnthropicStreamDecoder("p")
    parts: list[Part] = []
    for data in ANTHROPIC_EVENTS:
        assert not decoder.complete
        parts += decoder.feed(data)
    assert decoder.complete
    assert parts == [
        ReasoningPart("Think"),
        ReasoningPart(signature="sig=="),
        TextPart("Hel"),
        TextPart("lo"),
        ToolCallStart(0, "toolu_1", "f"),
        ToolCallArgs(0, ""),
        ToolCallArgs(0, '{"a": '),
        ToolCallArgs(0, "1}"),
        FinishPart("tool_calls"),
    ]
    assert decoder.usage == Usage(prompt_tokens=16, completion_tokens=21, cached_tokens=4)


def test_anthropic_stream_to_openai_client_with_the_sdk() -> None:
    decoder = AnthropicStreamDecoder("p")
    encoder = OpenAIStreamEncoder("chatcmpl-1", "claude-x", 1, include_usage=True)
    frames: list[bytes] = []
    for data in ANTHROPIC_EVENTS:
        frames += encoder.encode(decoder.feed(data))
    frames += encoder.finish(decoder.usage)
    chunks, final = openai_stream(b"".join(frames))
    message = final.choices[0].message
    assert message.content == "Hello"
    assert message.tool_calls[0].function.arguments == '{"a": 1}'
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage.prompt_tokens == 16 and final.usage.prompt_tokens_details.cached_tokens == 4
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


def test_openai_stream_without_include_usage_has_no_usage_chunk() -> None:
    encoder = OpenAIStreamEncoder("chatcmpl-1", "m", 1, include_usage=False)
    body = b"".join(encoder.encode([TextPart("hi"), FinishPart("stop")]) + encoder.finish(Usage(1, 1)))
    _, final = openai_stream(body)
    assert b'"usage"' not in body and final.choices[0].message.content == "hi"


def test_anthropic_stream_error_event_is_a_failure() -> None:
    decoder = AnthropicStreamDecoder("p")
    with pytest.raises(UpstreamError) as info:
        decoder.feed(_sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
    failure = failure_of(info.value)
    assert failure.kind is FailureKind.SERVER_ERROR and failure.upstream_message == "Overloaded"


OPENAI_CHUNKS = [
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"reasoning_content": "Hmm."}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Hi "}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "there"}, "finish_reason": None}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {
                    "tool_calls": [
                        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
                    ]
                },
                "finish_reason": None,
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x"'}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 2}"}}]}}]},
    {
        "choices": [
            {
                "index": 0,
                "delta": {"tool_calls": [{"index": 1, "id": "call_2", "function": {"name": "g", "arguments": "{}"}}]},
            }
        ]
    },
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 10},
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
    },
]


def test_openai_stream_to_anthropic_client_with_the_sdk() -> None:
    from providers_support import anthropic_stream

    decoder = OpenAIStreamDecoder("p")
    encoder = AnthropicStreamEncoder("msg_1", "gpt-x")
    frames: list[bytes] = []
    for chunk in OPENAI_CHUNKS:
        frames += encoder.encode(decoder.feed(orjson.dumps(chunk).decode()))
    assert decoder.feed("[DONE]") == [] and decoder.complete
    frames += encoder.finish(decoder.usage)
    events, message = anthropic_stream(b"".join(frames))
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[1].text == "Hi there"  # type: ignore[union-attr]
    assert message.content[2].input == {"x": 2} and message.content[3].input == {}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 20 and message.usage.cache_read_input_tokens == 10
    assert message.usage.output_tokens == 12
    # Every block that was started was stopped, in order.
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == [0, 1, 2, 3]


def test_encoders_finish_a_stream_that_had_no_parts() -> None:
    from providers_support import anthropic_stream

    _, message = anthropic_stream(b"".join(AnthropicStreamEncoder("msg_1", "m").finish(None)))
    assert message.content == [] and message.stop_reason == "end_turn"
    _, final = openai_stream(b"".join(OpenAIStreamEncoder("c", "m", 1, True).finish(None)))
    assert final.choices[0].finish_reason == "stop"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=20))
def test_any_split_of_text_deltas_gives_the_same_text(pieces: list[str]) -> None:
    """However a provider splits the text, both client formats carry exactly the same text."""
    from providers_support import anthropic_stream

    text = "".join(pieces)
    parts: list[Part] = [TextPart(p) for p in pieces]
    openai_enc = OpenAIStreamEncoder("c", "m", 1, include_usage=False)
    body = b"".join(openai_enc.encode([*parts, FinishPart("stop")]) + openai_enc.finish(None))
    assert openai_stream(body)[1].choices[0].message.content == text
    anthropic_enc = AnthropicStreamEncoder("msg", "m")
    body = b"".join(anthropic_enc.encode(parts) + anthropic_enc.finish(None))
    message = anthropic_stream(body)[1]
    assert len(message.content) == 1 and message.content[0].text == text  # type: ignore[union-attr]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=10), st.integers(min_value=1, max_value=7))
def test_any_split_of_an_anthropic_stream_decodes_the_same(pieces: list[str], every: int) -> None:
    """Text deltas decoded and re-encoded for an OpenAI client keep the text and the usage."""
    events = [
        _sse("message_start", {"message": {"id": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(_sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}}) for p in pieces),
        _sse("content_block_stop", {"index": 0}),
        _sse("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": len(pieces)}}),
        _sse("message_stop", {}),
    ]
    decoder = AnthropicStreamDecoder("p")
    encoder = OpenAIStreamEncoder("c", "m", 1, include_usage=True)
    frames: list[bytes] = []
    for i in range(0, len(events), every):  # events arrive in batches, as network chunks would bring them
        batch: list[Part] = []
        for data in events[i : i + every]:
            batch += decoder.feed(data)
        frames += encoder.encode(batch)
    frames += encoder.finish(decoder.usage)
    final = openai_stream(b"".join(frames))[1]
    assert final.choices[0].message.content == "".join(pieces)
    assert final.usage.prompt_tokens == 3 and final.usage.completion_tokens == len(pieces)


# -- error bodies in the client's format -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_bodies(status: int, kind: str) -> None:
    import anthropic

    error = ApiError(status, "x", "code", "something went wrong")
    body = orjson.loads(error.anthropic_body("req_1"))
    assert body == {"type": "error", "error": {"type": kind, "message": "something went wrong"}, "request_id": "req_1"}
    assert error.anthropic_event("req_1") == b"event: error\ndata: " + error.anthropic_body("req_1") + b"\n\n"
    # The Anthropic SDK reads the shape as its own error type.
    parsed = anthropic.types.ErrorResponse.model_validate(body)
    assert parsed.error.type == kind


def test_context_length_failure_is_a_400_for_both_apis() -> None:
    error = from_failure(Failure(FailureKind.CONTEXT_LENGTH, "p", "too long"))
    assert error.status == 400 and error.code == "context_length_exceeded"
    assert orjson.loads(error.anthropic_body("r"))["error"]["type"] == "invalid_request_error"
