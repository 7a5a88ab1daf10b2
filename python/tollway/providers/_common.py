"""Plumbing shared by the adapters that translate: one POST with key rotation, failures
classified from any provider's error body, the SSE stream pump, and the client-format ends.

Failure classification (a provider's HTTP status and error body -> `FailureKind`):

| status | kind |
|---|---|
| 429 | `RATE_LIMITED` (with `Retry-After` when sent) |
| 401, 403; 400 saying the API key is invalid (Gemini) | `CREDENTIALS` |
| 408 (the provider's own timeout) | `TIMEOUT` |
| 400/413/422 whose message says the input exceeds the context window | `CONTEXT_LENGTH` |
| other 4xx | `CLIENT_ERROR` |
| 5xx (and Anthropic's 529) | `SERVER_ERROR` |
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from tollway._native import SseParser
from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import SseError, TranslationError, UpstreamError
from tollway.providers._anthropic_format import AnthropicStreamEncoder, openai_completion_to_anthropic
from tollway.providers._keys import KeyRing
from tollway.providers._openai_format import OpenAIStreamEncoder, completion_body
from tollway.providers._stream import Part, StreamEncoder, output_text
from tollway.providers.base import ChatCall, ProviderAdapter, StreamMeter, StreamSink
from tollway.upstream import (
    Endpoint,
    Failure,
    FailureKind,
    UpstreamClient,
    UpstreamResponse,
    failure_of,
    upstream_failure,
)
from tollway.usage import Usage

# How providers word "the input is longer than the model's context window".
_CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(length|window)|maximum context|prompt is too long|input is too long|too many input tokens"
    r"|input token count.*exceeds|exceeds? (the )?context limit|model_context_window_exceeded",
    re.IGNORECASE,
)
_INVALID_KEY = re.compile(r"api[ _-]?key (is )?(not valid|invalid)|API_KEY_INVALID", re.IGNORECASE)


def error_details(payload: bytes) -> tuple[str | None, str | None]:
    """A provider error body's message and code, whatever the provider: OpenAI and Gemini
    `{"error": {"message", "code"|"status"}}`, Anthropic `{"type": "error", "error": {...}}`,
    Bedrock `{"message"}`; a list of such objects (Gemini streams); `(None, None)` otherwise."""
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    if not isinstance(parsed, dict):
        return None, None
    error = parsed.get("error", parsed)
    if isinstance(error, str):
        return _short(error), None
    if not isinstance(error, dict):
        return None, None
    message = error.get("message", error.get("Message"))
    code = error.get("code") if isinstance(error.get("code"), str) else error.get("status", error.get("type"))
    details = error.get("details")
    if isinstance(details, list):  # Google's `ErrorInfo.reason`, e.g. API_KEY_INVALID
        for item in details:
            if isinstance(item, dict) and isinstance(item.get("reason"), str):
                code = item["reason"]
    return (_short(message) if isinstance(message, str) and message else None), (
        code if isinstance(code, str) else None
    )


def _short(message: str) -> str:
    return message if len(message) <= 500 else message[:497] + "..."


def is_context_length(status: int, payload: bytes) -> bool:
    """Whether an error answer says the input exceeds the model's context window."""
    if status not in (400, 413, 422):
        return False
    message, code = error_details(payload)
    return code == "context_length_exceeded" or bool(_CONTEXT_LENGTH.search(f"{message or ''} {code or ''}"))


