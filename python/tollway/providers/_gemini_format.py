"""Translation from OpenAI chat completions to Google's Gemini API (`generateContent`,
`streamGenerateContent?alt=sse`) and back. Pure functions and one stream decoder; no I/O.

Rules that are not obvious from the code (the full table is in `docs/providers.md`):

- Roles: `assistant` is Gemini's `model`; `system`/`developer` messages become
  `systemInstruction`; `tool` messages become `functionResponse` parts of a user turn, named
  after the call they answer (Gemini matches results by name), their content parsed as a JSON
  object when it is one, else wrapped as `{"result": content}`.
- Tool schemas go in `parametersJsonSchema` (full JSON Schema, not Gemini's OpenAPI subset).
- Thought signatures: Gemini 3 requires the `thoughtSignature` of a function call back in the
  next turn. OpenAI's format has nowhere to keep it but the tool call id, so a call's id is
  `call_<random>_ts_<signature, base64url>` and is read back when the client returns the call.
  A Gemini 3 call replayed without one gets the documented `skip_thought_signature_validator`.
- Usage: `candidatesTokenCount` excludes thoughts, OpenAI's `completion_tokens` includes
  reasoning, so completion = candidates + thoughts; prompt = prompt + tool-use prompt tokens;
  `cachedContentTokenCount` is the cached part of the prompt.
- Reasoning: `reasoning_effort` becomes a thinking budget (`none` 0, `low` 1024, `medium`
  8192, `high` 24576); an Anthropic client's `thinking` becomes that budget with
  `includeThoughts`, and thought parts come back as reasoning.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
from typing import Any

import orjson

from tollway.errors import TranslationError
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

THINKING_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
SKIP_SIGNATURE = "skip_thought_signature_validator"
_SIGNATURE_MARK = "_ts_"
_FINISH: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
}
_MIME_BY_EXTENSION = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "pdf": "application/pdf",
}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


# -- tool call ids carrying thought signatures ----------------------------------------------------


def call_id(signature: str | None) -> str:
    """A new tool call id, carrying Gemini's thought signature (base64) when there is one."""
    base = "call_" + os.urandom(6).hex()
    if not signature:
        return base
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return base  # not base64 as documented: cannot be carried, so it is not
    return base + _SIGNATURE_MARK + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def signature_of(tool_call_id: str) -> str | None:
    """The thought signature a tool call id carries (see `call_id`), as Gemini wrote it."""
    _, mark, encoded = tool_call_id.partition(_SIGNATURE_MARK)
    if not mark or not encoded:
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode()


# -- requests --------------------------------------------------------------------------------------


def _media_part(url: str) -> dict[str, Any]:
    parsed = parse_data_url(url)
    if parsed is not None:
        return {"inlineData": {"mimeType": parsed[0], "data": parsed[1]}}
    extension = url.rsplit("?", 1)[0].rsplit(".", 1)[-1].lower()
    return {"fileData": {"mimeType": _MIME_BY_EXTENSION.get(extension, "image/jpeg"), "fileUri": url}}


def _parts(content: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "refusal" and role == "model":
            if part.get("refusal"):
                parts.append({"text": part["refusal"]})
        elif kind == "image_url" and role == "user":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise TranslationError("an `image_url` part needs a `url`")
            parts.append(_media_part(url))
        elif kind == "file" and role == "user":
            file = obj(part.get("file"))
            parsed = parse_data_url(file["file_data"]) if isinstance(file.get("file_data"), str) else None
            if parsed is None:
                raise TranslationError("`file` parts need inline `file_data` for Gemini; `file_id` is OpenAI's")
            parts.append({"inlineData": {"mimeType": parsed[0], "data": parsed[1]}})
        elif kind == "input_audio" and role == "user":
            audio = obj(part.get("input_audio"))
            parts.append(
                {"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}", "data": audio.get("data", "")}}
            )
        else:
            raise TranslationError(f"`{kind}` content parts in `{role}` messages cannot be sent to Gemini")
    return parts


