"""The provider-neutral vocabulary that streamed answers are translated through.

A stream in another format than the client's is translated in two halves, composed at run time:

- a *decoder* reads one upstream event at a time (an OpenAI chunk, an Anthropic event, a Gemini
  chunk, a Bedrock event-stream message) and returns the `Part`s it carries, keeping what it
  needs to report usage and to know whether the stream ended properly (`complete`);
- an *encoder* turns parts into the client's SSE frames (`bytes`) as soon as they arrive, and
  writes the client format's proper ending from the final usage (`finish`).

So N upstream formats and 2 client formats need N + 2 pieces, not N x 2, and nothing is ever
buffered beyond the current event. The parts follow OpenAI's chat-completion-chunk semantics
(tool calls are numbered 0, 1, ... in the order they start; finish reasons are OpenAI's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from tollway.usage import Usage

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningPart:
    """Reasoning ("thinking") text, or the signature that closes a thinking block (Anthropic,
    Bedrock) and that the provider needs back, unchanged, in later turns."""

    text: str = ""
    signature: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgs:
    """A fragment of a tool call's JSON arguments; the fragments concatenate to the whole."""

    index: int
    arguments: str


@dataclass(frozen=True, slots=True)
class FinishPart:
    reason: FinishReason


Part = TextPart | ReasoningPart | ToolCallStart | ToolCallArgs | FinishPart


class StreamEncoder(Protocol):
    """Parts -> the client's SSE frames."""

    def encode(self, parts: list[Part]) -> list[bytes]:
        """Frames for these parts (the first call also opens the stream)."""

    def finish(self, usage: Usage | None) -> list[bytes]:
        """The frames that end a complete stream, carrying the final usage."""


def output_text(parts: list[Part]) -> str:
    """The model output a batch of parts carries, as the gateway counts it when a stream ends
    without the provider's usage: text, reasoning, tool names and arguments (the same text the
    native OpenAI relay keeps)."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, TextPart | ReasoningPart):
            out.append(part.text)
        elif isinstance(part, ToolCallStart):
            out.append(part.name)
        elif isinstance(part, ToolCallArgs):
            out.append(part.arguments)
    return "".join(out)
