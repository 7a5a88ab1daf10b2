"""Serving an Anthropic-format client from an OpenAI-format provider (OpenAI, every
OpenAI-compatible server, Azure OpenAI).

The request is translated to OpenAI chat (`_anthropic_format.anthropic_request_to_openai`,
then stripped of what only other providers take, `_openai_format.to_openai_wire`); the answer
is translated back, and a stream event by event (`OpenAIStreamDecoder` -> `AnthropicStreamEncoder`).
Streams always ask for `stream_options.include_usage`, since Anthropic's `message_delta`
reports usage at the end.

An Anthropic client's own headers (`anthropic-version`, `anthropic-beta`, ...) mean nothing to
an OpenAI server and are not forwarded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from tollway.errors import TranslationError
from tollway.providers._anthropic_format import anthropic_request_to_openai
from tollway.providers._common import (
    check_content_type,
    client_body,
    client_encoder,
    parse_json_object,
    pump_sse,
    request_untranslatable,
    status_failure,
)
from tollway.providers._openai_format import OpenAIStreamDecoder, to_openai_wire
from tollway.providers.base import ChatCall, Completion, StreamSink
from tollway.upstream import UpstreamResponse
from tollway.usage import Usage, usage_from_openai

if TYPE_CHECKING:
    from tollway.providers.openai import OpenAIAdapter

# Applied to a translated request body just before it is sent (an OpenAI-compatible server's
# known quirks, see `presets`).
BodyFixer = Callable[[dict[str, Any]], dict[str, Any]]


def translated_body(call: ChatCall, kind: str, provider: str, fix: BodyFixer | None = None) -> bytes:
    """An Anthropic-format call's body as an OpenAI chat request for `call.model`."""
    try:
        body = to_openai_wire(anthropic_request_to_openai(call.body))
    except TranslationError as exc:
        raise request_untranslatable(provider, kind, exc) from None
    body["model"] = call.model.upstream_model
    if call.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if fix is not None:
        body = fix(body)
    return orjson.dumps(body)


def translated_completion(
    provider: str, call: ChatCall, payload: bytes, passed: list[tuple[str, str]] | None = None
) -> Completion:
    """An OpenAI chat completion answered to an Anthropic client."""
    completion = parse_json_object(provider, payload)
    usage = usage_from_openai(completion.get("usage"))
    return Completion(body=client_body(provider, call, completion, usage), usage=usage, headers=passed or [])


async def translated_stream(
    adapter_name: str, timeouts: Any, resp: UpstreamResponse, deadline: float, call: ChatCall, sink: StreamSink
) -> Usage | None:
    """An OpenAI chat stream, event by event, to an Anthropic client."""
    check_content_type(adapter_name, resp, "text/event-stream")
    decoder = OpenAIStreamDecoder(adapter_name)
    encoder = client_encoder(call, call.model.upstream_model)
    return await pump_sse(adapter_name, timeouts, resp, deadline, decoder, encoder, sink, call.meter)


# -- the entry points `OpenAIAdapter` calls when `call.api == "anthropic"` ---------------------------


async def chat_for_anthropic_client(adapter: OpenAIAdapter, call: ChatCall, fix: BodyFixer | None = None) -> Completion:
    assert adapter.client is not None
    call = dataclasses.replace(call, forward_headers={})
    body = translated_body(call, adapter.kind, adapter.name, fix)
    headers = adapter._request_headers(call, False)
    resp, deadline = await adapter.client.post(adapter.name, adapter.chat_endpoint, body, headers, adapter.timeouts)
    payload = await resp.read(deadline)
    if resp.status != 200:
        raise status_failure(adapter.name, resp.status, payload, resp.headers)
    return translated_completion(adapter.name, call, payload)


async def stream_for_anthropic_client(
    adapter: OpenAIAdapter, call: ChatCall, sink: StreamSink, fix: BodyFixer | None = None
) -> Usage | None:
    assert adapter.client is not None
    call = dataclasses.replace(call, forward_headers={})
    body = translated_body(call, adapter.kind, adapter.name, fix)
    headers = adapter._request_headers(call, True)
    resp, deadline = await adapter.client.post(adapter.name, adapter.chat_endpoint, body, headers, adapter.timeouts)
    try:
        if resp.status != 200:
            raise status_failure(adapter.name, resp.status, await resp.read(deadline), resp.headers)
        return await translated_stream(adapter.name, adapter.timeouts, resp, deadline, call, sink)
    finally:
        resp.close()
