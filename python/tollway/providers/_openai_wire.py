"""What every OpenAI-format provider (OpenAI, every OpenAI-compatible server, Azure OpenAI)
shares: an OpenAI client's stream relayed natively (`OpenAIRelay`), and an Anthropic-format
client served by translation both ways.

An Anthropic client's request is translated to OpenAI chat
(`_anthropic_format.anthropic_request_to_openai`, then stripped of what only other providers
take, `_openai_format.to_openai_wire`); the answer is translated back, and a stream event by
event (`OpenAIStreamDecoder` -> `AnthropicStreamEncoder`). Such streams always ask for
`stream_options.include_usage`, since Anthropic's `message_delta` reports usage at the end.
An Anthropic client's own headers (`anthropic-version`, `anthropic-beta`, ...) mean nothing to
an OpenAI server and are not forwarded.
"""

from __future__ import annotations

from typing import Any

import orjson

from tollway._native import UpstreamStream
from tollway.errors import TranslationError, UpstreamError
from tollway.providers._anthropic_format import anthropic_request_to_openai
from tollway.providers._common import (
    StreamRelay,
    TranslatedRelay,
    client_body,
    client_encoder,
    parse_json_object,
    request_untranslatable,
)
from tollway.providers._openai_format import OpenAIStreamDecoder, to_openai_wire
from tollway.providers.base import ChatCall, Completion, StreamMeter
from tollway.usage import Usage, usage_from_openai


class OpenAIRelay(StreamRelay):
    """An OpenAI chat stream to an OpenAI client, relayed natively (`Framing.OPENAI_CHAT`: the
    native side parses each event, captures usage and removes what the gateway's own
    `include_usage` added): a batch is the bytes to forward. The relay keeps the output text,
    read only when the meter needs it."""

    ended_early = "ended the stream before `[DONE]`"
    __slots__ = ("stream",)

    def __init__(self, stream: UpstreamStream, meter: StreamMeter | None) -> None:
        self.stream = stream
        if meter is not None:
            meter.watch(stream)

    def feed(self, batch: Any, meter: StreamMeter | None) -> tuple[bytes, UpstreamError | None]:
        return batch, None

    @property
    def complete(self) -> bool:
        return self.stream.done

    @property
    def usage(self) -> Usage | None:
        usage_json = self.stream.usage_json
        return usage_from_openai(orjson.loads(usage_json)) if usage_json is not None else None


def translated_body(call: ChatCall, kind: str, provider: str) -> bytes:
    """An Anthropic-format call's body as an OpenAI chat request for `call.model`."""
    try:
        body = to_openai_wire(anthropic_request_to_openai(call.body))
    except TranslationError as exc:
        raise request_untranslatable(provider, kind, exc) from None
    body["model"] = call.model.upstream_model
    if call.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


def translated_completion(
    provider: str, call: ChatCall, payload: bytes, passed: list[tuple[str, str]] | None = None
) -> Completion:
    """An OpenAI chat completion answered to an Anthropic client."""
    completion = parse_json_object(provider, payload)
    usage = usage_from_openai(completion.get("usage"))
    return Completion(body=client_body(provider, call, completion, usage), usage=usage, headers=passed or [])


def translated_relay(provider: str, call: ChatCall) -> TranslatedRelay:
    """An OpenAI chat stream, event by event, to an Anthropic client."""
    return TranslatedRelay(OpenAIStreamDecoder(provider), client_encoder(call, call.model.upstream_model))
