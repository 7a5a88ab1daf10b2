"""Plumbing every adapter that calls a provider shares: one POST with key rotation
(`HttpAdapter.post`), one failure classifier for any provider's error answer
(`status_failure`), one stream pump (`HttpAdapter.pump`) fed by a per-format `StreamRelay`,
and the client-format ends.

The pump: the native client frames the provider's stream (server-sent events, the OpenAI chat
relay, AWS event-stream messages) and hands over one batch per network chunk at most; a relay
turns a batch into the client's bytes (one write), and says when the stream ended properly
and with what usage. Reading from the provider pauses while the client lags
(`tollway.streaming.ClientStream`), so a stream's memory is bounded on both sides.

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

import abc
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from tollway.config.schema import ProviderConfig, Timeouts
from tollway.config.secrets import Secret
from tollway.errors import TranslationError, UpstreamError
from tollway.providers._anthropic_format import AnthropicStreamEncoder, openai_completion_to_anthropic
from tollway.providers._keys import KeyRing
from tollway.providers._openai_format import OpenAIStreamEncoder, completion_body
from tollway.providers._stream import Part, StreamEncoder, output_text
from tollway.providers.base import ChatCall, ProviderAdapter, StreamMeter, StreamSink
from tollway.upstream import (
    Egress,
    Endpoint,
    Failure,
    FailureKind,
    Framing,
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
    """Reads one upstream event's data at a time (see `tollway.providers._stream`)."""

    complete: bool

    @property
    def usage(self) -> Usage | None: ...

    def feed(self, data: str) -> list[Part]: ...


def broken_stream(provider: str, what: str) -> UpstreamError:
    return upstream_failure(Failure(FailureKind.BROKEN_STREAM, provider, f"provider `{provider}` {what}"))


def check_content_type(provider: str, resp: UpstreamResponse, expected: str) -> None:
    ctype = resp.headers.get("content-type", "")
    if not ctype.startswith(expected):
        resp.close()
        raise upstream_failure(
            Failure(
                FailureKind.BAD_RESPONSE,
                provider,
                f"provider `{provider}` answered a stream request with `{ctype or 'no content type'}`",
            )
        )


class StreamRelay(abc.ABC):
    """One stream format's half of the pump: a batch of what the native client framed -> the
    client's bytes, and whether (and with what usage) the stream ended properly."""

    # How a stream cut before its end event is described ("provider `x` <ended_early>").
    ended_early = "ended the stream before its end event"

    @abc.abstractmethod
    def feed(self, batch: Any, meter: StreamMeter | None) -> tuple[bytes, UpstreamError | None]:
        """The client's bytes for one batch (the output text they carry pushed to `meter`
        first, so a live count sees what the write delivers), and a failure that ends the stream
        after them (what arrived before a bad event still reaches the client)."""

    @property
    @abc.abstractmethod
    def complete(self) -> bool:
        """The stream's end event arrived."""

    @property
    @abc.abstractmethod
    def usage(self) -> Usage | None:
        """The provider's usage, once the stream is complete."""

    def finish(self, usage: Usage | None) -> bytes:
        """The bytes that end a complete stream in the client's format (none for a relay)."""
        return b""


class TranslatedRelay(StreamRelay):
    """An SSE stream in another format than the client's: each event decoded into parts, the
    parts encoded in the client's format."""

    __slots__ = ("decoder", "encoder")

    def __init__(self, decoder: SseDecoder, encoder: StreamEncoder) -> None:
        self.decoder = decoder
        self.encoder = encoder

    def feed(self, batch: Any, meter: StreamMeter | None) -> tuple[bytes, UpstreamError | None]:
        out: list[bytes] = []
        failure: UpstreamError | None = None
        decoder, encoder = self.decoder, self.encoder
        for event in batch:
            try:
                parts = decoder.feed(event.data)
            except UpstreamError as exc:
                failure = exc
                break
            if parts:
                out.extend(encoder.encode(parts))
                if meter is not None:
                    meter.push_text(output_text(parts))
        return b"".join(out), failure

    @property
    def complete(self) -> bool:
        return self.decoder.complete

    @property
    def usage(self) -> Usage | None:
        return self.decoder.usage

    def finish(self, usage: Usage | None) -> bytes:
        return b"".join(self.encoder.finish(usage))


class HttpAdapter(ProviderAdapter):
    """An adapter that POSTs to a provider, with optional key rotation."""

    def __init__(self, config: ProviderConfig, timeouts: Timeouts, egress: Egress | None, keys: KeyRing | None) -> None:
        super().__init__(config, timeouts, egress)
        self.keys = keys
        self.extra_headers = {k.lower(): v for k, v in config.headers.items()}

    def endpoint(self, url: str) -> Endpoint:
        assert self.egress is not None
        return self.egress.endpoint(url)

    def prepare_body(self, body: bytes) -> bytes:
        """The body as it goes on the wire (a hook for a server's known quirks)."""
        return body

    async def post(
        self,
        endpoint: Endpoint,
        body: bytes,
        headers_for: Callable[[Secret | None], dict[str, str]],
        framing: Framing | None = None,
        strip_usage: bool = False,
    ) -> UpstreamResponse:
        """POST and return a 2xx answer: whole, or, with a `framing`, as a stream (its `body`
        an `UpstreamStream`). Any other answer raises its classified failure (`status_failure`).
        A key the provider rate-limits or rejects cools down and the next key is tried at once
        (each key at most once per call)."""
        egress = self.egress
        assert egress is not None
        body = self.prepare_body(body)
        attempts: Iterable[Secret | None] = self.keys.attempt_order() if self.keys is not None else (None,)
        last: UpstreamError | None = None
        for key in attempts:
            if framing is None:
                resp = await egress.post(self.name, endpoint, body, headers_for(key), self.timeouts)
            else:
                resp = await egress.stream(
                    self.name, endpoint, body, headers_for(key), self.timeouts, framing, strip_usage
                )
            if 200 <= resp.status < 300:
                return resp
            last = status_failure(self.name, resp.status, resp.payload, resp.headers)
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

    async def pump(
        self, resp: UpstreamResponse, relay: StreamRelay, sink: StreamSink, meter: StreamMeter | None
    ) -> Usage | None:
        """The one stream loop: every batch of `resp`'s stream through `relay` to `sink`, one
        write per batch. A stream without its end event is broken, whatever came before; the
        provider's usage is reported only once the stream is complete (a partial count would
        understate what a broken stream produced)."""
        egress = self.egress
        assert egress is not None
        try:
            async for batch in egress.batches(self.name, resp.stream):
                out, failure = relay.feed(batch, meter)
                if out:
                    await sink.send(out)
                if failure is not None:
                    raise failure
        finally:
            resp.close()
        if not relay.complete:
            raise broken_stream(self.name, relay.ended_early)
        usage = relay.usage
        if meter is not None:
            meter.report_usage(usage)
        tail = relay.finish(usage)
        if tail:
            await sink.send(tail)
        return usage
