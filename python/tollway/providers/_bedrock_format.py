"""Translation from OpenAI chat completions to Amazon Bedrock's Converse API (`converse`,
`converse-stream`) and back. Pure functions and one stream decoder (of the events already
unframed by the native `EventStreamDecoder`); no I/O.

Rules that are not obvious from the code (the full table is in `docs/providers.md`):

- Content blocks: text, `image` (`png`/`jpeg`/`gif`/`webp`, bytes inline: Bedrock fetches no
  URLs, so an `http(s)` image is refused), `document` (PDF and office/text formats, inline),
  `toolUse` / `toolResult`, and `reasoningContent` (thinking text with its signature, or
  redacted bytes), which Claude on Bedrock needs back in the next turn with tool use.
- A `cache_control` marker on a text part becomes a `cachePoint` block right after it.
- `tool_choice: "none"` has no Converse equivalent; it is honoured by leaving the tools out,
  which Bedrock allows only while the conversation holds no tool calls (else it is refused).
- Model-specific fields go in `additionalModelRequestFields`, for Anthropic models only:
  `top_k`, and `thinking` (from an Anthropic client's `thinking`, or from `reasoning_effort`
  with Anthropic's budgets). Other models get neither.
- Usage: `inputTokens` excludes cache reads and writes, so prompt = input + cacheRead +
  cacheWrite. Bedrock reports no reasoning-token count.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from tollway.errors import TranslationError, UpstreamError
from tollway.providers._anthropic_format import THINKING_BUDGETS
from tollway.providers._openai_format import obj, parse_data_url
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
from tollway.usage import Usage

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "text/plain": "txt",
    "text/markdown": "md",
    "text/html": "html",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
# Bedrock document names: letters, digits, spaces, hyphens, parentheses and square brackets.
_DOCUMENT_NAME_BAD = re.compile(r"[^A-Za-z0-9 ()\[\]-]+")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def is_anthropic_model(model: str) -> bool:
    return "anthropic." in model or "claude" in model


# -- requests --------------------------------------------------------------------------------------


def _document_name(filename: Any) -> str:
    stem = filename.rsplit(".", 1)[0] if isinstance(filename, str) and filename else "document"
    name = " ".join(_DOCUMENT_NAME_BAD.sub("-", stem).split())
    return name[:200] or "document"


def _blocks(content: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("text", "refusal") and (role != "user" or kind == "text"):
            text = part.get("text") if kind == "text" else part.get("refusal")
            if text:
                blocks.append({"text": text})
                if isinstance(part.get("cache_control"), dict):
                    blocks.append({"cachePoint": {"type": "default"}})
        elif kind == "image_url" and role == "user":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parsed = parse_data_url(url) if isinstance(url, str) else None
            if parsed is None:
                raise TranslationError("Bedrock takes images inline only (data: URLs), not by URL")
            image_format = _IMAGE_FORMATS.get(parsed[0].lower())
            if image_format is None:
                raise TranslationError(f"Bedrock does not take `{parsed[0]}` images (png, jpeg, gif, webp)")
            blocks.append({"image": {"format": image_format, "source": {"bytes": parsed[1]}}})
        elif kind == "file" and role == "user":
            file = obj(part.get("file"))
            parsed = parse_data_url(file["file_data"]) if isinstance(file.get("file_data"), str) else None
            if parsed is None:
                raise TranslationError("`file` parts need inline `file_data` for Bedrock; `file_id` is OpenAI's")
            document_format = _DOCUMENT_FORMATS.get(parsed[0].lower())
            if document_format is None:
                raise TranslationError(f"Bedrock does not take `{parsed[0]}` documents")
            source = {"bytes": parsed[1]}
            document = {"format": document_format, "name": _document_name(file.get("filename")), "source": source}
            blocks.append({"document": document})
        else:
            raise TranslationError(f"`{kind}` content parts in `{role}` messages cannot be sent to Bedrock")
    return blocks


def _tool_use(call: Any) -> dict[str, Any]:
    function = obj(call.get("function")) if isinstance(call, dict) else {}
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise TranslationError(f"the arguments of tool call `{call.get('id')}` are not JSON") from None
    if not isinstance(parsed, dict):
        raise TranslationError(f"the arguments of tool call `{call.get('id')}` must be a JSON object for Bedrock")
    return {"toolUse": {"toolUseId": str(call.get("id", "")), "name": function.get("name", ""), "input": parsed}}


def _reasoning_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks = []
    for block in message.get("thinking_blocks") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "thinking":
            text = {"text": block.get("thinking", ""), "signature": block.get("signature", "")}
            blocks.append({"reasoningContent": {"reasoningText": text}})
        elif block.get("type") == "redacted_thinking":
            blocks.append({"reasoningContent": {"redactedContent": block.get("data", "")}})
    return blocks


def openai_request_to_bedrock(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat request (possibly with the private keys `_top_k`, `_thinking`) as a
    Converse request body (the model id goes in the URL)."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise TranslationError("`n` above 1 is not supported by Bedrock Converse")
    response_format = obj(body.get("response_format"))
    if response_format.get("type") not in (None, "text"):
        raise TranslationError(
            f"`response_format` `{response_format.get('type')}` is not supported by Bedrock Converse"
        )
    if body.get("audio") or "audio" in (body.get("modalities") or ()):
        raise TranslationError("audio output is not supported by Bedrock Converse")

    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    has_tool_history = False

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)  # Converse alternates roles: merge neighbours
        else:
            messages.append({"role": role, "content": blocks})

    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            raise TranslationError("each item of `messages` must be an object")
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.extend(_blocks(content, "system"))
        elif role == "user":
            add("user", _blocks(content, "user"))
        elif role == "assistant":
            if message.get("function_call"):
                raise TranslationError("the deprecated `function_call` is not supported; use `tool_calls`")
            calls = [_tool_use(call) for call in message.get("tool_calls") or ()]
            has_tool_history = has_tool_history or bool(calls)
            add("assistant", _reasoning_blocks(message) + _blocks(content, "assistant") + calls)
        elif role == "tool":
            has_tool_history = True
            text = content if isinstance(content, str) else "".join(b.get("text", "") for b in _blocks(content, "user"))
            result = {"toolUseId": str(message.get("tool_call_id", "")), "content": [{"text": text}]}
            add("user", [{"toolResult": result}])
        else:
            raise TranslationError(f"`{role}` messages are not supported by Bedrock Converse")

    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        config["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
    if config:
        out["inferenceConfig"] = config
    if is_anthropic_model(model):
        fields: dict[str, Any] = {}
        if body.get("_top_k") is not None:
            fields["top_k"] = body["_top_k"]
        if isinstance(body.get("_thinking"), dict):
            fields["thinking"] = body["_thinking"]
        elif body.get("reasoning_effort") in THINKING_BUDGETS:
            budget = THINKING_BUDGETS[body["reasoning_effort"]]
            if isinstance(max_tokens, int):
                budget = min(budget, max_tokens - 1)
            fields["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if fields:
            out["additionalModelRequestFields"] = fields

    tools = body.get("tools")
    choice = body.get("tool_choice")
    if isinstance(tools, list) and tools and not (choice == "none" and not has_tool_history):
        specs = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else tool
                raise TranslationError(f"`{kind}` tools are not supported by Bedrock; only `function` tools")
            function = obj(tool.get("function"))
            spec: dict[str, Any] = {"name": function.get("name", "")}
            if function.get("description"):
                spec["description"] = function["description"]
            spec["inputSchema"] = {"json": function.get("parameters") or {"type": "object", "properties": {}}}
            specs.append({"toolSpec": spec})
        tool_config: dict[str, Any] = {"tools": specs}
        if choice == "none":
            raise TranslationError(
                "`tool_choice: none` cannot be expressed by Bedrock Converse in a conversation that has tool calls"
            )
        if choice == "auto":
            tool_config["toolChoice"] = {"auto": {}}
        elif choice == "required":
            tool_config["toolChoice"] = {"any": {}}
        elif isinstance(choice, dict):
            tool_config["toolChoice"] = {"tool": {"name": obj(choice.get("function")).get("name", "")}}
        out["toolConfig"] = tool_config
    return out


# -- answers ---------------------------------------------------------------------------------------


def usage_from_bedrock(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    read = _int(usage.get("cacheReadInputTokens"))
    written = _int(usage.get("cacheWriteInputTokens"))
    return Usage(
        prompt_tokens=_int(usage.get("inputTokens")) + read + written,
        completion_tokens=_int(usage.get("outputTokens")),
        cached_tokens=read,
        cache_write_tokens=written,
    )


def finish_reason(value: Any) -> FinishReason:
    return _FINISH.get(value, "stop") if isinstance(value, str) else "stop"


def bedrock_response_to_openai(response: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """A Converse response as an OpenAI chat completion."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for block in obj(obj(response.get("output")).get("message")).get("content") or ():
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input") or {}).decode()
            calls.append(
                {
                    "id": str(use.get("toolUseId", "")),
                    "type": "function",
                    "function": {"name": use.get("name", ""), "arguments": arguments},
                }
            )
        elif isinstance(block.get("reasoningContent"), dict):
            reasoning = block["reasoningContent"]
            if isinstance(reasoning.get("reasoningText"), dict):
                text = reasoning["reasoningText"]
                signature = text.get("signature", "")
                thinking.append({"type": "thinking", "thinking": text.get("text", ""), "signature": signature})
            elif reasoning.get("redactedContent"):
                thinking.append({"type": "redacted_thinking", "data": reasoning["redactedContent"]})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
        message["thinking_blocks"] = thinking
    completion = {
        "id": "",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_reason(response.get("stopReason")),
            }
        ],
    }
    return completion, usage_from_bedrock(response.get("usage"))


