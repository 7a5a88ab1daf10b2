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

from tollway._native import OpenAIChatStream
from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError, SseError, StreamFormatError
from tollway.providers._common import HttpAdapter, broken_stream, parse_json_object
from tollway.providers._keys import KeyRing
from tollway.providers._openai_wire import translated_body, translated_completion, translated_stream
from tollway.providers.base import ChatCall, Completion, StreamMeter, StreamSink
from tollway.upstream import Endpoint, Failure, FailureKind, UpstreamClient, UpstreamResponse, upstream_failure
from tollway.usage import Usage, usage_from_openai

DEFAULT_API_VERSION = "2024-10-21"


class AzureAdapter(HttpAdapter):
    kind = "azure"

    def __init__(
        self, config: ProviderConfig, timeouts: Timeouts, client: UpstreamClient | None, keys: KeyRing | None
    ) -> None:
        super().__init__(config, timeouts, client, keys)
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
            endpoint = self._endpoints[model] = Endpoint.parse(url)
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
            resp, deadline = await self.post(endpoint, body, self._headers_for(call))
            return translated_completion(self.name, call, await resp.read(deadline))
        body, _ = self._relayed_body(call)
        resp, deadline = await self.post(endpoint, body, self._headers_for(call))
        payload = await resp.read(deadline)
        usage = usage_from_openai(parse_json_object(self.name, payload).get("usage"))
        request_id = resp.headers.get("apim-request-id") or resp.headers.get("x-request-id")
        return Completion(
            body=payload, usage=usage, headers=[("x-upstream-request-id", request_id)] if request_id else []
        )

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        endpoint = self._endpoint(call.model.upstream_model)
        if call.api == "anthropic":
            body, injected = translated_body(call, self.kind, self.name), False
        else:
            body, injected = self._relayed_body(call)
        resp, deadline = await self.post(endpoint, body, self._headers_for(call))
        try:
            if call.api == "anthropic":
                return await translated_stream(self.name, self.timeouts, resp, deadline, call, sink)
            self.check_content_type(resp, "text/event-stream")
            return await self._relay(resp, deadline, injected, sink, call.meter)
        finally:
            resp.close()

    async def _relay(
        self, resp: UpstreamResponse, deadline: float, injected: bool, sink: StreamSink, meter: StreamMeter | None
    ) -> Usage | None:
        stream = OpenAIChatStream(strip_usage=injected)
        if meter is not None:
            meter.watch(stream)  # the relay keeps the text it forwarded, read only if usage never comes
        try:
            async for chunk in resp.chunks(self.timeouts, deadline):
                out = stream.feed(chunk)
                if out:
                    await sink.send(out)
        except SseError as exc:
            raise upstream_failure(
                Failure(FailureKind.BAD_RESPONSE, self.name, f"provider `{self.name}` sent a malformed stream: {exc}")
            ) from None
        except StreamFormatError:
            raise upstream_failure(
                Failure(FailureKind.BAD_RESPONSE, self.name, f"provider `{self.name}` sent an event that is not JSON")
            ) from None
        usage_json = stream.usage_json
        usage = usage_from_openai(orjson.loads(usage_json)) if usage_json is not None else None
        if meter is not None:
            meter.report_usage(usage)  # OpenAI-format usage comes only at the end: it is the whole
        if not stream.done:
            raise broken_stream(self.name, "ended the stream before `[DONE]`")
        return usage
