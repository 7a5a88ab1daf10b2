"""Typed stubs for `tollway._native`, the PyO3 bindings of the Rust core (`rust/py`)."""

from collections.abc import Callable, Sequence
from typing import Any, final

# `PolicyVerdict`'s fields in order: policy, kind, verdict, mode, partition, limit, window, used,
# requested, remaining, retry_after_s, resets_at, unit, detail.
VerdictFields = tuple[
    str,
    str,
    str,
    str,
    str,
    float,
    str,
    float | None,
    float | None,
    float | None,
    float | None,
    float | None,
    str,
    str | None,
]

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
class OpenAIChatStream:
    """The OpenAI chat-completions stream as the gateway relays it; one per streamed response
    (`rust/core/src/chat_stream.rs` documents the rules).

    `feed` parses each chunk's events natively and returns the bytes to send to the client:
    `[DONE]` marks the stream complete; the last `usage` object is kept (`usage_json`); with
    `strip_usage`, what the gateway's own `stream_options.include_usage` added is removed (the
    usage-only chunk, and `,"usage":null` in the others). The data of relayed chunks is kept
    unread, up to `max_pending_bytes`, until `take_output_text` reads the text the model
    produced (content, refusal, reasoning, tool-call names and arguments) for counting.
    """

    def __init__(self, strip_usage: bool, *, max_line_bytes: int = ..., max_pending_bytes: int = ...) -> None: ...
    def feed(self, chunk: bytes) -> bytes:
        """The bytes to forward for this chunk (empty when it completed no event). Raises
        `tollway.errors.SseError` for an overlong line and `tollway.errors.StreamFormatError` for
        an event carrying usage that is not JSON; after an error every call raises it again."""
    @property
    def done(self) -> bool:
        """`data: [DONE]` arrived."""
    @property
    def usage_json(self) -> str | None:
        """The last `usage` object the stream carried, as JSON text."""
    @property
    def events(self) -> int:
        """Events parsed so far."""
    @property
    def unreadable_events(self) -> int:
        """Chunks `take_output_text` skipped because they were not JSON."""
    @property
    def dropped_text_bytes(self) -> int:
        """Chunk data not kept because the unread data reached `max_pending_bytes`."""
    def take_output_text(self) -> str:
        """The output text of the chunks relayed since the last call (each is read once)."""

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
class EventStreamMessage:
    """One AWS event-stream message (`application/vnd.amazon.eventstream`), as decoded."""

    @property
    def headers(self) -> dict[str, str | int | bytes | bool]:
        """Headers by name (the first of a repeated name wins): `str` for strings, `bytes` for byte
        arrays and UUIDs, `int` for byte/short/int/long and timestamps (ms since the epoch), `bool`."""
    def header(self, name: str) -> str | int | bytes | bool | None:
        """One header's value, or `None`."""
    @property
    def payload(self) -> bytes: ...

@final
class EventStreamDecoder:
    """Incremental decoder of the AWS event-stream framing (Bedrock `ConverseStream`); one per stream.

    Chunks may be split anywhere. Both CRC-32s are checked; the prelude as soon as its 12 bytes
    arrive, so a corrupt length fails at once. Chunks of 64 KiB and up are decoded with the GIL
    released.
    """

    def __init__(self, max_message_bytes: int = 16_777_216) -> None: ...
    def feed(self, chunk: bytes) -> list[EventStreamMessage]:
        """Decode one chunk; return the messages it completes.

        Raises `tollway.errors.EventStreamError` on a CRC mismatch, inconsistent lengths, a message
        over `max_message_bytes`, or a malformed header; the stream should then be abandoned.
        """
    @property
    def buffered(self) -> int:
        """Bytes received that are not yet part of a whole message (non-zero at the end of a
        stream means it was cut inside a message)."""

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
    def count_prompt(self, api: str, body: bytes) -> tuple[int, str]:
        """Prompt tokens of a request body in the client's `api` format: `anthropic` is
        `count_anthropic_messages`, any other `count_openai_chat`."""
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
    def match_attrs(
        self,
        attrs: tuple[str | None, str | None, str | None, str | None, str | None, str | None, str | None, str | None]
        | tuple[str | None, ...],
        tags: Sequence[str],
        params: list[float | None],
    ) -> tuple[int, ...]:
        """`matches` for the request path: `attrs` is `(key, team, user, model, resolved_model,
        provider, endpoint, ip)` (the order `Admitter.admit` takes too); the indices as a tuple."""