def status_failure(provider: str, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """The failure for a non-2xx answer (see the table at the top of this module)."""
    message, code = error_details(payload)
    if message is None and headers.get("x-amzn-errortype"):
        message = headers["x-amzn-errortype"].split(":", 1)[0]
    detail = f": {message}" if message else ""
    text = f"{message or ''} {code or ''}"
    retry_after = headers.get("retry-after")
    if status == 429:
        kind = FailureKind.RATE_LIMITED
        text = f"provider `{provider}` is rate limiting the gateway (429){detail}"
    elif status in (401, 403) or (status == 400 and _INVALID_KEY.search(text)):
        kind = FailureKind.CREDENTIALS
        text = f"provider `{provider}` rejected the gateway's credentials ({status}); check its `api_key`"
    elif status == 408:  # the provider timed out (Bedrock's ModelTimeoutException)
        kind = FailureKind.TIMEOUT
        text = f"provider `{provider}` timed out (408){detail}"
    elif is_context_length(status, payload):
        kind = FailureKind.CONTEXT_LENGTH
        text = f"provider `{provider}` says the request exceeds the model's context window ({status}){detail}"
    elif 400 <= status < 500:
        kind = FailureKind.CLIENT_ERROR
        text = f"provider `{provider}` rejected the request ({status}){detail}"
    elif status >= 500:
        kind = FailureKind.SERVER_ERROR
        text = f"provider `{provider}` failed with {status}{detail}"
    else:
        kind = FailureKind.BAD_RESPONSE
        text = f"provider `{provider}` answered with unexpected status {status}"
    return upstream_failure(Failure(kind, provider, text, status, retry_after, message))


def request_untranslatable(provider: str, kind: str, exc: TranslationError) -> UpstreamError:
    """A request the provider's API cannot express: the client's request is at fault (400)."""
    return upstream_failure(
        Failure(
            FailureKind.CLIENT_ERROR, provider, f"provider `{provider}` ({kind}) cannot take this request: {exc}", 400
        )
    )


def answer_untranslatable(provider: str, exc: TranslationError) -> UpstreamError:
    return upstream_failure(Failure(FailureKind.BAD_RESPONSE, provider, f"provider `{provider}`: {exc}"))


def bad_json(provider: str) -> UpstreamError:
    return upstream_failure(
        Failure(FailureKind.BAD_RESPONSE, provider, f"provider `{provider}` answered with invalid JSON")
    )


def parse_json_object(provider: str, payload: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise bad_json(provider) from None
    if not isinstance(parsed, dict):
        raise bad_json(provider)
    return parsed


def include_usage(call: ChatCall) -> bool:
    options = call.body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def client_encoder(call: ChatCall, model: str) -> StreamEncoder:
    """The encoder that writes the client's stream format."""
    suffix = call.request_id.removeprefix("req_")
    if call.api == "anthropic":
        return AnthropicStreamEncoder(f"msg_{suffix}", model)
    return OpenAIStreamEncoder(f"chatcmpl-{suffix}", model, int(time.time()), include_usage(call))


def client_body(provider: str, call: ChatCall, completion: dict[str, Any], usage: Usage | None) -> bytes:
    """A translated answer (an OpenAI chat completion) in the client's format."""
    suffix = call.request_id.removeprefix("req_")
    if call.api == "anthropic":
        try:
            return orjson.dumps(openai_completion_to_anthropic(completion, usage, f"msg_{suffix}"))
        except TranslationError as exc:
            raise answer_untranslatable(provider, exc) from None
    completion = {**completion, "id": f"chatcmpl-{suffix}"}
    return completion_body(completion, usage)


class SseDecoder(Protocol):
    complete: bool

    @property
    def usage(self) -> Usage | None: ...

    def feed(self, data: str) -> list[Part]: ...


def broken_stream(provider: str, what: str) -> UpstreamError:
    return upstream_failure(Failure(FailureKind.BROKEN_STREAM, provider, f"provider `{provider}` {what}"))


def check_content_type(provider: str, resp: UpstreamResponse, expected: str) -> None:
    ctype = resp.headers.get("content-type", "")
    if not ctype.startswith(expected):
        raise upstream_failure(
            Failure(
                FailureKind.BAD_RESPONSE,
                provider,
                f"provider `{provider}` answered a stream request with `{ctype or 'no content type'}`",
            )
        )


class HttpAdapter(ProviderAdapter):
    """An adapter that POSTs JSON to a provider, with optional key rotation."""

    def __init__(
        self, config: ProviderConfig, timeouts: Timeouts, client: UpstreamClient | None, keys: KeyRing | None
    ) -> None:
        super().__init__(config, timeouts, client)
        self.keys = keys
        self.extra_headers = {k.lower(): v for k, v in config.headers.items()}

    async def post(
        self, endpoint: Endpoint, body: bytes, headers_for: Callable[[Secret | None], dict[str, str]]
    ) -> tuple[UpstreamResponse, float]:
        """POST and return a 2xx response. A key the provider rate-limits or rejects cools down
        and the next key is tried at once (each key at most once per call)."""
        assert self.client is not None
        attempts: Iterable[Secret | None] = self.keys.attempt_order() if self.keys is not None else (None,)
        last: UpstreamError | None = None
        for key in attempts:
            resp, deadline = await self.client.post(self.name, endpoint, body, headers_for(key), self.timeouts)
            if 200 <= resp.status < 300:
                return resp, deadline
            payload = await resp.read(deadline)
            last = status_failure(self.name, resp.status, payload, resp.headers)
            kind = failure_of(last).kind
            if (
                key is not None
                and self.keys is not None
                and kind in (FailureKind.RATE_LIMITED, FailureKind.CREDENTIALS)
            ):
                self.keys.cool_down(key, resp.status, resp.headers.get("retry-after"))
                continue
            raise last
        assert last is not None
        raise last

    def check_content_type(self, resp: UpstreamResponse, expected: str) -> None:
        check_content_type(self.name, resp, expected)

    async def pump_sse(
        self,
        resp: UpstreamResponse,
        deadline: float,
        decoder: SseDecoder,
        encoder: StreamEncoder,
        sink: StreamSink,
        meter: StreamMeter | None,
    ) -> Usage | None:
        return await pump_sse(self.name, self.timeouts, resp, deadline, decoder, encoder, sink, meter)


async def pump_sse(
    provider: str,
    timeouts: Timeouts,
    resp: UpstreamResponse,
    deadline: float,
    decoder: SseDecoder,
    encoder: StreamEncoder,
    sink: StreamSink,
    meter: StreamMeter | None,
) -> Usage | None:
    """Translate an SSE stream event by event; what one network chunk completes leaves in one
    write. A stream without its end event is broken, whatever came before. The output text
    delivered goes to `meter` as it leaves; the provider's usage only once the stream is
    complete (a partial count would understate what a broken stream produced)."""
    parser = SseParser()
    try:
        async for chunk in resp.chunks(timeouts, deadline):
            out: list[bytes] = []
            text: list[str] = []
            for event in parser.feed(chunk):
                parts = decoder.feed(event.data)
                if parts:
                    out.extend(encoder.encode(parts))
                    if meter is not None:
                        text.append(output_text(parts))
            if out:
                # The text first: a live count (a truncating budget) sees what this write delivers.
                if meter is not None:
                    meter.push_text("".join(text))
                await sink.send(b"".join(out))
    except SseError as exc:
        raise upstream_failure(
            Failure(FailureKind.BAD_RESPONSE, provider, f"provider `{provider}` sent a malformed stream: {exc}")
        ) from None
    if not decoder.complete:
        raise broken_stream(provider, "ended the stream before its end event")
    usage = decoder.usage
    if meter is not None:
        meter.report_usage(usage)
    await sink.send(b"".join(encoder.finish(usage)))
    return usage
