"""The one shape every provider adapter has.

An adapter turns a client's chat request into a provider call and the provider's answer back
into the client's API format. It never writes to the client directly: a non-streamed call
returns a `Completion`; a streamed call sends bytes to a `StreamSink`, which starts the HTTP
response on the first send. Until that first send, an adapter may still fail with
`UpstreamError`, and the client gets a proper JSON error; after it, the server ends the stream
with an explicit error event instead.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from tollway._native import StreamTokenCounter, TokenCounter
from tollway.config.schema import ModelConfig, ProviderConfig, Timeouts
from tollway.upstream import Egress
from tollway.usage import Usage


@dataclass(slots=True)
class ChatCall:
    """One chat request, parsed once by the server."""

    request_id: str
    body: dict[str, Any]
    raw: bytes
    model: ModelConfig
    stream: bool
    # Client headers that may go upstream (see `tollway.upstream.forwardable_headers`).
    forward_headers: dict[str, str] = field(default_factory=dict)
    # The API the client called: `body` and `raw` are in its format, and so must be the
    # `Completion.body` and the stream bytes the adapter produces (translated when the provider
    # speaks another format).
    api: Literal["openai", "anthropic"] = "openai"
    # What a streamed call delivered, for usage when the provider reports none (see `StreamMeter`).
    meter: StreamMeter | None = None


class TextSource(Protocol):
    """A native relay that keeps the output text of what it forwarded (`UpstreamStream` with
    the OpenAI chat framing)."""

    @property
    def pending_text_bytes(self) -> int: ...

    def take_output_text(self) -> str: ...


class StreamMeter:
    """What a streamed call has delivered so far, kept by the adapter for the usage record.

    The provider's usage, when a stream carries it, is the truth (`report_usage`). When it never
    arrives (the stream broke, the client left, the server ignores `include_usage`), the gateway
    counts the output text that passed: adapters either `watch` a native relay that keeps the
    text itself (read only if needed, so a short complete stream costs nothing), or `push_text`
    the deltas they translated. Text is counted in delivery order, with the served model's
    tokenizer.

    Memory stays bounded whatever the stream's length: `after_send` (after each write to the
    client) moves text past `KEEP` characters (`KEEP_NATIVE` bytes in a native relay) into a
    running count, so no stream keeps its whole output.
    """

    KEEP = 64 * 1024
    KEEP_NATIVE = 256 * 1024

    __slots__ = ("_counter", "_pending", "_pending_len", "_running", "_sources", "usage")

    def __init__(self, counter: TokenCounter) -> None:
        self.usage: Usage | None = None
        self._counter = counter
        self._running: StreamTokenCounter | None = None
        self._sources: list[TextSource] = []
        self._pending: list[str] = []
        self._pending_len = 0

    def report_usage(self, usage: Usage | None) -> None:
        if usage is not None:
            self.usage = usage

    def watch(self, source: TextSource) -> None:
        self._sources.append(source)

    def push_text(self, text: str) -> None:
        if text:
            self._pending.append(text)
            self._pending_len += len(text)

    def after_send(self) -> None:
        """Keep memory bounded: count text past the thresholds (cheap below them)."""
        for source in self._sources:
            if source.pending_text_bytes > self.KEEP_NATIVE:
                self.push_text(source.take_output_text())
        if self._pending_len > self.KEEP:
            self._count_pending()

    def count(self) -> int:
        """Output tokens delivered so far (a running count, for a live budget)."""
        self._collect()
        self._count_pending()
        return self._running.total if self._running is not None else 0

    def output_tokens(self) -> int:
        """The exact count of everything delivered (at the end of the call)."""
        self._collect()
        self._count_pending()
        return self._running.finish() if self._running is not None else 0

    def _collect(self) -> None:
        for source in self._sources:
            self.push_text(source.take_output_text())

    def _count_pending(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_len = 0
        if self._running is None:
            self._running = self._counter.stream()
        self._running.push(text)


@dataclass(slots=True)
class Completion:
    body: bytes
    usage: Usage | None
    # Upstream response headers worth passing to the client.
    headers: list[tuple[str, str]] = field(default_factory=list)


class StreamSink(Protocol):
    @property
    def started(self) -> bool: ...

    async def send(self, data: bytes) -> None: ...


class ProviderAdapter(abc.ABC):
    kind: str
    # The API operations this provider serves: `chat` always; `embeddings` and `responses`
    # (OpenAI's Responses API, passed through) where the provider speaks them.
    operations: frozenset[str] = frozenset({"chat"})

    def __init__(self, config: ProviderConfig, timeouts: Timeouts, egress: Egress | None) -> None:
        self.name = config.name
        self.config = config
        self.timeouts = timeouts
        # The way out; `None` for providers that make no network call (`mock`).
        self.egress = egress

    async def forward(self, call: ChatCall, operation: str) -> Completion:
        """A non-chat operation (`embeddings`, `responses`), forwarded in the provider's own
        format; only adapters listing it in `operations` are asked."""
        raise NotImplementedError(operation)

    async def forward_stream(self, call: ChatCall, operation: str, sink: StreamSink) -> Usage | None:
        """A streamed non-chat operation (`responses`), relayed event by event."""
        raise NotImplementedError(operation)

    @abc.abstractmethod
    async def chat(self, call: ChatCall) -> Completion:
        """Run a non-streamed chat completion; raise `UpstreamError` on failure."""

    @abc.abstractmethod
    async def chat_stream(self, call: ChatCall, sink: StreamSink) -> Usage | None:
        """Run a streamed chat completion, sending client-format bytes to `sink`.

        Returns the usage of the whole request when known; raises `UpstreamError` when the
        provider fails (before or after the first send).
        """
