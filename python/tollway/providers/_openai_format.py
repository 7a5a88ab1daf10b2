"""OpenAI chat completions as the gateway's common format: usage, stream encoding and decoding.

Every translation goes through OpenAI's chat format (requests and non-streamed answers as
dicts, streams as `_stream` parts). Two extensions ride along, as other gateways spell them,
so that reasoning survives a round trip through an OpenAI-format client:

- `message.reasoning_content` (and `delta.reasoning_content` in streams): the reasoning text;
- `message.thinking_blocks`: Anthropic-shaped `thinking` / `redacted_thinking` blocks with their
  signatures, which Anthropic (and Claude on Bedrock) require back, unchanged, in the next turn
  when thinking is combined with tool use. Accepted on assistant messages in requests.

Private request keys (never sent to an OpenAI-format provider, see `to_openai_wire`) carry
what an Anthropic-format client asked for that OpenAI's format cannot say: `_top_k` and
`_thinking` (Anthropic's `thinking` object).
"""

from __future__ import annotations

from typing import Any

import orjson

from tollway.providers._stream import (
    FinishPart,
    FinishReason,
    Part,
    ReasoningPart,
    TextPart,
    ToolCallArgs,
    ToolCallStart,
)
from tollway.upstream import Failure, FailureKind, upstream_failure
from tollway.usage import Usage, usage_from_openai

PRIVATE_KEYS = ("_top_k", "_thinking")
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (for reading untrusted JSON)."""
    return value if isinstance(value, dict) else {}


def openai_usage(usage: Usage) -> dict[str, Any]:
    """A `Usage` as OpenAI reports it; cache writes (which OpenAI does not bill apart) appear as
    `prompt_tokens_details.cache_write_tokens` when there are any, as the OpenAI SDK's types allow."""
    prompt_details: dict[str, int] = {"cached_tokens": usage.cached_tokens}
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def finish_reason(value: Any) -> FinishReason:
    return _FINISH_REASONS.get(value, "stop") if isinstance(value, str) else "stop"


def to_openai_wire(body: dict[str, Any]) -> dict[str, Any]:
    """A translated request as an OpenAI-format provider takes it: without the private keys, and
    without reasoning on assistant messages (OpenAI rejects it; DeepSeek rejects
    `reasoning_content` in input)."""
    out = {k: v for k, v in body.items() if k not in PRIVATE_KEYS}
    messages = out.get("messages")
    if isinstance(messages, list):
        cleaned = []
        for m in messages:
            if isinstance(m, dict) and ("reasoning_content" in m or "thinking_blocks" in m):
                m = {k: v for k, v in m.items() if k not in ("reasoning_content", "thinking_blocks")}
            cleaned.append(m)
        out["messages"] = cleaned
    return out


def completion_body(completion: dict[str, Any], usage: Usage | None) -> bytes:
    """A translated completion as OpenAI-format JSON, its usage in OpenAI's terms."""
    if usage is not None:
        completion = {**completion, "usage": openai_usage(usage)}
    return orjson.dumps(completion)


def _frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class OpenAIStreamEncoder:
    """Parts -> OpenAI chat-completion chunks, ending with the usage chunk (when the client asked
    for `stream_options.include_usage`) and `data: [DONE]`."""

    __slots__ = ("_base", "_finished", "_include_usage", "_started")

    def __init__(self, chunk_id: str, model: str, created: int, include_usage: bool) -> None:
        self._base: dict[str, Any] = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }
        self._include_usage = include_usage
        self._started = False
        self._finished = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {
            **self._base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            payload["usage"] = None
        return _frame(payload)

    def encode(self, parts: list[Part]) -> list[bytes]:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._chunk({"role": "assistant", "content": ""}))
        text: list[str] = []  # adjacent text parts leave as one chunk
        for part in parts:
            if isinstance(part, TextPart):
                text.append(part.text)
                continue
            if text:
                out.append(self._chunk({"content": "".join(text)}))
                text.clear()
            if isinstance(part, ReasoningPart):
                if part.text:
                    out.append(self._chunk({"reasoning_content": part.text}))
                if part.signature:
                    block = {"type": "thinking", "thinking": "", "signature": part.signature}
                    out.append(self._chunk({"thinking_blocks": [block]}))
            elif isinstance(part, ToolCallStart):
                call = {
                    "index": part.index,
                    "id": part.id,
                    "type": "function",
                    "function": {"name": part.name, "arguments": ""},
                }
                out.append(self._chunk({"tool_calls": [call]}))
            elif isinstance(part, ToolCallArgs):
                if part.arguments:
                    call = {"index": part.index, "function": {"arguments": part.arguments}}
                    out.append(self._chunk({"tool_calls": [call]}))
            elif isinstance(part, FinishPart) and not self._finished:
                self._finished = True
                out.append(self._chunk({}, part.reason))
        if text:
            out.append(self._chunk({"content": "".join(text)}))
        return out

    def finish(self, usage: Usage | None) -> list[bytes]:
        out = self.encode([]) if not self._started else []
        if not self._finished:
            out += self.encode([FinishPart("stop")])
        if self._include_usage and usage is not None:
            out.append(_frame({**self._base, "choices": [], "usage": openai_usage(usage)}))
        out.append(b"data: [DONE]\n\n")
        return out


class OpenAIStreamDecoder:
    """OpenAI chat-completion chunks (the `data` of each SSE event) -> parts.

    Reads choice 0 only (the translating path never asks for `n > 1`). Usage comes from the
    usage chunk (`stream_options.include_usage`), or from Groq's `x_groq.usage`. The stream is
    complete at `[DONE]`.
    """

    __slots__ = ("_provider", "complete", "usage")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self.complete = False
        self.usage: Usage | None = None

    def feed(self, data: str) -> list[Part]:
        if data == "[DONE]":
            self.complete = True
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise upstream_failure(
                Failure(
                    FailureKind.BAD_RESPONSE,
                    self._provider,
                    f"provider `{self._provider}` sent an event that is not JSON",
                )
            ) from None
        if not isinstance(chunk, dict):
            return []
        if "error" in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise upstream_failure(
                Failure(
                    FailureKind.BROKEN_STREAM,
                    self._provider,
                    f"provider `{self._provider}` ended the stream with an error: {message}",
                    upstream_message=message if isinstance(message, str) else None,
                )
            )
        usage = chunk.get("usage")
        if usage is None and isinstance(chunk.get("x_groq"), dict):
            usage = chunk["x_groq"].get("usage")
        if isinstance(usage, dict):
            self.usage = usage_from_openai(usage)
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices:
            return []
        choice = choices[0]
        if not isinstance(choice, dict):
            return []
        parts: list[Part] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                parts.append(ReasoningPart(reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                parts.append(TextPart(content))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0)
                function = obj(call.get("function"))
                if call.get("id"):
                    parts.append(ToolCallStart(index, str(call["id"]), str(function.get("name") or "")))
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    parts.append(ToolCallArgs(index, arguments))
        reason = choice.get("finish_reason")
        if reason:
            parts.append(FinishPart(finish_reason(reason)))
        return parts


def parse_data_url(url: str) -> tuple[str, str] | None:
    """`data:<media type>;base64,<data>` -> (media type, base64 data); `None` for other URLs."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    return head.removesuffix(";base64") or "application/octet-stream", data


def text_of(content: Any) -> str:
    """The text of an OpenAI message content: a string, or the text parts of a list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""
