"""OpenAI and every OpenAI-compatible server (`kind = "openai"` with any `base_url`).

Requests are forwarded nearly verbatim: the body is re-encoded only when the gateway must
change it (a different upstream model name, or asking for usage in a stream), and a preset's
quirks are applied on the way out (`presets`). Streams to an OpenAI client are relayed
natively (`_openai_wire.OpenAIRelay`): each event is forwarded as soon as it is parsed, and
events that arrive together in one network chunk leave together in one write. An
Anthropic-format client is translated both ways (`_openai_wire`).

Usage capture in streams: the gateway always asks for `stream_options.include_usage`. When the
client did not ask for it, the gateway removes what that option adds before the client sees
it: the final usage-only chunk, and the `"usage":null` member OpenAI adds to every other chunk
(natively, `rust/core/src/chat_stream.rs`, once per network chunk).

Auth: `Authorization: Bearer <api_key>`; several keys rotate (see `_keys`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError, UpstreamError
from tollway.providers._common import HttpAdapter, StreamRelay, bad_json
from tollway.providers._keys import KeyRing
from tollway.providers._openai_wire import OpenAIRelay, translated_body, translated_completion, translated_relay
from tollway.providers.base import ChatCall, Completion, StreamMeter, StreamSink
from tollway.providers.presets import Preset
from tollway.upstream import Egress, Framing
from tollway.usage import Usage, usage_from_openai, usage_from_responses

# Upstream response headers passed through to the client, renamed where ours take the name.
_PASSED_HEADERS = {
    "x-request-id": "x-upstream-request-id",
    "openai-processing-ms": "openai-processing-ms",
    "openai-model": "openai-model",
}


class OpenAIAdapter(HttpAdapter):
    kind = "openai"
    operations = frozenset({"chat", "embeddings", "responses"})

    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        egress: Egress | None,
        keys: KeyRing | None,
        preset: Preset | None = None,
    ) -> None:
        super().__init__(config, timeouts, egress, keys)
        base_url = config.base_url or (preset.base_url if preset is not None else None)
        assert base_url is not None  # the loader requires one or the other
        base = base_url.rstrip("/")
        self.chat_endpoint = self.endpoint(base + "/chat/completions")
        self.endpoints = {
            "embeddings": self.endpoint(base + "/embeddings"),
            "responses": self.endpoint(base + "/responses"),
        }
        self._rewrite = preset.rewrite if preset is not None and preset.changes_bodies else None
        if any("\r" in v or "\n" in v for v in self.extra_headers.values()):
            # A line break in a header value would let a config inject headers.
            raise ConfigError([f"provider `{self.name}`: a header value contains a line break"])

    def prepare_body(self, body: bytes) -> bytes:
        return self._rewrite(body) if self._rewrite is not None else body

    def _headers_for(self, call: ChatCall, stream: bool) -> Callable[[Secret | None], dict[str, str]]:
        # An Anthropic client's own headers mean nothing to an OpenAI server.
        base = dict(call.forward_headers) if call.api == "openai" else {}
        base["content-type"] = "application/json"
        base["accept"] = "text/event-stream" if stream else "application/json"
        base.update(self.extra_headers)

        def headers(key: Secret | None) -> dict[str, str]:
            return {**base, "authorization": f"Bearer {key.reveal()}"} if key is not None else base

        return headers

    def _request_body(self, call: ChatCall) -> tuple[bytes, bool]:
        """The body to send, and whether the gateway added `include_usage` to it."""
        body = call.body
        changed = False
        upstream_model = call.model.upstream_model
        if body.get("model") != upstream_model:
            body = {**body, "model": upstream_model}
            changed = True
        injected = False
        if call.stream:
            options = body.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                options = dict(options) if isinstance(options, dict) else {}
                options["include_usage"] = True
                body = {**body, "stream_options": options}
                changed = injected = True
        return (orjson.dumps(body) if changed else call.raw), injected

    async def chat(self, call: ChatCall) -> Completion:
        headers = self._headers_for(call, False)
        if call.api == "anthropic":  # an Anthropic-format client: translated both ways
            resp = await self.post(self.chat_endpoint, translated_body(call, self.kind, self.name), headers)
            return translated_completion(self.name, call, resp.payload, _passed(resp.headers))
        body, _ = self._request_body(call)
        resp = await self.post(self.chat_endpoint, body, headers)
        return _completion(self.name, resp.payload, resp.headers, usage_from_openai)

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        headers = self._headers_for(call, True)
        relay: StreamRelay
        if call.api == "anthropic":
            body = translated_body(call, self.kind, self.name)
            resp = await self.post(self.chat_endpoint, body, headers, Framing.SSE)
            relay = translated_relay(self.name, call)
        else:
            body, injected = self._request_body(call)
            resp = await self.post(self.chat_endpoint, body, headers, Framing.OPENAI_CHAT, strip_usage=injected)
            relay = OpenAIRelay(resp.stream, call.meter)
        self.check_content_type(resp, "text/event-stream")
        return await self.pump(resp, relay, sink, call.meter)

    # -- embeddings and the Responses API: passed through in OpenAI's format ---------------------
    def _forward_body(self, call: ChatCall) -> bytes:
        upstream_model = call.model.upstream_model
        if call.body.get("model") == upstream_model:
            return call.raw
        return orjson.dumps({**call.body, "model": upstream_model})

    async def forward(self, call: ChatCall, operation: str) -> Completion:
        read_usage = usage_from_responses if operation == "responses" else usage_from_openai
        resp = await self.post(self.endpoints[operation], self._forward_body(call), self._headers_for(call, False))
        return _completion(self.name, resp.payload, resp.headers, read_usage)

    async def forward_stream(self, call: ChatCall, operation: str, sink: StreamSink) -> Usage | None:
        """The Responses API streamed: events relayed as they are parsed."""
        headers = self._headers_for(call, True)
        resp = await self.post(self.endpoints[operation], self._forward_body(call), headers, Framing.SSE)
        self.check_content_type(resp, "text/event-stream")
        return await self.pump(resp, ResponsesRelay(self.name), sink, call.meter)


class ResponsesRelay(StreamRelay):
    """OpenAI's Responses API stream, relayed event by event: usage from `response.completed`
    (or `.incomplete`, `.failed`), output text from `response.output_text.delta`."""

    ended_early = "ended the stream early"
    __slots__ = ("_done", "_usage", "provider")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._done = False
        self._usage: Usage | None = None

    def feed(self, batch: Any, meter: StreamMeter | None) -> tuple[bytes, UpstreamError | None]:
        out: list[bytes] = []
        for event in batch:
            kind = event.event or ""
            try:
                if kind == "response.output_text.delta" and meter is not None:
                    delta = orjson.loads(event.data).get("delta")
                    if isinstance(delta, str):
                        meter.push_text(delta)
                elif kind in ("response.completed", "response.incomplete", "response.failed"):
                    self._done = True
                    response = orjson.loads(event.data).get("response")
                    if isinstance(response, dict):
                        self._usage = usage_from_responses(response.get("usage")) or self._usage
            except (orjson.JSONDecodeError, AttributeError):
                return b"".join(out), bad_json(self.provider)
            out.append(event.to_bytes())
        return b"".join(out), None

    @property
    def complete(self) -> bool:
        return self._done

    @property
    def usage(self) -> Usage | None:
        return self._usage


def _completion(
    provider: str, payload: bytes, headers: dict[str, str], read_usage: Callable[[Any], Usage | None]
) -> Completion:
    """A JSON answer passed through as it came, with its usage."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise bad_json(provider) from None
    usage = read_usage(parsed.get("usage")) if isinstance(parsed, dict) else None
    return Completion(body=payload, usage=usage, headers=_passed(headers))


def _passed(headers: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for name, renamed in _PASSED_HEADERS.items():
        value = headers.get(name)
        if value is not None:
            out.append((renamed, value))
    return out
