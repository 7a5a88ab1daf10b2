"""Typed stubs for `tollway._native`, the PyO3 bindings of the Rust core (`rust/py`)."""

from typing import final

__version__: str

@final
class SseEvent:
    """One server-sent event. Immutable; equal to another event with the same fields."""

    def __init__(
        self, data: str, event: str | None = None, id: str | None = None, retry: int | None = None
    ) -> None: ...
    @property
    def event(self) -> str | None:
        """The event type; `None` means the default type, `message`."""
    @property
    def data(self) -> str:
        """The data lines joined with a newline."""
    @property
    def id(self) -> str | None:
        """The `id` field of this event's own block (`""` resets the last event id)."""
    @property
    def retry(self) -> int | None:
        """A `retry` value (milliseconds) given in this event's block."""
    def to_bytes(self) -> bytes:
        """The event in canonical wire form, ending with a blank line."""

@final
class SseParser:
    """Incremental parser with WHATWG event-stream semantics; one per stream.

    Lines end with CR, LF or CRLF (also split across chunks); a leading BOM is skipped; chunks
    may split anywhere, even inside a UTF-8 character.
    """

    def __init__(self, max_line_bytes: int = 1_048_576) -> None: ...
    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse one chunk; return the events it completes.

        Raises `tollway.errors.SseError` when a line exceeds `max_line_bytes`.
        """
    def finish(self) -> int:
        """End of stream: discard an unfinished event and reset; return the bytes discarded."""
    @property
    def last_event_id(self) -> str | None:
        """The last event id in effect (persists across events)."""
    @property
    def retry(self) -> int | None:
        """The reconnection time the stream last asked for, in milliseconds."""
