"""Translation between OpenAI chat completions and Anthropic's Messages API, both ways.

Pure functions for requests and non-streamed answers, and two small stateful stream halves
(`AnthropicStreamDecoder`: Anthropic events -> parts; `AnthropicStreamEncoder`: parts ->
Anthropic events). No I/O. What is mapped, passed through or dropped is listed in
`docs/providers.md`; the rules that are not obvious from the code:

- Usage: Anthropic's `input_tokens` counts only the uncached input, so OpenAI's
  `prompt_tokens` = `input_tokens + cache_read_input_tokens + cache_creation_input_tokens`, with
  `cached_tokens` = cache reads. Going the other way, `input_tokens` = prompt - cached - written.
- Tool results: Anthropic puts them in a user message as `tool_result` blocks; OpenAI uses one
  `tool` message per result, right after the assistant's `tool_calls`. Images inside a tool
  result (which OpenAI's `tool` messages cannot hold) follow in a user message; a result with
  `is_error: true` becomes a `tool` message whose content starts with `Error: `.
- Thinking: Anthropic thinking blocks become `reasoning_content` plus `thinking_blocks` (with
  their signatures, which Anthropic needs back in the next turn); `redacted_thinking` travels
  only in `thinking_blocks`. OpenAI's `reasoning_effort` becomes an Anthropic thinking budget
  (`low` 1024, `medium` 8192, `high` 24576 tokens, capped below `max_tokens`).
- System: every `system` / `developer` message, wherever it is, joins Anthropic's top-level
  `system` (Anthropic has no system role inside the conversation), in order.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from tollway.errors import TranslationError
from tollway.providers._openai_format import finish_reason, obj, parse_data_url, text_of
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

ANTHROPIC_VERSION = "2023-06-01"
THINKING_BUDGETS = {"low": 1024, "medium": 8192, "high": 24576}
_MIN_THINKING_BUDGET = 1024

_TO_OPENAI_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TO_ANTHROPIC_STOP: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
# OpenAI request parameters with no Anthropic equivalent, dropped (listed in docs/providers.md).
DROPPED_OPENAI_PARAMS = (
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "store",
    "metadata",
    "service_tier",
    "prediction",
    "stream_options",
)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# -- usage ------------------------------------------------------------------------------------


def usage_from_anthropic(usage: Any) -> Usage | None:
    if not isinstance(usage, dict):
        return None
    read = _int(usage.get("cache_read_input_tokens"))
    written = _int(usage.get("cache_creation_input_tokens"))
    details = usage.get("output_tokens_details")
    return Usage(
        prompt_tokens=_int(usage.get("input_tokens")) + read + written,
        completion_tokens=_int(usage.get("output_tokens")),
        cached_tokens=read,
        cache_write_tokens=written,
        reasoning_tokens=_int(details.get("thinking_tokens")) if isinstance(details, dict) else 0,
    )


def anthropic_usage(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        usage = Usage()
    return {
        "input_tokens": max(0, usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens),
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    }


def to_openai_finish(stop_reason: Any) -> FinishReason:
    return _TO_OPENAI_FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def to_anthropic_stop(reason: FinishReason) -> str:
    return _TO_ANTHROPIC_STOP[reason]


# -- requests: Anthropic -> OpenAI ------------------------------------------------------------


def _image_url_of(source: Any) -> str:
    if isinstance(source, dict):
        if source.get("type") == "base64":
            return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return str(source["url"])
    raise TranslationError("an `image` block needs a `base64` or `url` source")


def _document_part(block: dict[str, Any]) -> dict[str, Any]:
    source = obj(block.get("source"))
    kind = source.get("type")
    if kind == "text":
        return {"type": "text", "text": str(source.get("data", ""))}
    if kind == "base64":
        media_type = source.get("media_type", "application/pdf")
        title = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {
            "type": "file",
            "file": {"filename": title, "file_data": f"data:{media_type};base64,{source.get('data', '')}"},
        }
    raise TranslationError(f"`document` blocks with a `{kind}` source cannot be sent to an OpenAI-format model")


def _user_parts(block: dict[str, Any]) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text", "")}
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": _image_url_of(block.get("source"))}}
    if kind == "document":
        return _document_part(block)
    raise TranslationError(f"`{kind}` content blocks cannot be sent to an OpenAI-format model")


def _tool_result_messages(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One `tool` message, and the image parts that must follow it in a user message."""
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if isinstance(content, list):
        texts = []
        for item in content:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text":
                texts.append(str(item.get("text", "")))
            elif item.get("type") == "image":
                images.append({"type": "image_url", "image_url": {"url": _image_url_of(item.get("source"))}})
            else:
                raise TranslationError(f"`{item.get('type')}` blocks in a `tool_result` cannot be sent to this model")
        text = "\n".join(texts)
    else:
        text = content if isinstance(content, str) else ""
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text}, images


