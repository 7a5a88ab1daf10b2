"""The built-in `mock` provider: deterministic answers with no network, in either client API.

For demos, tests and load tests. It answers every chat request with the configured `reply`
(split into `stream_chunks` pieces when streamed), after `latency_ms`, with `chunk_delay_ms`
between stream chunks, and reports usage. Token counts are word counts (messages: words of all
text content plus 4 per message; answer: words of the reply): deterministic and cheap, not a
provider's tokenizer. `max_tokens` (or `max_completion_tokens`) cuts the reply to that many
words with `finish_reason = "length"`; `n` returns that many identical choices.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from tollway._native import SseParser
from tollway.config.schema import ProviderConfig, Timeouts
from tollway.providers._anthropic_format import anthropic_request_to_openai
from tollway.providers._common import client_body, client_encoder
from tollway.providers._openai_format import OpenAIStreamDecoder
from tollway.providers._stream import output_text
from tollway.providers.base import ChatCall, Completion, ProviderAdapter, StreamSink
from tollway.usage import Usage


def _split(words: list[str], parts: int) -> list[str]:
    """Split words into `parts` nearly equal pieces that concatenate back to the text."""
    parts = max(1, min(parts, len(words)))
    size, extra = divmod(len(words), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        piece = " ".join(words[start:end])
        out.append(piece if i == 0 else " " + piece)
        start = end
    return out


def _prompt_words(messages: Any) -> int:
    total = 0
    for message in messages if isinstance(messages, list) else ():
        total += 4
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"].split())
    return total


class MockAdapter(ProviderAdapter):
    kind = "mock"

    def __init__(self, config: ProviderConfig, timeouts: Timeouts) -> None:
        super().__init__(config, timeouts, egress=None)
        self.options = config.mock
        self._words = self.options.reply.split()

    def _answer(self, body: dict[str, Any]) -> tuple[list[str], str]:
        words = self._words
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(words):
            return words[:limit], "length"
        return words, "stop"

    @staticmethod
    def _choices(body: dict[str, Any]) -> int:
        n = body.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1

    async def chat(self, call: ChatCall) -> Completion:
        if self.options.latency_ms > 0:
            await asyncio.sleep(self.options.latency_ms / 1000)
        body = _openai_body(call)
        words, finish = self._answer(body)
        n = self._choices(body)
        usage = Usage(prompt_tokens=_prompt_words(body.get("messages")), completion_tokens=len(words) * n)
        text = " ".join(words)
        payload = {
            "id": f"chatcmpl-mock-{call.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": call.model.upstream_model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            },
            "system_fingerprint": "tollway-mock",
        }
        if call.api == "anthropic":
            return Completion(body=client_body(self.name, call, payload, usage), usage=usage)
        return Completion(body=orjson.dumps(payload), usage=usage)

    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        if call.api == "anthropic":
            # Answer in OpenAI's format and translate it event by event, as for a real provider.
            translating = _AnthropicSink(self.name, call, sink)
            usage = await self._stream_openai(call, _openai_body(call), translating, include_usage=True)
            await translating.finish(usage)
            return usage
        stream_options = call.body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
        return await self._stream_openai(call, call.body, sink, include_usage)

    async def _stream_openai(
        self, call: ChatCall, body: dict[str, Any], sink: StreamSink, include_usage: bool
    ) -> Usage | None:
        options = self.options
        if options.latency_ms > 0:
            await asyncio.sleep(options.latency_ms / 1000)
        words, finish = self._answer(body)
        n = self._choices(body)
        usage = Usage(prompt_tokens=_prompt_words(body.get("messages")), completion_tokens=len(words) * n)
        base = {
            "id": f"chatcmpl-mock-{call.request_id}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": call.model.upstream_model,
            "system_fingerprint": "tollway-mock",
        }
        extra = {"usage": None} if include_usage else {}

        def event(choices: list[dict[str, Any]], **more: Any) -> bytes:
            return b"data: " + orjson.dumps({**base, "choices": choices, **more}) + b"\n\n"

        delay = options.chunk_delay_ms / 1000
        await sink.send(
            event(
                [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i in range(n)],
                **extra,
            )
        )
        for piece in _split(words, options.stream_chunks) if words else []:
            if delay > 0:
                await asyncio.sleep(delay)
            if call.meter is not None and call.api == "openai":
                call.meter.push_text(piece * n)  # before the send: a live count sees this write
            await sink.send(
                event([{"index": i, "delta": {"content": piece}, "finish_reason": None} for i in range(n)], **extra)
            )
        tail = event([{"index": i, "delta": {}, "finish_reason": finish} for i in range(n)], **extra)
        if include_usage:
            tail += event(
                [],
                usage={
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                },
            )
        await sink.send(tail + b"data: [DONE]\n\n")
        return usage


def _openai_body(call: ChatCall) -> dict[str, Any]:
    """The request in OpenAI's format (an Anthropic-format request is translated)."""
    return anthropic_request_to_openai(call.body) if call.api == "anthropic" else call.body


class _AnthropicSink:
    """Turns the mock's OpenAI stream into Anthropic events, as the translating adapters do."""

    def __init__(self, provider: str, call: ChatCall, sink: StreamSink) -> None:
        self._parser = SseParser()
        self._decoder = OpenAIStreamDecoder(provider)
        self._encoder = client_encoder(call, call.model.upstream_model)
        self._sink = sink
        self._meter = call.meter

    @property
    def started(self) -> bool:
        return self._sink.started

    async def send(self, data: bytes) -> None:
        out: list[bytes] = []
        for event in self._parser.feed(data):
            parts = self._decoder.feed(event.data)
            if parts:
                out.extend(self._encoder.encode(parts))
                if self._meter is not None:
                    self._meter.push_text(output_text(parts))
        if out:
            await self._sink.send(b"".join(out))

    async def finish(self, usage: Usage | None) -> None:
        await self._sink.send(b"".join(self._encoder.finish(usage)))
