"""Azure OpenAI (`kind = "azure"`): OpenAI's chat completions on an Azure resource.

The URL names a deployment, not a model: `{base_url}/openai/deployments/{deployment}/chat/
completions?api-version={api_version}`, where `base_url` is the resource endpoint
(`https://NAME.openai.azure.com`), the deployment is `deployments[<upstream model>]` from the
config (or the upstream model name itself), and `api_version` defaults to the latest GA data-
plane version, `2024-10-21`. Auth: the `api-key` header (several keys rotate).

An OpenAI-format client is relayed as for OpenAI itself (the native `OpenAIChatStream`: the
gateway asks for stream usage and removes what that adds when the client did not ask);
Azure's extra stream event carrying `prompt_filter_results` and no choices passes through,
and so do the content-filter fields of answers. An Anthropic-format client is translated
(`_openai_wire`).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

import orjson

from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError
from tollway.providers._common import HttpAdapter, StreamRelay, parse_json_object
from tollway.providers._keys import KeyRing
from tollway.providers._openai_wire import OpenAIRelay, translated_body, translated_completion, translated_relay
from tollway.providers.base import ChatCall, Completion, StreamSink
from tollway.upstream import Egress, Endpoint, Framing
from tollway.usage import Usage, usage_from_openai

DEFAULT_API_VERSION = "2024-10-21"


class AzureAdapter(HttpAdapter):
    kind = "azure"

    def __init__(self, config: ProviderConfig, timeouts: Timeouts, egress: Egress | None, keys: KeyRing | None) -> None:
        super().__init__(config, timeouts, egress, keys)
        assert config.base_url is not None  # the loader requires it for this kind
        self.base_url = config.base_url.rstrip("/")
        self.api_version = config.api_version or DEFAULT_API_VERSION
        self.deployments = dict(config.deployments)
        self._endpoints: dict[str, Endpoint] = {}
        if any("\r" in v or "\n" in v for v in self.extra_headers.values()):
            raise ConfigError([f"provider `{self.name}`: a header value contains a line break"])

    def _endpoint(self, model: str) -> Endpoint:
        endpoint = self._endpoints.get(model)
        if endpoint is None:
            deployment = quote(self.deployments.get(model, model), safe="")
            version = quote(self.api_version, safe="")
            url = f"{self.base_url}/openai/deployments/{deployment}/chat/completions?api-version={version}"
            endpoint = self._endpoints[model] = self.endpoint(url)
        return endpoint

    def _headers_for(self, call: ChatCall) -> Callable[[Secret | None], dict[str, str]]:
        base = dict(call.forward_headers) if call.api == "openai" else {}
        base.update(
            {"content-type": "application/json", "accept": "text/event-stream" if call.stream else "application/json"}
        )
        base.update(self.extra_headers)

        def headers(key: Secret | None) -> dict[str, str]:
            return {**base, "api-key": key.reveal()} if key is not None else base

        return headers

    def _relayed_body(self, call: ChatCall) -> tuple[bytes, bool]:
        """An OpenAI client's body for Azure, and whether the gateway added `include_usage`."""
        if not call.stream:
            return call.raw, False
        options = call.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return call.raw, False
        options = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return orjson.dumps({**call.body, "stream_options": options}), True

    async def chat(self, call: ChatCall) -> Completion:
        endpoint = self._endpoint(call.model.upstream_model)
        if call.api == "anthropic":
            body = translated_body(call, self.kind, self.name)
            resp = await self.post(endpoint, body, self._headers_for(call))
            return translated_completion(self.name, call, resp.payload)
        body, _ = self._relayed_body(call)
        resp = await self.post(endpoint, body, self._headers_for(call))
        usage = usage_from_openai(parse_json_object(self.name, resp.payload).get("usage"))
        request_id = resp.headers.get("apim-request-id") or resp.headers.get("x-request-id")
        return Completion(
            body=resp.payload, usage=usage, headers=[("x-upstream-request-id", request_id)] if request_id else []
        )

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        endpoint = self._endpoint(call.model.upstream_model)
        relay: StreamRelay
        if call.api == "anthropic":
            body = translated_body(call, self.kind, self.name)
            resp = await self.post(endpoint, body, self._headers_for(call), Framing.SSE)
            relay = translated_relay(self.name, call)
        else:
            body, injected = self._relayed_body(call)
            resp = await self.post(endpoint, body, self._headers_for(call), Framing.OPENAI_CHAT, strip_usage=injected)
            relay = OpenAIRelay(resp.stream, call.meter)
        self.check_content_type(resp, "text/event-stream")
        return await self.pump(resp, relay, sink, call.meter)