def _assistant_message(content: Any) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
        elif kind == "thinking":
            thinking.append(
                {"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature", "")}
            )
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": block.get("data", "")})
        else:
            raise TranslationError(f"assistant `{kind}` blocks cannot be sent to an OpenAI-format model")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
        message["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
    return message


def anthropic_request_to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request (with the private keys
    `_top_k` and `_thinking` for providers that can use them)."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list) and system:
        texts = [{"type": "text", "text": str(b.get("text", ""))} for b in system if isinstance(b, dict)]
        messages.append({"role": "system", "content": texts})
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            raise TranslationError("each item of `messages` must be an object")
        role, content = message.get("role"), message.get("content")
        if role == "assistant":
            messages.append(_assistant_message(content))
            continue
        if role != "user":
            raise TranslationError(f"unknown message role `{role}`; expected `user` or `assistant`")
        if isinstance(content, str):
            messages.append({"role": "user", "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_result":
                tool_message, images = _tool_result_messages(block)
                messages.append(tool_message)
                parts.extend(images)
            else:
                parts.append(_user_parts(block))
        if parts:
            messages.append({"role": "user", "content": parts})

    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    if "max_tokens" in body:
        out["max_tokens"] = body["max_tokens"]
    for name in ("temperature", "top_p", "stream"):
        if name in body:
            out[name] = body[name]
    if body.get("stream") is True:
        out["stream_options"] = {"include_usage": True}
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        out["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if "top_k" in body:
        out["_top_k"] = body["top_k"]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        out["_thinking"] = thinking
    for name in ("mcp_servers", "container"):
        if body.get(name):
            raise TranslationError(f"`{name}` is an Anthropic feature that other providers do not have")

    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted = []
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            if tool.get("type") not in (None, "custom"):
                raise TranslationError(
                    f"the Anthropic server tool `{tool.get('type')}` runs only on Anthropic's side; "
                    "other providers cannot run it"
                )
            function: dict[str, Any] = {"name": tool.get("name", "")}
            if tool.get("description"):
                function["description"] = tool["description"]
            function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
            converted.append({"type": "function", "function": function})
        out["tools"] = converted
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "auto":
            out["tool_choice"] = "auto"
        elif kind == "any":
            out["tool_choice"] = "required"
        elif kind == "none":
            out["tool_choice"] = "none"
        elif kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
        if choice.get("disable_parallel_tool_use") is True and out.get("tools"):
            out["parallel_tool_calls"] = False
    return out


# -- requests: OpenAI -> Anthropic ------------------------------------------------------------


def _image_block(url: Any) -> dict[str, Any]:
    if not isinstance(url, str):
        raise TranslationError("an `image_url` part needs a `url`")
    parsed = parse_data_url(url)
    if parsed is not None:
        media_type, data = parsed
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _content_blocks(content: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        block: dict[str, Any]
        if kind == "text":
            if not part.get("text"):
                continue  # Anthropic rejects empty text blocks
            block = {"type": "text", "text": part["text"]}
        elif kind == "refusal" and role == "assistant":
            if not part.get("refusal"):
                continue
            block = {"type": "text", "text": part["refusal"]}
        elif kind == "image_url" and role == "user":
            image = part.get("image_url")
            block = _image_block(image.get("url") if isinstance(image, dict) else image)
        elif kind == "file" and role == "user":
            file = obj(part.get("file"))
            parsed = parse_data_url(file.get("file_data", "")) if isinstance(file.get("file_data"), str) else None
            if parsed is None:
                raise TranslationError(
                    "`file` parts need inline `file_data` (a data: URL) for Anthropic; `file_id` is OpenAI's"
                )
            block = {"type": "document", "source": {"type": "base64", "media_type": parsed[0], "data": parsed[1]}}
            if isinstance(file.get("filename"), str):
                block["title"] = file["filename"]
        else:
            raise TranslationError(f"`{kind}` content parts in `{role}` messages cannot be sent to Anthropic")
        if isinstance(part.get("cache_control"), dict):
            block["cache_control"] = part["cache_control"]
        blocks.append(block)
    return blocks


def _tool_use_block(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise TranslationError("each of `tool_calls` needs a `function`")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise TranslationError(
            f"the arguments of tool call `{call.get('id')}` are not JSON; Anthropic needs a JSON object"
        ) from None
    if not isinstance(parsed, dict):
        raise TranslationError(f"the arguments of tool call `{call.get('id')}` must be a JSON object for Anthropic")
    return {"type": "tool_use", "id": str(call.get("id", "")), "name": function.get("name", ""), "input": parsed}


def _tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": str(message.get("tool_call_id", ""))}
    if isinstance(content, list):
        block["content"] = _content_blocks(content, "user")
    else:
        block["content"] = content if isinstance(content, str) else ""
    return block


def _reasoning_budget(effort: Any, max_tokens: int) -> int | None:
    if effort in (None, "none", "minimal"):
        return None
    if effort not in THINKING_BUDGETS:
        raise TranslationError(f"unknown `reasoning_effort` `{effort}`; expected one of `low`, `medium`, `high`")
    budget = min(THINKING_BUDGETS[effort], max_tokens - 1)
    if budget < _MIN_THINKING_BUDGET:
        raise TranslationError(
            f"`reasoning_effort` needs `max_tokens` above {_MIN_THINKING_BUDGET} on Anthropic "
            f"(its smallest thinking budget is {_MIN_THINKING_BUDGET} tokens)"
        )
    return budget


def openai_request_to_anthropic(body: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat request (possibly carrying the private keys) as an Anthropic Messages request."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise TranslationError("`n` above 1 is not supported by Anthropic (one answer per request)")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise TranslationError(f"`response_format` `{response_format.get('type')}` is not supported by Anthropic")
    if body.get("audio") or "audio" in (body.get("modalities") or ()):
        raise TranslationError("audio output is not supported by Anthropic")
    if body.get("web_search_options") is not None:
        raise TranslationError("`web_search_options` is not supported by Anthropic's Messages API through tollway")

    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic alternates roles: merge neighbours
        else:
            turns.append({"role": role, "content": blocks})

    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            raise TranslationError("each item of `messages` must be an object")
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_content_blocks(content, "system"))
        elif role == "user":
            add("user", _content_blocks(content, "user"))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            for block in message.get("thinking_blocks") or ():
                if isinstance(block, dict) and block.get("type") in ("thinking", "redacted_thinking"):
                    blocks.append(dict(block))
            blocks.extend(_content_blocks(content, "assistant"))
            if message.get("function_call"):
                raise TranslationError("the deprecated `function_call` is not supported; use `tool_calls`")
            blocks.extend(_tool_use_block(call) for call in message.get("tool_calls") or ())
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result_block(message)])
        else:
            raise TranslationError(f"`{role}` messages are not supported by Anthropic")

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        max_tokens = default_max_tokens
    out: dict[str, Any] = {"model": model, "messages": turns, "max_tokens": max_tokens}
    if system:
        out["system"] = system
    for name in ("temperature", "top_p", "stream"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("_top_k") is not None:
        out["top_k"] = body["_top_k"]
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = stop
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if isinstance(body.get("_thinking"), dict):
        out["thinking"] = body["_thinking"]
    else:
        budget = _reasoning_budget(body.get("reasoning_effort"), max_tokens)
        if budget is not None:
            out["thinking"] = {"type": "enabled", "budget_tokens": budget}

    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else tool
                raise TranslationError(f"`{kind}` tools are not supported by Anthropic; only `function` tools")
            function = obj(tool.get("function"))
            spec: dict[str, Any] = {"name": function.get("name", "")}
            if function.get("description"):
                spec["description"] = function["description"]
            spec["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
            if isinstance(tool.get("cache_control"), dict):
                spec["cache_control"] = tool["cache_control"]
            converted.append(spec)
        out["tools"] = converted
    choice = body.get("tool_choice")
    anthropic_choice: dict[str, Any] | None = None
    if choice == "auto":
        anthropic_choice = {"type": "auto"}
    elif choice == "required":
        anthropic_choice = {"type": "any"}
    elif choice == "none":
        anthropic_choice = {"type": "none"}
    elif isinstance(choice, dict):
        function = obj(choice.get("function"))
        anthropic_choice = {"type": "tool", "name": function.get("name", "")}
    if body.get("parallel_tool_calls") is False and out.get("tools"):
        anthropic_choice = anthropic_choice or {"type": "auto"}
        if anthropic_choice["type"] != "none":
            anthropic_choice["disable_parallel_tool_use"] = True
    if anthropic_choice is not None and out.get("tools"):
        out["tool_choice"] = anthropic_choice
    return out


# -- answers ----------------------------------------------------------------------------------


def anthropic_message_to_openai(message: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
    """An Anthropic `Message` as an OpenAI chat completion (usage returned separately)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": str(block.get("id", "")),
                    "type": "function",
                    "function": {
                        "name": block.get("name", ""),
                        "arguments": orjson.dumps(block.get("input", {})).decode(),
                    },
                }
            )
        elif kind == "thinking":
            thinking.append(
                {"type": "thinking", "thinking": block.get("thinking", ""), "signature": block.get("signature", "")}
            )
        elif kind == "redacted_thinking":
            thinking.append({"type": "redacted_thinking", "data": block.get("data", "")})
        # Server tool blocks (`server_tool_use`, `web_search_tool_result`, ...) ran on Anthropic's
        # side; OpenAI's format has no place for them, and the answer's text already uses them.
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    if thinking:
        reply["reasoning_content"] = "".join(b.get("thinking", "") for b in thinking)
        reply["thinking_blocks"] = thinking
    completion = {
        "id": str(message.get("id", "")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model", ""),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": to_openai_finish(message.get("stop_reason")),
            }
        ],
    }
    return completion, usage_from_anthropic(message.get("usage"))


def openai_completion_to_anthropic(completion: dict[str, Any], usage: Usage | None, message_id: str) -> dict[str, Any]:
    """An OpenAI chat completion (choice 0) as an Anthropic `Message`."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    reply = obj(choice.get("message"))
    content: list[dict[str, Any]] = []
    blocks = reply.get("thinking_blocks")
    if isinstance(blocks, list) and blocks:
        content.extend(dict(b) for b in blocks if isinstance(b, dict))
    else:
        reasoning = reply.get("reasoning_content") or reply.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = text_of(reply.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in reply.get("tool_calls") or ():
        try:
            content.append(_tool_use_block(call))
        except TranslationError as exc:
            raise TranslationError(f"the model's answer cannot be given in Anthropic's format: {exc}") from None
    reason = finish_reason(choice.get("finish_reason"))
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": completion.get("model", ""),
        "content": content,
        "stop_reason": to_anthropic_stop(reason),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


# -- streams ----------------------------------------------------------------------------------


class AnthropicStreamDecoder:
    """Anthropic stream events (the `data` of each SSE event) -> parts.

    Complete at `message_stop`. Usage: `message_start` carries the input side, `message_delta`
    the cumulative output (and, on newer API versions, updated input counts).
    """

    __slots__ = ("_blocks", "_provider", "_tools", "_usage", "complete", "message_id", "model")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._blocks: dict[int, str] = {}  # Anthropic block index -> kind
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool call index
        self._usage: dict[str, Any] = {}
        self.complete = False
        self.message_id = ""
        self.model = ""

    @property
    def usage(self) -> Usage | None:
        return usage_from_anthropic(self._usage) if self._usage else None

    def _fail(self, kind: FailureKind, message: str, upstream_message: str | None = None) -> Exception:
        return upstream_failure(Failure(kind, self._provider, message, upstream_message=upstream_message))

    def feed(self, data: str) -> list[Part]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self._fail(
                FailureKind.BAD_RESPONSE, f"provider `{self._provider}` sent an event that is not JSON"
            ) from None
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = obj(event.get("delta"))
            index = event.get("index", 0)
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                return [TextPart(str(delta.get("text", "")))]
            if delta_kind == "input_json_delta" and index in self._tools:
                return [ToolCallArgs(self._tools[index], str(delta.get("partial_json", "")))]
            if delta_kind == "thinking_delta":
                return [ReasoningPart(str(delta.get("thinking", "")))]
            if delta_kind == "signature_delta":
                return [ReasoningPart(signature=str(delta.get("signature", "")))]
            return []  # citations and deltas of blocks OpenAI's format has no place for
        if kind == "content_block_start":
            block = obj(event.get("content_block"))
            index = event.get("index", 0)
            block_kind = str(block.get("type"))
            self._blocks[index] = block_kind
            if block_kind == "text" and block.get("text"):
                return [TextPart(str(block["text"]))]
            if block_kind == "thinking" and block.get("thinking"):
                return [ReasoningPart(str(block["thinking"]))]
            if block_kind == "tool_use":
                tool_index = len(self._tools)
                self._tools[index] = tool_index
                parts: list[Part] = [ToolCallStart(tool_index, str(block.get("id", "")), str(block.get("name", "")))]
                if block.get("input"):  # complete input given up front (not Anthropic's usual way)
                    parts.append(ToolCallArgs(tool_index, orjson.dumps(block["input"]).decode()))
                return parts
            return []
        if kind == "message_start":
            message = obj(event.get("message"))
            self.message_id = str(message.get("id", ""))
            self.model = str(message.get("model", ""))
            if isinstance(message.get("usage"), dict):
                self._usage.update(message["usage"])
            return []
        if kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._usage.update({k: v for k, v in usage.items() if v is not None})
            delta = obj(event.get("delta"))
            if delta.get("stop_reason"):
                return [FinishPart(to_openai_finish(delta["stop_reason"]))]
            return []
        if kind == "message_stop":
            self.complete = True
            return []
        if kind == "error":
            error = obj(event.get("error"))
            text = str(error.get("message", "unknown error"))
            error_kind = {
                "overloaded_error": FailureKind.SERVER_ERROR,
                "api_error": FailureKind.SERVER_ERROR,
                "rate_limit_error": FailureKind.RATE_LIMITED,
            }.get(str(error.get("type")), FailureKind.BROKEN_STREAM)
            raise self._fail(error_kind, f"provider `{self._provider}` ended the stream with an error: {text}", text)
        return []  # `ping`, `content_block_stop`, and event types added later


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AnthropicStreamEncoder:
    """Parts -> Anthropic stream events: `message_start`, then per block `content_block_start`,
    deltas and `content_block_stop`, and at the end `message_delta` (stop reason, usage) and
    `message_stop`.

    Usage is known only at the end of most upstream streams, so `message_start` reports zero
    tokens and `message_delta` reports them all (input counts included, as Anthropic's newer
    API versions do).
    """

    __slots__ = ("_finish", "_message_id", "_model", "_next_index", "_open", "_open_kind", "_started", "_tools")

    def __init__(self, message_id: str, model: str) -> None:
        self._message_id = message_id
        self._model = model
        self._started = False
        self._next_index = 0
        self._open: int | None = None  # the Anthropic index of the open block
        self._open_kind = ""
        self._tools: dict[int, int] = {}  # OpenAI tool call index -> Anthropic block index
        self._finish: FinishReason | None = None

    def _start_block(self, out: list[bytes], kind: str, block: dict[str, Any]) -> int:
        self._close(out)
        index = self._next_index
        self._next_index += 1
        self._open, self._open_kind = index, kind
        out.append(
            _event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        return index

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(_event("content_block_stop", {"type": "content_block_stop", "index": self._open}))
            self._open, self._open_kind = None, ""

    def _delta(self, out: list[bytes], index: int, delta: dict[str, Any]) -> None:
        out.append(_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))

    def encode(self, parts: list[Part]) -> list[bytes]:
        out: list[bytes] = []
        if not self._started:
            self._started = True
            message: dict[str, Any] = {
                "id": self._message_id,
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": anthropic_usage(None),
            }
            out.append(_event("message_start", {"type": "message_start", "message": message}))
        for part in parts:
            if isinstance(part, TextPart):
                if not part.text:
                    continue
                index = self._open if self._open_kind == "text" and self._open is not None else None
                if index is None:
                    index = self._start_block(out, "text", {"type": "text", "text": ""})
                self._delta(out, index, {"type": "text_delta", "text": part.text})
            elif isinstance(part, ReasoningPart):
                index = self._open if self._open_kind == "thinking" and self._open is not None else None
                if index is None:
                    index = self._start_block(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
                if part.text:
                    self._delta(out, index, {"type": "thinking_delta", "thinking": part.text})
                if part.signature:
                    self._delta(out, index, {"type": "signature_delta", "signature": part.signature})
            elif isinstance(part, ToolCallStart):
                block = {"type": "tool_use", "id": part.id, "name": part.name, "input": {}}
                self._tools[part.index] = self._start_block(out, "tool", block)
            elif isinstance(part, ToolCallArgs):
                tool_block = self._tools.get(part.index)
                if tool_block is not None and part.arguments:
                    self._delta(out, tool_block, {"type": "input_json_delta", "partial_json": part.arguments})
            elif isinstance(part, FinishPart):
                self._finish = part.reason
        return out

    def finish(self, usage: Usage | None) -> list[bytes]:
        out = self.encode([]) if not self._started else []
        self._close(out)
        delta = {"stop_reason": to_anthropic_stop(self._finish or "stop"), "stop_sequence": None}
        out.append(_event("message_delta", {"type": "message_delta", "delta": delta, "usage": anthropic_usage(usage)}))
        out.append(_event("message_stop", {"type": "message_stop"}))
        return out
