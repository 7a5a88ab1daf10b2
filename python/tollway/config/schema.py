"""Typed configuration: the msgspec structs a `tollway.toml` decodes into.

Field defaults here are the documented defaults (docs/configuration.md). Validation that needs
more than one field (cross references, duplicates) lives in `tollway.config.loader`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tollway._secret_ref import SecretRef as SecretRef
from tollway.policy.config import LimitsConfig, PolicyConfig
from tollway.routing.config import RouteConfig, RoutingConfig
from tollway.state.config import StateConfig
from tollway.usage.catalog import ModelInfo
from tollway.usage.ledger import LedgerConfig

ProviderKind = Literal["openai", "mock", "anthropic", "gemini", "bedrock", "azure"]
# OpenAI-compatible servers known by name (`tollway.providers.presets`): base URL, auth, quirks.
PresetName = Literal[
    "openai",
    "groq",
    "mistral",
    "together",
    "deepseek",
    "fireworks",
    "xai",
    "openrouter",
    "vllm",
    "ollama",
    "lmstudio",
]


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Upstream timeouts in seconds.

    `connect`: TCP/TLS connect; `first_byte`: from sending the request to the response headers;
    `idle`: longest silence between two chunks of a streamed body; `total`: the whole attempt.
    """

    connect: float = 5.0
    first_byte: float = 120.0
    idle: float = 60.0
    total: float = 600.0


class UpstreamLimits(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Bounds on what a provider may send; each overrun fails the attempt as `bad_response`.

    `max_header_bytes`: the response head (status line and headers); `max_body_bytes`: a
    non-streamed answer (or an error body), after decompression; `max_decompressed_ratio`:
    decoded bytes per encoded byte of a compressed body, checked past its first MiB;
    `max_sse_line_bytes`: one line of a server-sent-events stream."""

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    max_decompressed_ratio: int = 100
    max_sse_line_bytes: int = 1024 * 1024


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 4 * 1024 * 1024
    timeouts: Timeouts = Timeouts()
    # Requests in flight to one provider origin at once, per worker (HTTP/1.1: connections;
    # HTTP/2: streams); a request waits for a free one at most its first-byte timeout.
    max_connections_per_host: int = 256
    # What a stream may hold for a client that reads slowly before reading from the provider
    # pauses (see `tollway.streaming`).
    stream_buffer_bytes: int = 1024 * 1024
    upstream_limits: UpstreamLimits = UpstreamLimits()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Reload when the config file changes (polled every second); SIGHUP and the admin API
    # (`POST /_tollway/reload`) reload too.
    watch_config: bool = False


class MockOptions(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Behaviour of the built-in `mock` provider (no network)."""

    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    stream_chunks: int = 8
    reply: str = "Hello from tollway's mock provider. This answer is deterministic."


class ProviderConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: str
    kind: ProviderKind
    base_url: str | None = None
    # One key, or several rotated round-robin (a key the provider rate-limits or rejects cools down).
    api_key: SecretRef | list[SecretRef] | None = None
    headers: dict[str, str] = {}
    timeouts: Timeouts | None = None
    mock: MockOptions = MockOptions()
    # `openai`: a known OpenAI-compatible server, supplying the base URL, auth header and quirks.
    preset: PresetName | None = None
    # `anthropic`: the `anthropic-version` header; `azure`: the `api-version` query parameter.
    api_version: str | None = None
    # `bedrock`: the AWS region and credentials (SigV4).
    region: str | None = None
    aws_access_key_id: SecretRef | None = None
    aws_secret_access_key: SecretRef | None = None
    aws_session_token: SecretRef | None = None
    # `azure`: upstream model name -> deployment name; a model not listed is its own deployment.
    deployments: dict[str, str] = {}
    # `anthropic`: `max_tokens` for an OpenAI-format request without one (Anthropic requires it).
    default_max_tokens: int = 4096
    # The way out (every kind but `mock`; see docs/providers.md "Networks"): HTTP/2 by ALPN,
    # trust and client certificates (paths relative to the config file), a proxy.
    http2: Literal["auto", "never"] = "auto"
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: SecretRef | None = None
    # An `http://host:port` proxy, or `"none"`; absent: `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`.
    proxy: str | None = None
    proxy_username: str | None = None
    proxy_password: SecretRef | None = None
    # Overrides `[server.upstream_limits]` for this provider.
    upstream_limits: UpstreamLimits | None = None


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A model name clients use, mapped to a provider and the provider's own model name."""

    name: str
    provider: str
    upstream: str | None = None
    # How to count this model's tokens when the provider reports none: a tokenizer name
    # (`o200k_base`, `cl100k_base`, `anthropic`, `gemini`) or the path of a Hugging Face
    # `tokenizer.json` (open models). Default: the catalog's entry, else `o200k_base` (estimate).
    tokenizer: str | None = None

    @property
    def upstream_model(self) -> str:
        return self.upstream or self.name


class KeyConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A virtual key. Only the hash is stored: `sha256:<64 hex digits>`."""

    name: str
    hash: str
    team: str | None = None
    user: str | None = None
    tags: list[str] = []
    # Model names (as clients send them) this key may use; absent means every configured model.
    models: list[str] | None = None
    metadata: dict[str, str] = {}


class AdminConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    key_hash: str | None = None


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`GET /metrics` in Prometheus text format."""

    enabled: bool = True
    # Require the admin key (`Authorization: Bearer <admin key>`) to scrape.
    require_admin: bool = False


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One structured access-log line per request (JSON, to stderr)."""

    access_log: bool = True


class TracingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """OpenTelemetry traces (GenAI semantic conventions) over OTLP/HTTP; off unless an endpoint is
    set. Needs the `otel` extra: `pip install 'tollway[otel]'`."""

    otlp_endpoint: str | None = None  # e.g. `http://127.0.0.1:4318/v1/traces`
    service_name: str = "tollway"
    sample_ratio: float = 1.0
    headers: dict[str, str] = {}


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    server: ServerConfig = ServerConfig()
    admin: AdminConfig = AdminConfig()
    providers: list[ProviderConfig] = []
    models: list[ModelConfig] = []
    keys: list[KeyConfig] = []
    routes: list[RouteConfig] = []
    routing: RoutingConfig = RoutingConfig()
    catalog: list[ModelInfo] = []
    policies: list[PolicyConfig] = []
    limits: LimitsConfig = LimitsConfig()
    state: StateConfig = StateConfig()
    ledger: LedgerConfig = LedgerConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
