"""Amazon Bedrock's Converse API (`kind = "bedrock"`): `converse` and `converse-stream`.

Both client APIs are translated (`_bedrock_format`; an Anthropic client's request goes through
OpenAI's format first). Every request is signed with AWS Signature Version 4 (`_sigv4`,
service `bedrock`, the configured region and credentials; a session token is sent as
`x-amz-security-token`). The model id is part of the path, percent-encoded (`v1:0` is `v1%3A0`).

Streams arrive in AWS's binary event-stream framing, decoded natively (`EventStreamDecoder`:
both CRCs checked, chunks split anywhere); each `event` message is translated as it arrives,
an `exception` message ends the stream with the matching failure, and a stream cut inside a
message or before `messageStop` and `metadata` is broken.
"""

from __future__ import annotations

from urllib.parse import quote

import orjson

from tollway._native import EventStreamDecoder
from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError, EventStreamError, TranslationError, UpstreamError
from tollway.providers._anthropic_format import anthropic_request_to_openai
from tollway.providers._bedrock_format import (
    BedrockStreamDecoder,
    bedrock_response_to_openai,
    openai_request_to_bedrock,
)
from tollway.providers._common import (
    HttpAdapter,
    broken_stream,
    client_body,
    client_encoder,
    parse_json_object,
    request_untranslatable,
)
from tollway.providers._sigv4 import sign
from tollway.providers._stream import output_text
from tollway.providers.base import ChatCall, Completion, StreamSink
from tollway.upstream import Endpoint, Failure, FailureKind, UpstreamClient, UpstreamResponse, upstream_failure
from tollway.usage import Usage

EVENT_STREAM = "application/vnd.amazon.eventstream"


class BedrockAdapter(HttpAdapter):
    kind = "bedrock"

    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        client: UpstreamClient | None,
        access_key: Secret,
        secret_key: Secret,
        session_token: Secret | None,
    ) -> None:
        super().__init__(config, timeouts, client, None)
        assert config.region is not None  # the loader requires it for this kind
        self.region = config.region
        self.base_url = (config.base_url or f"https://bedrock-runtime.{config.region}.amazonaws.com").rstrip("/")
        self._access_key = access_key
        self._secret_key = secret_key
        self._session_token = session_token
        self._endpoints: dict[tuple[str, bool], Endpoint] = {}
        if any("\r" in v or "\n" in v for v in self.extra_headers.values()):
            raise ConfigError([f"provider `{self.name}`: a header value contains a line break"])

    def _endpoint(self, model: str, stream: bool) -> Endpoint:
        endpoint = self._endpoints.get((model, stream))
        if endpoint is None:
            action = "converse-stream" if stream else "converse"
            endpoint = Endpoint.parse(f"{self.base_url}/model/{quote(model, safe='')}/{action}")
            self._endpoints[(model, stream)] = endpoint
        return endpoint

    def _signed_headers(self, endpoint: Endpoint, body: bytes, stream: bool) -> dict[str, str]:
        signed = {"content-type": "application/json"}
        path, _, query = endpoint.path.partition("?")
        added = sign(
            method="POST",
            host=endpoint.host_header,
            path=path,
            query=query,
            headers=signed,
            body=body,
            access_key=self._access_key.reveal(),
            secret_key=self._secret_key.reveal(),
            region=self.region,
            service="bedrock",
            session_token=self._session_token.reveal() if self._session_token is not None else None,
        )
        accept = EVENT_STREAM if stream else "application/json"
        return {**self.extra_headers, **signed, "accept": accept, **added}

    def _body(self, call: ChatCall) -> bytes:
        try:
            body = anthropic_request_to_openai(call.body) if call.api == "anthropic" else call.body
            return orjson.dumps(openai_request_to_bedrock(body, call.model.upstream_model))
        except TranslationError as exc:
            raise request_untranslatable(self.name, self.kind, exc) from None

    async def _send(self, call: ChatCall, stream: bool) -> tuple[UpstreamResponse, float]:
        endpoint = self._endpoint(call.model.upstream_model, stream)
        body = self._body(call)
        # Signed per request: the signature covers the time and the body.
        return await self.post(endpoint, body, lambda _key: self._signed_headers(endpoint, body, stream))

    async def chat(self, call: ChatCall) -> Completion:
        resp, deadline = await self._send(call, False)
        response = parse_json_object(self.name, await resp.read(deadline))
        completion, usage = bedrock_response_to_openai(response, call.model.upstream_model)
        passed = (
            [("x-upstream-request-id", resp.headers["x-amzn-requestid"])] if "x-amzn-requestid" in resp.headers else []
        )
        return Completion(body=client_body(self.name, call, completion, usage), usage=usage, headers=passed)

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        resp, deadline = await self._send(call, True)
        try:
            self.check_content_type(resp, EVENT_STREAM)
            return await self._pump(resp, deadline, call, sink)
        finally:
            resp.close()

    async def _pump(self, resp: UpstreamResponse, deadline: float, call: ChatCall, sink: StreamSink) -> Usage | None:
        meter = call.meter
        frames = EventStreamDecoder()
        decoder = BedrockStreamDecoder(self.name)
        encoder = client_encoder(call, call.model.upstream_model)
        try:
            async for chunk in resp.chunks(self.timeouts, deadline):
                out: list[bytes] = []
                text: list[str] = []
                try:
                    for message in frames.feed(chunk):
                        headers = message.headers
                        kind = headers.get(":message-type")
                        if kind == "event":
                            payload = orjson.loads(message.payload) if message.payload else {}
                            parts = decoder.feed(
                                str(headers.get(":event-type", "")), payload if isinstance(payload, dict) else {}
                            )
                            if parts:
                                out.extend(encoder.encode(parts))
                                if meter is not None:
                                    text.append(output_text(parts))
                        elif kind == "exception":
                            raise decoder.exception(str(headers.get(":exception-type", "")), message.payload)
                        elif kind == "error":
                            code = str(headers.get(":error-code", "error"))
                            reason = str(headers.get(":error-message", ""))
                            raise upstream_failure(
                                Failure(
                                    FailureKind.BROKEN_STREAM,
                                    self.name,
                                    f"provider `{self.name}` ended the stream with error `{code}`: {reason}",
                                )
                            )
                except UpstreamError:
                    if out:  # what arrived before the exception still reaches the client
                        await sink.send(b"".join(out))
                    raise
                if out:
                    await sink.send(b"".join(out))
                    if meter is not None:
                        meter.push_text("".join(text))
        except EventStreamError as exc:
            raise upstream_failure(
                Failure(
                    FailureKind.BAD_RESPONSE, self.name, f"provider `{self.name}` sent a malformed event stream: {exc}"
                )
            ) from None
        except orjson.JSONDecodeError:
            raise upstream_failure(
                Failure(FailureKind.BAD_RESPONSE, self.name, f"provider `{self.name}` sent an event that is not JSON")
            ) from None
        if frames.buffered or not decoder.complete:
            raise broken_stream(self.name, "ended the stream before `messageStop` and `metadata`")
        usage = decoder.usage
        if meter is not None:
            meter.report_usage(usage)
        await sink.send(b"".join(encoder.finish(usage)))
        return usage