# Limiters (`rust/core/src/limiter/`). Every per-request method takes `now` in seconds since the
# Unix epoch (float; rounded to the nearest millisecond) or `None` for the system clock. Time
# never goes back inside a limiter: an earlier `now` than one already seen counts as that one.
# Amounts are integers: requests, tokens, or micro-USD for money (1 USD = 1_000_000). Limiters
# are safe to share between threads (each call holds the limiter's lock for well under 1 us).

@final
class Grant:
    """An admission."""

    @property
    def id(self) -> int | None:
        """The reservation or lease to `settle`/`release` (never 0); `None` for `RateLimiter`."""
    @property
    def remaining(self) -> int:
        """What is left after this admission (rounded down): for `x-ratelimit-remaining-*`."""
    @property
    def reset_after(self) -> float:
        """Seconds until the limit is whole again: the bucket full (rates), the window's end
        (calendar budgets), the oldest usage leaving the window (rolling budgets), this lease's
        expiry (concurrency)."""

@final
class Denial:
    """A refusal, with the numbers that explain it. Not an exception: limits say no all the time."""

    @property
    def kind(self) -> str:
        """`"rate"`, `"tokens"`, `"concurrency"` or `"budget"`."""
    @property
    def limit(self) -> int:
        """The limit: per `window_seconds` for rates and budgets, in flight for concurrency."""
    @property
    def window_seconds(self) -> float | None:
        """The rate's period, or the current budget window's length (a month is 28 to 31 days);
        `None` for concurrency."""
    @property
    def burst(self) -> int:
        """The most that can be admitted at once: a rate's burst (bucket capacity); `limit` otherwise."""
    @property
    def used(self) -> int:
        """What is in use now, compared with `burst`; above it when settlements went into debt."""
    @property
    def requested(self) -> int:
        """The amount asked for."""
    @property
    def retry_after(self) -> float | None:
        """Seconds until retrying can succeed: when the bucket will hold the amount (exact when
        nothing is reserved; assuming reservations settle at their estimates otherwise), when a
        calendar budget resets, when enough usage leaves a rolling window, when the oldest lease
        expires (an upper bound). `None` when waiting cannot help: `requested` exceeds `burst`."""

@final
class RateLimiter:
    """Request-rate limiting with GCRA: `limit` requests per `period` seconds, at most `burst` at once
    (default `limit`), then one every `period / limit`. Exact integer arithmetic (no drift).

    Keys beyond `max_keys` evict the least-recently-used key, which comes back as a fresh (full)
    bucket; keys whose bucket is full and that were unused for a second are dropped as they go.
    Raises `tollway.errors.LimiterConfigError` for a limit, period (whole milliseconds, at most
    2^40 ms) or burst of zero.
    """

    def __init__(self, limit: int, period: float, burst: int | None = None, *, max_keys: int = 100_000) -> None: ...
    def check(self, key: str, amount: int = 1, now: float | None = None) -> Grant | Denial:
        """Admit `amount` requests (usually 1) for `key`, or say why not. Admissions are final."""
    def used(self, key: str, now: float | None = None) -> int:
        """Requests counted against `key` now (0 for an unknown key)."""
    def __len__(self) -> int:
        """Keys held."""

@final
class TokenBucket:
    """Token-rate limiting: `limit` tokens per `period` seconds, holding up to `burst` (the capacity,
    default `limit`); a request costs any amount, reserved before the upstream call and settled after.

    `reserve` takes the estimate and holds it (while held, the refill stops at `burst - held`).
    `settle` replaces it by the actual usage: refunds the difference, or takes the excess even
    below zero (debt that later requests wait out). `release` gives it all back. A reservation
    neither settled nor released within `reservation_ttl` seconds expires: its estimate stays
    spent. Over any interval the admitted reservations account for at most `burst + interval *
    limit / period`; actual usage can exceed that by the settled excesses (then carried as debt).
    Key eviction as for `RateLimiter` (a settlement whose key was evicted drops its refund and
    still charges its excess).
    """

    def __init__(
        self,
        limit: int,
        period: float,
        burst: int | None = None,
        *,
        reservation_ttl: float = 600.0,
        max_keys: int = 100_000,
    ) -> None: ...
    def reserve(self, key: str, estimate: int, now: float | None = None) -> Grant | Denial:
        """Take and hold `estimate` tokens for `key`, or say why not."""
    def settle(self, id: int, actual: int, now: float | None = None) -> bool:
        """Replace a reservation's estimate by the `actual` usage. `False` if the id is unknown
        (settled, released, or expired: then the estimate stays spent; `debit` any excess)."""
    def release(self, id: int, now: float | None = None) -> bool:
        """Give a reservation's estimate back (the request failed). `False` if the id is unknown."""
    def debit(self, key: str, amount: int, now: float | None = None) -> None:
        """Charge usage that had no reservation, into debt if need be."""
    def used(self, key: str, now: float | None = None) -> int:
        """Tokens in use for `key` now, held ones included (0 for an unknown key)."""
    @property
    def reservations(self) -> int:
        """Reservations outstanding."""
    def __len__(self) -> int:
        """Keys held."""

