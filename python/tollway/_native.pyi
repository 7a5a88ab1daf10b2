"""Typed stubs for `tollway._native`, the PyO3 bindings of the Rust core (`rust/py`)."""

from typing import final

__version__: str

@final
class SseEvent:
    """One server-sent event. Immutable and hashable; equal to another event with the same fields.

    Built by `SseParser`, or by the gateway to forward translated events. The constructor raises
    `tollway.errors.SseError` when `event` or `id` contains CR or LF (it would break the framing
    on the wire) or `id` contains NUL (clients ignore such an id).
    """

    def __init__(
        self, data: str, event: str | None = None, id: str | None = None, retry: int | None = None
    ) -> None: ...
    @property
    def event(self) -> str | None:
        """The event type; `None` means the default type, `message`."""
    @property
    def data(self) -> str:
        """The data lines joined with `\\n`."""
    @property
    def id(self) -> str | None:
        """The last event id in effect when the event was dispatched (it persists across events)."""
    @property
    def retry(self) -> int | None:
        """A reconnection time (milliseconds) set by `retry` since the previous dispatched event."""
    def to_bytes(self) -> bytes:
        """The event in canonical wire form, ending with `b"\\n\\n"`.

        `event: …` (when set and not empty), `id: …`, `retry: …` (when set), one `data: …` line per
        line of `data` (CR, LF and CRLF all split lines), then a blank line.
        """
    def __eq__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...

@final
class SseParser:
    """Incremental parser with WHATWG event-stream semantics; one per stream.

    Lines end with CR, LF or CRLF (also when split across chunks); one leading UTF-8 BOM is skipped;
    chunks may be split anywhere, even inside a UTF-8 character (invalid UTF-8 becomes U+FFFD).
    Safe to share between threads (calls are serialised). Large chunks (64 KiB and up) are parsed
    with the GIL released.
    """

    def __init__(self, max_line_bytes: int = 1_048_576) -> None: ...
    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse one chunk; return the events it completes.

        Raises `tollway.errors.SseError` when a line grows past `max_line_bytes` (checked as the
        bytes arrive); the stream should then be abandoned.
        """
    def finish(self) -> list[SseEvent]:
        """End of stream: discard an unfinished event and reset for the event source's next response.

        The standard never dispatches at end of stream (a last event without its blank line is
        dropped), so the list is always empty. `last_event_id` and `retry` are kept.
        """
    @property
    def last_event_id(self) -> str | None:
        """The last event id as of the last dispatch: what a client sends as `Last-Event-ID`."""
    @property
    def retry(self) -> int | None:
        """The reconnection time the stream asked for, in milliseconds."""

@final
class TokenCounter:
    """A tokenizer, chosen once by name and used per request.

    `o200k_base` and `cl100k_base` count exactly (OpenAI's vocabularies, embedded at build time);
    `anthropic` and `gemini` are documented approximations (a scaled `cl100k_base` count).
    """

    def __init__(self, encoding: str) -> None:
        """Raises `tollway.errors.TokenizerError` for an unknown name."""
    @staticmethod
    def from_file(path: str) -> TokenCounter:
        """A counter from a Hugging Face `tokenizer.json` (open models): exact counts of text,
        approximate chat counts (each model has its own chat template). Raises
        `tollway.errors.TokenizerError` if the file cannot be loaded."""
    @property
    def encoding(self) -> str: ...
    @property
    def exactness(self) -> str:
        """`"exact"` or `"approximate"`: what this counter's counts of plain text are."""
    def count(self, text: str) -> int:
        """Tokens of a text (the GIL is released for long texts)."""
    def encode(self, text: str) -> list[int] | None:
        """Token ids of a text; `None` for approximate counters."""
    def count_openai_chat(self, body: bytes) -> tuple[int, str]:
        """Prompt tokens of an OpenAI chat-completions request body: `(tokens, exactness)`.

        Follows OpenAI's published per-message rule; images and tools are estimated (then
        `"approximate"`). Raises `tollway.errors.TokenCountError` for a body that is not a chat
        request.
        """
    def count_anthropic_messages(self, body: bytes) -> tuple[int, str]:
        """Prompt tokens of an Anthropic Messages request body; always `"approximate"`."""
    def stream(self) -> StreamTokenCounter:
        """A fresh running counter for one streamed answer."""

@final
class StreamTokenCounter:
    """Running token count of a streamed answer."""

    def push(self, delta: str) -> int:
        """Add a text delta; returns the running count."""
    @property
    def total(self) -> int:
        """The running count. For `tokenizer.json` counters it is recounted exactly once the
        uncounted text reaches a tenth of the whole, and estimated (4 bytes a token) between."""
    def finish(self) -> int:
        """The exact count of everything pushed."""
    @property
    def exactness(self) -> str:
        """`"exact"` when `total` is the tokenizer's own count of all the text so far."""

@final
class PolicySet:
    """Policy selectors compiled once into an index; `matches` says which policies apply.

    `selectors[i]` is policy `i`'s list of `(attribute, operator, value, negate)` conditions, all
    of which must hold. Attributes: `key`, `team`, `user`, `model`, `resolved_model`, `provider`,
    `endpoint`, `tag` (operators `exact` with a string, `one_of` with a list, `glob` with `*`/`?`);
    `ip` (`cidr` with a network or a list of them); `param:<name>` (`<`, `<=`, `>`, `>=`, `==`,
    `!=` with a number). A condition on an absent attribute does not hold (its negation does).
    Raises `tollway.errors.PolicyError` naming the policy and condition of a bad selector.
    """

    def __init__(self, selectors: list[list[tuple[str, str, str | list[str] | float, bool]]]) -> None: ...
    def __len__(self) -> int: ...
    @property
    def params(self) -> list[str]:
        """The numeric parameters the selectors use, in the order `matches(params=...)` takes them."""
    def matches(
        self,
        *,
        key: str | None = None,
        team: str | None = None,
        user: str | None = None,
        model: str | None = None,
        resolved_model: str | None = None,
        provider: str | None = None,
        endpoint: str | None = None,
        ip: str | None = None,
        tags: list[str] = ...,
        params: list[float | None] = ...,
    ) -> list[int]:
        """Indices of the matching policies, ascending (configuration order)."""