def _function_response(message: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    call = str(message.get("tool_call_id", ""))
    if call not in names:
        raise TranslationError(f"the tool message for `{call}` answers no tool call of an earlier assistant message")
    content = message.get("content")
    text = content if isinstance(content, str) else "".join(p.get("text", "") for p in _parts(content, "user"))
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"result": text}
    return {"functionResponse": {"name": names[call], "response": response}}


def _function_call(call: Any, names: dict[str, str]) -> dict[str, Any]:
    function = obj(call.get("function")) if isinstance(call, dict) else {}
    arguments = function.get("arguments") or "{}"
    try:
        args = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise TranslationError(f"the arguments of tool call `{call.get('id')}` are not JSON") from None
    if not isinstance(args, dict):
        raise TranslationError(f"the arguments of tool call `{call.get('id')}` must be a JSON object for Gemini")
    name = str(function.get("name", ""))
    identifier = str(call.get("id", ""))
    names[identifier] = name
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    signature = signature_of(identifier)
    if signature:
        part["thoughtSignature"] = signature
    return part


def openai_request_to_gemini(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat request (possibly with the private keys `_top_k`, `_thinking`) as a
    Gemini `generateContent` request body."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise TranslationError("`n` above 1 is not supported through tollway's Gemini adapter")
    if body.get("audio") or "audio" in (body.get("modalities") or ()):
        raise TranslationError("audio output is not supported by Gemini's generateContent")
    if body.get("web_search_options") is not None:
        raise TranslationError("`web_search_options` is not supported by Gemini through tollway")

    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            raise TranslationError("each item of `messages` must be an object")
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            system.extend(_parts(content, "system"))
        elif role == "user":
            add("user", _parts(content, "user"))
        elif role == "assistant":
            if message.get("function_call"):
                raise TranslationError("the deprecated `function_call` is not supported; use `tool_calls`")
            parts = _parts(content, "model")
            calls = [_function_call(call, names) for call in message.get("tool_calls") or ()]
            if calls and model.startswith("gemini-3") and not any("thoughtSignature" in c for c in calls):
                calls[0]["thoughtSignature"] = SKIP_SIGNATURE
            add("model", parts + calls)
        elif role == "tool":
            add("user", [_function_response(message, names)])
        else:
            raise TranslationError(f"`{role}` messages are not supported by Gemini")

    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("_top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        if body.get(source) is not None:
            config[target] = body[source]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = stop
    response_format = obj(body.get("response_format"))
    if response_format.get("type") == "json_object":
        config["responseMimeType"] = "application/json"
    elif response_format.get("type") == "json_schema":
        config["responseMimeType"] = "application/json"
        schema = obj(response_format.get("json_schema")).get("schema")
        if schema is not None:
            config["responseJsonSchema"] = schema
    thinking = obj(body.get("_thinking"))
    if thinking.get("type") == "enabled":
        config["thinkingConfig"] = {"thinkingBudget": _int(thinking.get("budget_tokens")), "includeThoughts": True}
    elif thinking.get("type") == "adaptive":
        config["thinkingConfig"] = {"thinkingBudget": -1, "includeThoughts": True}
    elif body.get("reasoning_effort") is not None:
        effort = body["reasoning_effort"]
        if effort not in THINKING_BUDGETS:
            raise TranslationError(f"unknown `reasoning_effort` `{effort}`; expected `none`, `low`, `medium` or `high`")
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    if config:
        out["generationConfig"] = config

    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        declarations = []
        for tool in tools:
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else tool
                raise TranslationError(f"`{kind}` tools are not supported by Gemini; only `function` tools")
            function = obj(tool.get("function"))
            declaration: dict[str, Any] = {"name": function.get("name", "")}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters"):
                declaration["parametersJsonSchema"] = function["parameters"]
            declarations.append(declaration)
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = body.get("tool_choice")
    mode: dict[str, Any] | None = None
    if choice == "auto":
        mode = {"mode": "AUTO"}
    elif choice == "none":
        mode = {"mode": "NONE"}
    elif choice == "required":
        mode = {"mode": "ANY"}
    elif isinstance(choice, dict):
        mode = {"mode": "ANY", "allowedFunctionNames": [obj(choice.get("function")).get("name", "")]}
    if mode is not None and out.get("tools"):
        out["toolConfig"] = {"functionCallingConfig": mode}
    return out


# -- answers ---------------------------------------------------------------------------------------


def usage_from_gemini(meta: Any) -> Usage | None:
    if not isinstance(meta, dict):
        return None
    thoughts = _int(meta.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=_int(meta.get("promptTokenCount")) + _int(meta.get("toolUsePromptTokenCount")),
        completion_tokens=_int(meta.get("candidatesTokenCount")) + thoughts,
        cached_tokens=_int(meta.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def finish_reason(value: Any, tool_calls: bool) -> FinishReason:
    reason = _FINISH.get(value, "stop") if isinstance(value, str) else "stop"
    return "tool_calls" if reason == "stop" and tool_calls else reason


def gemini_response_to_openai(response: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """A `GenerateContentResponse` (candidate 0) as an OpenAI chat completion."""
    candidates = response.get("candidates")
    candidate = obj(candidates[0]) if isinstance(candidates, list) and candidates else {}
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in obj(candidate.get("content")).get("parts") or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else texts).append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            arguments = orjson.dumps(call.get("args") or {}).decode()
            calls.append(
                {
                    "id": call_id(part.get("thoughtSignature")),
                    "type": "function",
                    "function": {"name": call.get("name", ""), "arguments": arguments},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    # No candidate: the prompt itself was blocked (`promptFeedback.blockReason`).
    finish = finish_reason(candidate.get("finishReason"), bool(calls)) if candidate else "content_filter"
    completion = {
        "id": str(response.get("responseId", "")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.get("modelVersion") or model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }
    return completion, usage_from_gemini(response.get("usageMetadata"))


class GeminiStreamDecoder:
    """`streamGenerateContent?alt=sse` chunks -> parts.

    Gemini has no end marker: a stream is complete once a chunk carries a `finishReason` (or
    the prompt was blocked). Every chunk may carry `usageMetadata`; the last one counts.
    """

    __slots__ = ("_calls", "_provider", "_usage", "complete")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._calls = 0
        self._usage: Any = None
        self.complete = False

    @property
    def usage(self) -> Usage | None:
        return usage_from_gemini(self._usage)

    def feed(self, data: str) -> list[Part]:
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
        if isinstance(chunk, list):  # an error arrives as a one-element array in some versions
            chunk = chunk[0] if chunk else {}
        if not isinstance(chunk, dict):
            return []
        if isinstance(chunk.get("error"), dict):
            message = str(chunk["error"].get("message", "unknown error"))
            raise upstream_failure(
                Failure(
                    FailureKind.BROKEN_STREAM,
                    self._provider,
                    f"provider `{self._provider}` ended the stream with an error: {message}",
                    upstream_message=message,
                )
            )
        if isinstance(chunk.get("usageMetadata"), dict):
            self._usage = chunk["usageMetadata"]
        candidates = chunk.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            if obj(chunk.get("promptFeedback")).get("blockReason"):
                self.complete = True
                return [FinishPart("content_filter")]
            return []
        candidate = obj(candidates[0])
        parts: list[Part] = []
        for part in obj(candidate.get("content")).get("parts") or ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and part["text"]:
                parts.append(ReasoningPart(part["text"]) if part.get("thought") is True else TextPart(part["text"]))
            elif isinstance(part.get("functionCall"), dict):
                call = part["functionCall"]
                index = self._calls
                self._calls += 1
                parts.append(ToolCallStart(index, call_id(part.get("thoughtSignature")), str(call.get("name", ""))))
                parts.append(ToolCallArgs(index, orjson.dumps(call.get("args") or {}).decode()))
        if candidate.get("finishReason"):
            self.complete = True
            parts.append(FinishPart(finish_reason(candidate["finishReason"], self._calls > 0)))
        return parts