@final
class ConcurrencyLimiter:
    """At most `limit` requests in flight per key. A lease never released expires after `lease_ttl`
    seconds (choose it above the request timeout: an expired lease frees its slot).

    Keys with leases in flight are never evicted: beyond `max_keys` such keys, `acquire` raises
    `tollway.errors.LimiterFullError`.
    """

    def __init__(self, limit: int, *, lease_ttl: float = 600.0, max_keys: int = 100_000) -> None: ...
    def acquire(self, key: str, now: float | None = None) -> Grant | Denial:
        """Take a lease for `key`, or say why not (`retry_after`: when the oldest lease expires)."""
    def release(self, id: int, now: float | None = None) -> bool:
        """End a lease. `False` if it is unknown (already released, or expired)."""
    def used(self, key: str, now: float | None = None) -> int:
        """Leases in flight for `key`."""
    @property
    def leases(self) -> int:
        """Leases outstanding, all keys together."""
    def __len__(self) -> int:
        """Keys held."""

@final
class BudgetWindow:
    """Usage caps per window, in tokens or integer micro-USD: a reservation is admitted while
    `used + estimate <= limit`.

    Settling refunds the difference to the window the estimate was charged to (if it still
    counts) and charges any excess to the current window; releasing refunds the estimate (same
    rule); an expired reservation stays charged. Keys with usage in the current window or with
    reservations outstanding are never evicted: beyond `max_keys` such keys, calls that need a new
    key raise `tollway.errors.LimiterFullError`.
    """

    @staticmethod
    def calendar(
        limit: int,
        period: str,
        *,
        utc_offset: int = 0,
        reservation_ttl: float = 600.0,
        max_keys: int = 100_000,
    ) -> BudgetWindow:
        """`limit` per calendar `"day"`, `"week"` (from Monday 00:00) or `"month"`, on a wall clock
        `utc_offset` seconds east of UTC (`+02:00` is 7200; fixed, no daylight saving time).
        Usage resets to zero at each boundary."""
    @staticmethod
    def rolling(
        limit: int,
        window: float,
        buckets: int = 60,
        *,
        reservation_ttl: float = 600.0,
        max_keys: int = 100_000,
    ) -> BudgetWindow:
        """`limit` per rolling `window` seconds, kept in `buckets` sub-buckets (at most 4096; they
        must divide the window in whole milliseconds). A charge counts for at least `window` and
        at most `window + window / buckets` seconds: never forgotten early."""
    def reserve(self, key: str, estimate: int, now: float | None = None) -> Grant | Denial:
        """Charge `estimate` to `key`'s current window if it fits, or say why not."""
    def settle(self, id: int, actual: int, now: float | None = None) -> bool:
        """Replace a reservation's estimate by the `actual` usage. `False` if the id is unknown
        (settled, released, or expired: then the estimate stays charged; `debit` any excess)."""
    def release(self, id: int, now: float | None = None) -> bool:
        """Refund a reservation's estimate (the request failed). `False` if the id is unknown."""
    def debit(self, key: str, amount: int, now: float | None = None) -> None:
        """Charge usage that had no reservation to `key`'s current window."""
    def used(self, key: str, now: float | None = None) -> int:
        """Usage counted for `key` now (0 for an unknown key)."""
    @property
    def reservations(self) -> int:
        """Reservations outstanding."""
    def __len__(self) -> int:
        """Keys held."""

