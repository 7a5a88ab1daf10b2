"""OpenAI and every OpenAI-compatible server (`kind = "openai"` with any `base_url`).

Requests are forwarded nearly verbatim: the body is re-encoded only when the gateway must
change it (a different upstream model name, or asking for usage in a stream). Streams are
parsed by the native SSE parser and each event is forwarded as soon as it is parsed; events
that arrive together in one network chunk leave together in one write.

Usage capture in streams: the gateway always asks for `stream_options.include_usage`. When the
client did not ask for it, the gateway removes what that option adds before the client sees
it: the final usage-only chunk, and the `"usage":null` member OpenAI adds to every other chunk.
The per-event work (parsing, usage capture, that removal) is the native `OpenAIChatStream`
(`rust/core/src/chat_stream.rs`), called once per network chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from tollway._native import OpenAIChatStream, SseParser
from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import ConfigError, SseError, StreamFormatError, UpstreamError
from tollway.providers import _openai_wire
from tollway.providers._common import is_context_length
from tollway.providers.base import ChatCall, Completion, ProviderAdapter, StreamMeter, StreamSink
from tollway.upstream import Endpoint, Failure, FailureKind, UpstreamClient, UpstreamResponse, upstream_failure
from tollway.usage import Usage, usage_from_openai, usage_from_responses

# Upstream response headers passed through to the client, renamed where ours take the name.
_PASSED_HEADERS = {
    "x-request-id": "x-upstream-request-id",
    "openai-processing-ms": "openai-processing-ms",
    "openai-model": "openai-model",
}


class OpenAIAdapter(ProviderAdapter):
    kind = "openai"
    operations = frozenset({"chat", "embeddings", "responses"})

    def __init__(
        self, config: ProviderConfig, timeouts: Timeouts, client: UpstreamClient | None, api_key: Secret | None
    ) -> None:
        super().__init__(config, timeouts, client)
        assert config.base_url is not None  # the loader requires it for this kind
        base = config.base_url.rstrip("/")
        self.chat_endpoint = Endpoint.parse(base + "/chat/completions")
        self.endpoints = {
            "embeddings": Endpoint.parse(base + "/embeddings"),
            "responses": Endpoint.parse(base + "/responses"),
        }
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers.update({k.lower(): v for k, v in config.headers.items()})
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key.reveal()}"
        if any("\r" in v or "\n" in v for v in headers.values()):
            # A line break in a header value would let a config or secret inject headers.
            raise ConfigError([f"provider `{self.name}`: a header value or the API key contains a line break"])
        self._headers = headers
        self._stream_headers = {**headers, "accept": "text/event-stream"}

    def _request_headers(self, call: ChatCall, stream: bool) -> dict[str, str]:
        out = dict(call.forward_headers)
        out.update(self._stream_headers if stream else self._headers)
        return out

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
        assert self.client is not None
        if call.api == "anthropic":  # an Anthropic-format client: translated both ways
            return await _openai_wire.chat_for_anthropic_client(self, call)
        body, _ = self._request_body(call)
        return await self._post_json(call, self.chat_endpoint, body, usage_from_openai)

    async def _post_json(
        self, call: ChatCall, endpoint: Endpoint, body: bytes, read_usage: Callable[[Any], Usage | None]
    ) -> Completion:
        """POST a JSON request and return the JSON answer as it came, with its usage."""
        assert self.client is not None
        resp, deadline = await self.client.post(
            self.name, endpoint, body, self._request_headers(call, False), self.timeouts
        )
        payload = await resp.read(deadline)
        if resp.status != 200:
            raise self._status_failure(resp.status, payload, resp.headers.get("retry-after"))
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise upstream_failure(
                Failure(FailureKind.BAD_RESPONSE, self.name, f"provider `{self.name}` answered with invalid JSON")
            ) from None
        usage = read_usage(parsed.get("usage")) if isinstance(parsed, dict) else None
        return Completion(body=payload, usage=usage, headers=self._passed_headers(resp.headers))

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        assert self.client is not None
        if call.api == "anthropic":
            return await _openai_wire.stream_for_anthropic_client(self, call, sink)
        body, injected = self._request_body(call)
        resp, deadline = await self.client.post(
            self.name, self.chat_endpoint, body, self._request_headers(call, True), self.timeouts
        )
        try:
            if resp.status != 200:
                payload = await resp.read(deadline)
                raise self._status_failure(resp.status, payload, resp.headers.get("retry-after"))
            ctype = resp.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                raise upstream_failure(
                    Failure(
                        FailureKind.BAD_RESPONSE,
                        self.name,
                        f"provider `{self.name}` answered a stream request with `{ctype or 'no content type'}`",
                    )
                )
            return await self._pump(resp, deadline, injected, sink, call.meter)
        finally:
            resp.close()

    async def _pump(
        self, resp: UpstreamResponse, deadline: float, injected: bool, sink: StreamSink, meter: StreamMeter | None
    ) -> Usage | None:
        # Per event, natively: parse, capture usage, remove what the gateway injected, forward.
        stream = OpenAIChatStream(strip_usage=injected)
        if meter is not None:
            meter.watch(stream)
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
            meter.report_usage(usage)
        if not stream.done:
            raise upstream_failure(
                Failure(
                    FailureKind.BROKEN_STREAM,
                    self.name,
                    f"provider `{self.name}` ended the stream before `[DONE]`",
                )
            )
        return usage

    # -- embeddings and the Responses API: passed through in OpenAI's format ---------------------
    def _forward_body(self, call: ChatCall) -> bytes:
        upstream_model = call.model.upstream_model
        if call.body.get("model") == upstream_model:
            return call.raw
        return orjson.dumps({**call.body, "model": upstream_model})

    async def forward(self, call: ChatCall, operation: str) -> Completion:
        read_usage = usage_from_responses if operation == "responses" else usage_from_openai
        return await self._post_json(call, self.endpoints[operation], self._forward_body(call), read_usage)

    async def forward_stream(self, call: ChatCall, operation: str, sink: StreamSink) -> Usage | None:
        """The Responses API streamed: events relayed as they are parsed; usage from
        `response.completed`, output text from `response.output_text.delta` for the meter."""
        assert self.client is not None
        resp, deadline = await self.client.post(
            self.name,
            self.endpoints[operation],
            self._forward_body(call),
            self._request_headers(call, True),
            self.timeouts,
        )
        try:
            if resp.status != 200:
                raise self._status_failure(resp.status, await resp.read(deadline), resp.headers.get("retry-after"))
            parser = SseParser()
            usage: Usage | None = None
            done = False
            async for chunk in resp.chunks(self.timeouts, deadline):
                out: list[bytes] = []
                for event in parser.feed(chunk):
                    kind = event.event or ""
                    if kind == "response.output_text.delta" and call.meter is not None:
                        delta = orjson.loads(event.data).get("delta")
                        if isinstance(delta, str):
                            call.meter.push_text(delta)
                    elif kind in ("response.completed", "response.incomplete", "response.failed"):
                        done = True
                        response = orjson.loads(event.data).get("response")
                        if isinstance(response, dict):
                            usage = usage_from_responses(response.get("usage")) or usage
                    out.append(event.to_bytes())
                if out:
                    await sink.send(b"".join(out))
        except (SseError, orjson.JSONDecodeError) as exc:
            raise upstream_failure(
                Failure(FailureKind.BAD_RESPONSE, self.name, f"provider `{self.name}` sent a malformed stream: {exc}")
            ) from None
        finally:
            resp.close()
        if call.meter is not None:
            call.meter.report_usage(usage)
        if not done:
            raise upstream_failure(
                Failure(FailureKind.BROKEN_STREAM, self.name, f"provider `{self.name}` ended the stream early")
            )
        return usage

    def _status_failure(self, status: int, payload: bytes, retry_after: str | None) -> UpstreamError:
        upstream_message = _error_message(payload)
        detail = f": {upstream_message}" if upstream_message else ""
        if status == 429:
            kind = FailureKind.RATE_LIMITED
            message = f"provider `{self.name}` is rate limiting the gateway (429){detail}"
        elif status in (401, 403):
            kind = FailureKind.CREDENTIALS
            message = f"provider `{self.name}` rejected the gateway's credentials ({status}); check its `api_key`"
        elif is_context_length(status, payload):  # a fallback to a longer-context model may help
            kind = FailureKind.CONTEXT_LENGTH
            message = f"provider `{self.name}` says the request exceeds the model's context window{detail}"
        elif 400 <= status < 500:
            kind = FailureKind.CLIENT_ERROR
            message = f"provider `{self.name}` rejected the request ({status}){detail}"
        elif status >= 500:
            kind = FailureKind.SERVER_ERROR
            message = f"provider `{self.name}` failed with {status}{detail}"
        else:
            kind = FailureKind.BAD_RESPONSE
            message = f"provider `{self.name}` answered with unexpected status {status}"
        return upstream_failure(Failure(kind, self.name, message, status, retry_after, upstream_message))

    @staticmethod
    def _passed_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
        out = []
        for name, renamed in _PASSED_HEADERS.items():
            value = headers.get(name)
            if value is not None:
                out.append((renamed, value))
        return out


def _error_message(payload: bytes) -> str | None:
    """The `error.message` of an OpenAI-style error body, shortened; `None` if there is none."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        return None
    return message if len(message) <= 500 else message[:497] + "..."
