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

from tollway.config.schema import ModelConfig, ProviderConfig, Timeouts
from tollway.upstream import UpstreamClient
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
    """A native relay that keeps the output text of what it forwarded (`OpenAIChatStream`)."""

    def take_output_text(self) -> str: ...


class StreamMeter:
    """What a streamed call has delivered so far, kept by the adapter for the usage record.

    The provider's usage, when a stream carries it, is the truth (`report_usage`). When it never
    arrives (the stream broke, the client left, the server ignores `include_usage`), the gateway
    counts the output text that passed: adapters either `watch` a native relay that keeps the
    text itself (read only if needed, so a complete stream costs nothing), or `push_text` the
    deltas they translated. Text is kept in delivery order.
    """

    __slots__ = ("_pushed", "_seen", "_sources", "usage")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self._sources: list[TextSource] = []
        self._pushed: list[str] = []
        self._seen: list[str] = []

    def report_usage(self, usage: Usage | None) -> None:
        if usage is not None:
            self.usage = usage

    def watch(self, source: TextSource) -> None:
        self._sources.append(source)

    def push_text(self, text: str) -> None:
        if text:
            self._pushed.append(text)

    def new_text(self) -> str:
        """The output text delivered since the last call (a live count's increment)."""
        parts = [source.take_output_text() for source in self._sources]
        parts.extend(self._pushed)
        self._pushed.clear()
        text = "".join(parts)
        if text:
            self._seen.append(text)
        return text

    def all_text(self) -> str:
        """Every output text delivered so far."""
        self.new_text()
        return "".join(self._seen)


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

    def __init__(self, config: ProviderConfig, timeouts: Timeouts, client: UpstreamClient | None) -> None:
        self.name = config.name
        self.config = config
        self.timeouts = timeouts
        self.client = client

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