class BedrockStreamDecoder:
    """ConverseStream events (type from the `:event-type` header, JSON payload) -> parts.

    Complete once both `messageStop` and the closing `metadata` (which carries the usage) have
    arrived.
    """

    __slots__ = ("_metadata", "_provider", "_stopped", "_tools", "_usage")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._tools: dict[int, int] = {}  # content block index -> OpenAI tool call index
        self._usage: Usage | None = None
        self._stopped = False
        self._metadata = False

    @property
    def complete(self) -> bool:
        return self._stopped and self._metadata

    @property
    def usage(self) -> Usage | None:
        return self._usage

    def feed(self, event_type: str, payload: dict[str, Any]) -> list[Part]:
        if event_type == "contentBlockDelta":
            delta = obj(payload.get("delta"))
            index = _int(payload.get("contentBlockIndex"))
            if isinstance(delta.get("text"), str):
                return [TextPart(delta["text"])] if delta["text"] else []
            if isinstance(delta.get("toolUse"), dict) and index in self._tools:
                return [ToolCallArgs(self._tools[index], str(delta["toolUse"].get("input", "")))]
            if isinstance(delta.get("reasoningContent"), dict):
                reasoning = delta["reasoningContent"]
                return [ReasoningPart(str(reasoning.get("text", "")), str(reasoning.get("signature", "")))]
            return []
        if event_type == "contentBlockStart":
            use = obj(obj(payload.get("start")).get("toolUse"))
            if use:
                tool_index = len(self._tools)
                self._tools[_int(payload.get("contentBlockIndex"))] = tool_index
                return [ToolCallStart(tool_index, str(use.get("toolUseId", "")), str(use.get("name", "")))]
            return []
        if event_type == "messageStop":
            self._stopped = True
            return [FinishPart(finish_reason(payload.get("stopReason")))]
        if event_type == "metadata":
            self._metadata = True
            self._usage = usage_from_bedrock(payload.get("usage")) or self._usage
            return []
        return []  # messageStart, contentBlockStop, and event types added later

    def exception(self, exception_type: str, payload: bytes) -> UpstreamError:
        """The failure for an exception message inside the stream."""
        try:
            message = str(obj(orjson.loads(payload)).get("message", exception_type))
        except orjson.JSONDecodeError:
            message = exception_type
        kind = {
            "throttlingException": FailureKind.RATE_LIMITED,
            "serviceUnavailableException": FailureKind.SERVER_ERROR,
            "internalServerException": FailureKind.SERVER_ERROR,
            "modelStreamErrorException": FailureKind.SERVER_ERROR,
            "modelTimeoutException": FailureKind.TIMEOUT,
            "validationException": FailureKind.CLIENT_ERROR,
        }.get(exception_type, FailureKind.BROKEN_STREAM)
        text = f"provider `{self._provider}` ended the stream with `{exception_type}`: {message}"
        return upstream_failure(Failure(kind, self._provider, text, upstream_message=message))