@final
class Admitter:
    """One configuration's limit rules over the memory backend's limiters, admitted per request
    in one call (`tollway.policy.engine` builds it; see `rust/core/src/limiter/admission.rs`).

    `rules` are dicts with `limiter` (the rule's `TokenBucket`, `ConcurrencyLimiter` or
    `BudgetWindow`), `kind`, `limit`, `usd`, `count` (`None` for one per request), `cached_weight`,
    `reasoning_weight`, `estimate_price` (`(input, output)` micro-USD per token for an unpriced
    model at settlement, or `None`), `window`, `unit`, `limit_display`, `burst_note`; `policies`
    are dicts with `name`, `mode`, `enforce`, `per` (`(attribute, index into attrs)` pairs),
    `rules` (indices into `rules`), and for `admit_request`: `checks`, `check_kind`,
    `passes_without` (a list of names, or `None`) and `needs` (as `CompiledPolicy` has them).
    `make_verdict` (`PolicyVerdict`) is called with each verdict's fields (`VerdictFields`, or
    the first four).

    The keyword arguments, given all together, serve `admit_request`: the engine's `matcher`
    (one selector per policy), the value answering "evaluate the whole request"
    (`NEEDS_FACTS`), `[limits] default_max_output_tokens`, `estimate_usd` (`estimate_micro_usd`),
    `denial_error` (`(policy, rule, partition, Denial)` to the `ApiError` of a limit's denial),
    and the memory backend's `clock` (`None`: the system's).
    """

    def __init__(
        self,
        rules: list[dict[str, object]],
        policies: list[dict[str, object]],
        make_verdict: Callable[..., object],
        *,
        matcher: PolicySet | None = None,
        needs_facts: object = None,
        default_max_output_tokens: int = 0,
        estimate_usd: Callable[[Any, int, int], int | None] | None = None,
        denial_error: Callable[[int, int, str, Denial], Any] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None: ...
    def admit(
        self,
        matched: list[int],
        attrs: Sequence[str | None],
        prompt: int,
        output: int,
        usd: int,
        now: float,
    ) -> tuple[
        list[Any],
        Holds | None,
        tuple[int, int, str, Denial] | None,
        list[tuple[str, str]],
        bool,
    ]:
        """Admit the limit rules of the `matched` policies, all or none: returns the verdicts in
        order (`make_verdict`'s results),
        the holds (`None` if denied or nothing is held), the first enforcing denial as
        `(policy, rule, partition, Denial)`, OpenAI's `x-ratelimit-*` headers for the tightest
        enforcing request and token limits (none if denied), and whether a shadow policy would
        have denied."""
    def admit_request(
        self,
        attrs: tuple[str | None, ...],
        tags: Sequence[str],
        params: dict[str, float],
        served: Any,
        api: str,
        raw: bytes,
    ) -> Any:
        """`PolicyEngine.admit`: `None` (no policy matches), an `Admitted`, or `needs_facts`."""
    def __len__(self) -> int:
        """Limit rules."""

@final
class Admitted:
    """One request's admission by `Admitter.admit_request`, as `tollway.policy.engine.Admission`
    has it (no clamps, no output cap: those are decided by the engine's Python path)."""

    @property
    def verdicts(self) -> list[Any]:
        """The decision trail: a `PolicyVerdict` per check and per limit rule, in order."""
    @property
    def headers(self) -> list[tuple[str, str]]:
        """`x-ratelimit-*` and `x-tollway-shadow-deny` headers (none when denied)."""
    @property
    def denied(self) -> Any:
        """The `ApiError` the request is refused with, or `None`."""
    @property
    def clamps(self) -> dict[str, int | float]:
        """Always empty."""
    @property
    def output_cap(self) -> tuple[int, str] | None:
        """Always `None`."""
    def settle(self, usage: Any, cost_micro_usd: int | None) -> None:
        """Settle every reservation at the `Usage` (`cost_micro_usd`: `None` when unpriced), end
        every lease. A second call does nothing."""
    def release(self) -> None:
        """Give back everything held (the request made no model call)."""
    def __len__(self) -> int:
        """Reservations and leases held."""

@final
class Holds:
    """What an admitted request holds until it ends: reservations and leases."""

    def settle(self, prompt: int, completion: int, cached: int, reasoning: int, cost: int | None, now: float) -> None:
        """Settle every reservation at what the request used (`cost` in micro-USD for dollar
        budgets, `None` when unpriced), end every lease. A second call does nothing."""
    def release(self, now: float) -> None:
        """Give back everything held (the request made no model call)."""
    def __len__(self) -> int:
        """Reservations and leases held."""

def output_bound(requested: float | None, model_max: int | None, default: int) -> int:
    """Output tokens to reserve: `max_tokens` as sent (`requested`), within the model's maximum
    (`None` or 0: unknown); `default`, likewise capped, when not set; 0 at or below zero; at
    most 2^40."""

def reset_text(ms: int) -> str:
    """OpenAI's duration format for `x-ratelimit-reset-*`: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3.25s`."""

# -- the upstream transport (`rust/net`, `rust/py/src/upstream.rs`) ----------------------------

@final
class Transport:
    """One provider's way out: hyper's pooled HTTP/1.1 and HTTP/2 client, TLS (rustls: the
    system's roots plus `ca_pem`, a client certificate), a proxy (`None`: the environment's
    `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`; `"none"`: direct; else an `http://host:port` URL),
    at most `max_connections` requests in flight per origin, response heads of at most
    `max_header_bytes`. Raises `tollway.errors.ConfigError` for what it cannot use."""

    def __init__(
        self,
        *,
        http2: bool,
        connect_timeout: float,
        max_connections: int,
        max_header_bytes: int,
        ca_pem: bytes | None = None,
        client_cert_pem: bytes | None = None,
        client_key_pem: bytes | None = None,
        proxy: str | None = None,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
    ) -> None: ...
    def endpoint(self, url: str) -> Endpoint: ...
    @staticmethod
    def check_proxy(url: str, username: str | None = None, password: str | None = None) -> None: ...
    @staticmethod
    def check_tls(
        ca_pem: bytes | None = None, client_cert_pem: bytes | None = None, client_key_pem: bytes | None = None
    ) -> None: ...
    @staticmethod
    def system_root_count() -> int: ...

@final
class Endpoint:
    """A URL requests are sent to, resolved once by its `Transport`."""

    @property
    def url(self) -> str: ...

@final
class Upstream:
    """A worker's bridge between its event loop and the upstream runtime thread: register
    `loop.add_reader(upstream.fileno(), upstream.drain)` once."""

    def __init__(self) -> None: ...
    def fileno(self) -> int: ...
    def drain(self) -> None: ...
    def request(
        self,
        future: Any,
        endpoint: Endpoint,
        headers: list[tuple[str, str]],
        body: bytes,
        first_byte: float,
        idle: float,
        total: float,
        max_body_bytes: int,
        max_ratio: int,
        *,
        stream: int = 0,
        stream_bound: int = 262144,
        strip_usage: bool = False,
        max_line_bytes: int = 1048576,
        caller: tuple[int, str, int] | None = None,
    ) -> UpstreamCall:
        """Send a POST; `future` receives `(status, headers, body, pool_wait_s)` (`body`: `bytes`,
        or an `UpstreamStream` for a successful answer asked for as a stream) or a
        `tollway.errors.TransportError`. Raises `ValueError` for a header that cannot be sent."""
    def wait(self, future: Any, stream: UpstreamStream) -> None: ...

@final
class UpstreamCall:
    def cancel(self) -> None: ...

@final
class UpstreamStream:
    """A successful answer being streamed, framed natively."""

    def take(self) -> Any:
        """`bytes`, a list of `SseEvent` or of `EventStreamMessage`; `None` when nothing is ready
        (then see `ended`); raises the `TransportError` that ended the stream."""
    @property
    def ended(self) -> bool: ...
    @property
    def done(self) -> bool: ...
    @property
    def usage_json(self) -> str | None: ...
    @property
    def pending_text_bytes(self) -> int: ...
    def take_output_text(self) -> str: ...
    def close(self) -> None: ...
    @property
    def partial_message_bytes(self) -> int: ...

@final
class ClientSocket:
    """A client's TCP connection to this process, for pacing a stream to a slow reader."""

    @staticmethod
    def find(local_port: int, peer_ip: str, peer_port: int) -> ClientSocket | None: ...
    def state(self) -> tuple[int, int] | None:
        """`(written, queued)` bytes of the socket, or `None` once it closed."""

def release_memory() -> bool:
    """Give memory the allocator holds free back to the system (glibc's `malloc_trim`);
    whether anything was released. A no-op elsewhere."""
