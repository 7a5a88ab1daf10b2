"""Anthropic's Messages API (`kind = "anthropic"`).

An Anthropic-format client is relayed: the body goes upstream as sent (only `model` is
replaced by the upstream name) and events are forwarded as they arrive, with usage and the end
of the stream read from `message_start`, `message_delta` and `message_stop`. An OpenAI-format
client is translated both ways (`_anthropic_format`), events one by one.

Auth: `x-api-key` (several keys rotate, see `_keys`), and `anthropic-version` (the client's own
header when an Anthropic client sent one, else `api_version` from the config, else
`2023-06-01`). An Anthropic client's other headers (such as `anthropic-beta`) pass through.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError, TranslationError, UpstreamError
from tollway.providers._anthropic_format import (
    ANTHROPIC_VERSION,
    AnthropicStreamDecoder,
    anthropic_message_to_openai,
    openai_request_to_anthropic,
    usage_from_anthropic,
)
from tollway.providers._common import (
    HttpAdapter,
    StreamRelay,
    TranslatedRelay,
    client_body,
    client_encoder,
    parse_json_object,
    request_untranslatable,
)
from tollway.providers._keys import KeyRing
from tollway.providers._stream import output_text
from tollway.providers.base import ChatCall, Completion, StreamMeter, StreamSink
from tollway.upstream import Egress, Framing
from tollway.usage import Usage

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"


class AnthropicAdapter(HttpAdapter):
    kind = "anthropic"

    def __init__(self, config: ProviderConfig, timeouts: Timeouts, egress: Egress | None, keys: KeyRing | None) -> None:
        super().__init__(config, timeouts, egress, keys)
        self.messages_endpoint = self.endpoint((config.base_url or DEFAULT_BASE_URL).rstrip("/") + "/messages")
        self.version = config.api_version or ANTHROPIC_VERSION
        self.default_max_tokens = config.default_max_tokens
        if any("\r" in v or "\n" in v for v in self.extra_headers.values()):
            raise ConfigError([f"provider `{self.name}`: a header value contains a line break"])

    def _headers_for(self, call: ChatCall) -> Callable[[Secret | None], dict[str, str]]:
        base: dict[str, str] = {}
        if call.api == "anthropic":
            base.update(call.forward_headers)  # `anthropic-beta`, `anthropic-version`, ...
        base.setdefault("anthropic-version", self.version)
        base["content-type"] = "application/json"
        base["accept"] = "text/event-stream" if call.stream else "application/json"
        base.update(self.extra_headers)

        def headers(key: Secret | None) -> dict[str, str]:
            return {**base, "x-api-key": key.reveal()} if key is not None else base

        return headers

    def _body(self, call: ChatCall) -> bytes:
        upstream = call.model.upstream_model
        if call.api == "anthropic":
            return call.raw if call.body.get("model") == upstream else orjson.dumps({**call.body, "model": upstream})
        try:
            body = openai_request_to_anthropic(call.body, upstream, self.default_max_tokens)
        except TranslationError as exc:
            raise request_untranslatable(self.name, self.kind, exc) from None
        return orjson.dumps(body)

    @staticmethod
    def _passed_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
        request_id = headers.get("request-id")
        return [("x-upstream-request-id", request_id)] if request_id else []

    async def chat(self, call: ChatCall) -> Completion:
        resp = await self.post(self.messages_endpoint, self._body(call), self._headers_for(call))
        message = parse_json_object(self.name, resp.payload)
        passed = self._passed_headers(resp.headers)
        if call.api == "anthropic":
            return Completion(body=resp.payload, usage=usage_from_anthropic(message.get("usage")), headers=passed)
        completion, usage = anthropic_message_to_openai(message)
        return Completion(body=client_body(self.name, call, completion, usage), usage=usage, headers=passed)

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        resp = await self.post(self.messages_endpoint, self._body(call), self._headers_for(call), Framing.SSE)
        self.check_content_type(resp, "text/event-stream")
        relay: StreamRelay
        if call.api == "anthropic":
            relay = AnthropicRelay(self.name)
        else:
            relay = TranslatedRelay(AnthropicStreamDecoder(self.name), client_encoder(call, call.model.upstream_model))
        return await self.pump(resp, relay, sink, call.meter)


class AnthropicRelay(StreamRelay):
    """An Anthropic stream to an Anthropic client, forwarded as it came. Every event is read (as
    the translating path would): for usage and the end, to never relay an event the client
    cannot parse, and for the output text a broken stream is counted by."""

    ended_early = "ended the stream before `message_stop`"
    __slots__ = ("tracker",)

    def __init__(self, provider: str) -> None:
        self.tracker = AnthropicStreamDecoder(provider)

    def feed(self, batch: Any, meter: StreamMeter | None) -> tuple[bytes, UpstreamError | None]:
        out: list[bytes] = []
        failure: UpstreamError | None = None
        for event in batch:
            try:
                parts = self.tracker.feed(event.data)
            except UpstreamError as exc:
                failure = exc
                break
            if meter is not None and parts:
                meter.push_text(output_text(parts))
            out.append(event.to_bytes())
        return b"".join(out), failure

    @property
    def complete(self) -> bool:
        return self.tracker.complete

    @property
    def usage(self) -> Usage | None:
        return self.tracker.usage
