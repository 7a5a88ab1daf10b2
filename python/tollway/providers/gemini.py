"""Google's Gemini API (`kind = "gemini"`): `generateContent` and `streamGenerateContent?alt=sse`.

Both client APIs are translated (`_gemini_format`; an Anthropic client's request goes through
OpenAI's format first). The model is part of the URL (`{base_url}/models/{model}:...`), so one
endpoint per model is built on first use. Auth: `x-goog-api-key` (several keys rotate); Gemini
answers an invalid key with a 400 naming it, which counts as a rejected key.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import orjson

from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError, TranslationError
from tollway.providers._anthropic_format import anthropic_request_to_openai
from tollway.providers._common import (
    HttpAdapter,
    TranslatedRelay,
    client_body,
    client_encoder,
    parse_json_object,
    request_untranslatable,
)
from tollway.providers._gemini_format import GeminiStreamDecoder, gemini_response_to_openai, openai_request_to_gemini
from tollway.providers._keys import KeyRing
from tollway.providers.base import ChatCall, Completion, StreamSink
from tollway.upstream import Egress, Endpoint, Framing
from tollway.usage import Usage

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"


class GeminiAdapter(HttpAdapter):
    kind = "gemini"

    def __init__(self, config: ProviderConfig, timeouts: Timeouts, egress: Egress | None, keys: KeyRing | None) -> None:
        super().__init__(config, timeouts, egress, keys)
        self.base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._endpoints: dict[tuple[str, bool], Endpoint] = {}
        if any("\r" in v or "\n" in v for v in self.extra_headers.values()):
            raise ConfigError([f"provider `{self.name}`: a header value contains a line break"])

    def _endpoint(self, model: str, stream: bool) -> Endpoint:
        endpoint = self._endpoints.get((model, stream))
        if endpoint is None:
            method = "streamGenerateContent?alt=sse" if stream else "generateContent"
            endpoint = self.endpoint(f"{self.base_url}/models/{quote(model, safe='')}:{method}")
            self._endpoints[(model, stream)] = endpoint
        return endpoint

    def _headers_for(self, stream: bool) -> Callable[[Secret | None], dict[str, str]]:
        base = {
            "content-type": "application/json",
            "accept": "text/event-stream" if stream else "application/json",
            **self.extra_headers,
        }

        def headers(key: Secret | None) -> dict[str, str]:
            return {**base, "x-goog-api-key": key.reveal()} if key is not None else base

        return headers

    def _body(self, call: ChatCall) -> bytes:
        try:
            body = anthropic_request_to_openai(call.body) if call.api == "anthropic" else call.body
            return orjson.dumps(openai_request_to_gemini(body, call.model.upstream_model))
        except TranslationError as exc:
            raise request_untranslatable(self.name, self.kind, exc) from None

    async def chat(self, call: ChatCall) -> Completion:
        model = call.model.upstream_model
        resp = await self.post(self._endpoint(model, False), self._body(call), self._headers_for(False))
        response = parse_json_object(self.name, resp.payload)
        completion, usage = gemini_response_to_openai(response, model)
        return Completion(body=client_body(self.name, call, completion, usage), usage=usage)

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        model = call.model.upstream_model
        resp = await self.post(self._endpoint(model, True), self._body(call), self._headers_for(True), Framing.SSE)
        self.check_content_type(resp, "text/event-stream")
        relay = TranslatedRelay(GeminiStreamDecoder(self.name), client_encoder(call, model))
        return await self.pump(resp, relay, sink, call.meter)
