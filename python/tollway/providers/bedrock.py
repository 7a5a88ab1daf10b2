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

from typing import Any
from urllib.parse import quote

import orjson

from tollway._native import UpstreamStream
from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError, TranslationError, UpstreamError
from tollway.providers._anthropic_format import anthropic_request_to_openai
from tollway.providers._bedrock_format import (
    BedrockStreamDecoder,
    bedrock_response_to_openai,
    openai_request_to_bedrock,
)
from tollway.providers._common import (
    HttpAdapter,
    StreamRelay,
    client_body,
    client_encoder,
    parse_json_object,
    request_untranslatable,
)
from tollway.providers._sigv4 import sign
from tollway.providers._stream import StreamEncoder, output_text
from tollway.providers.base import ChatCall, Completion, StreamMeter, StreamSink
from tollway.upstream import Egress, Endpoint, Failure, FailureKind, Framing, UpstreamResponse, upstream_failure
from tollway.usage import Usage

EVENT_STREAM = "application/vnd.amazon.eventstream"


class BedrockAdapter(HttpAdapter):
    kind = "bedrock"

    def __init__(
        self,
        config: ProviderConfig,
        timeouts: Timeouts,
        egress: Egress | None,
        access_key: Secret,
        secret_key: Secret,
        session_token: Secret | None,
    ) -> None:
        super().__init__(config, timeouts, egress, None)
        assert config.region is not None  # the loader requires it for this kind
        self.region = config.region
        self.base_url = (config.base_url or f"https://bedrock-runtime.{config.region}.amazonaws.com").rstrip("/")
        self._access_key = access_key
        self._secret_key = secret_key
        self._session_token = session_token
        self._endpoints: dict[tuple[str, bool], tuple[Endpoint, str, str, str]] = {}
        if any("\r" in v or "\n" in v for v in self.extra_headers.values()):
            raise ConfigError([f"provider `{self.name}`: a header value contains a line break"])

    def _endpoint(self, model: str, stream: bool) -> tuple[Endpoint, str, str, str]:
        """The endpoint, and the host, path and query its requests are signed with."""
        found = self._endpoints.get((model, stream))
        if found is None:
            action = "converse-stream" if stream else "converse"
            url = f"{self.base_url}/model/{quote(model, safe='')}/{action}"
            rest = url.split("://", 1)[1]
            host, _, path = rest.partition("/")
            path, _, query = ("/" + path).partition("?")
            found = self._endpoints[(model, stream)] = (self.endpoint(url), host, path, query)
        return found

    def _signed_headers(self, host: str, path: str, query: str, body: bytes, stream: bool) -> dict[str, str]:
        signed = {"content-type": "application/json"}
        added = sign(
            method="POST",
            host=host,
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

    async def _send(self, call: ChatCall, stream: bool) -> UpstreamResponse:
        endpoint, host, path, query = self._endpoint(call.model.upstream_model, stream)
        body = self._body(call)
        # Signed per request: the signature covers the time and the body.
        return await self.post(
            endpoint,
            body,
            lambda _key: self._signed_headers(host, path, query, body, stream),
            Framing.EVENT_STREAM if stream else None,
        )

    async def chat(self, call: ChatCall) -> Completion:
        resp = await self._send(call, False)
        response = parse_json_object(self.name, resp.payload)
        completion, usage = bedrock_response_to_openai(response, call.model.upstream_model)
        passed = (
            [("x-upstream-request-id", resp.headers["x-amzn-requestid"])] if "x-amzn-requestid" in resp.headers else []
        )
        return Completion(body=client_body(self.name, call, completion, usage), usage=usage, headers=passed)

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        resp = await self._send(call, True)
        self.check_content_type(resp, EVENT_STREAM)
        decoder = BedrockStreamDecoder(self.name)
        relay = BedrockRelay(self.name, resp.stream, decoder, client_encoder(call, call.model.upstream_model))
        return await self.pump(resp, relay, sink, call.meter)


class BedrockRelay(StreamRelay):
    """Bedrock's event-stream messages (decoded natively, both CRCs checked), each `event`
    translated as it arrives; an `exception` message ends the stream with the matching failure,
    an `error` message as broken; a stream cut inside a message or before `messageStop` and
    `metadata` is broken."""

    ended_early = "ended the stream before `messageStop` and `metadata`"
    __slots__ = ("decoder", "encoder", "provider", "stream")

    def __init__(
        self, provider: str, stream: UpstreamStream, decoder: BedrockStreamDecoder, encoder: StreamEncoder
    ) -> None:
        self.provider = provider
        self.stream = stream
        self.decoder = decoder
        self.encoder = encoder

    def feed(self, batch: Any, meter: StreamMeter | None) -> tuple[bytes, UpstreamError | None]:
        out: list[bytes] = []
        for message in batch:
            headers = message.headers
            kind = headers.get(":message-type")
            try:
                if kind == "event":
                    payload = orjson.loads(message.payload) if message.payload else {}
                    parts = self.decoder.feed(
                        str(headers.get(":event-type", "")), payload if isinstance(payload, dict) else {}
                    )
                    if parts:
                        out.extend(self.encoder.encode(parts))
                        if meter is not None:
                            meter.push_text(output_text(parts))
                elif kind == "exception":
                    return b"".join(out), self.decoder.exception(
                        str(headers.get(":exception-type", "")), message.payload
                    )
                elif kind == "error":
                    code = str(headers.get(":error-code", "error"))
                    reason = str(headers.get(":error-message", ""))
                    return b"".join(out), upstream_failure(
                        Failure(
                            FailureKind.BROKEN_STREAM,
                            self.provider,
                            f"provider `{self.provider}` ended the stream with error `{code}`: {reason}",
                        )
                    )
            except orjson.JSONDecodeError:
                return b"".join(out), upstream_failure(
                    Failure(
                        FailureKind.BAD_RESPONSE,
                        self.provider,
                        f"provider `{self.provider}` sent an event that is not JSON",
                    )
                )
            except UpstreamError as exc:
                return b"".join(out), exc
        return b"".join(out), None

    @property
    def complete(self) -> bool:
        return self.decoder.complete and self.stream.partial_message_bytes == 0

    @property
    def usage(self) -> Usage | None:
        return self.decoder.usage

    def finish(self, usage: Usage | None) -> bytes:
        return b"".join(self.encoder.finish(usage))
