"""The RSGI application: routing by path, request ids, body limits, the gateway's services, reload.

Granian calls `Gateway.__rsgi__` once per request, in one event loop per worker. Everything the
request path needs is built once per worker, so a request costs one dict lookup to route, one
hash to authenticate and one JSON parse of the body. Model calls are run by
`tollway.pipeline.ModelRequest`; this module serves the rest (models list, health, metrics,
admin API) and records every finished model request (ledger, metrics, access log, trace).

Two lifetimes:
- `Gateway`: the worker process (the upstream connection pool, policy counters, the ledger
  writer, metrics, logs, traces). Built once.
- `Runtime`: one configuration (keys, models, catalog, router, policies, adapters). Replaced
  whole by a reload; a request keeps the runtime it started with.

Reload: SIGHUP to `tollway serve` (relayed to every worker as SIGUSR1), `POST /_tollway/reload`
(admin key), or `[server] watch_config = true`. The file is validated first; a broken file is
refused with every problem logged, and the previous configuration keeps serving. Counters of
limits whose definition did not change carry over (`MemoryBackend.prepare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from tollway.auth import Identity, KeyStore, hash_key, presented_key
from tollway.config.loader import LoadedConfig, load_config
from tollway.config.schema import ModelConfig
from tollway.errors import ConfigError, TokenCountError
from tollway.observability.logs import AccessLog
from tollway.observability.memory import MemoryKeeper
from tollway.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tollway.observability.metrics import GatewayMetrics
from tollway.observability.tracing import Tracer
from tollway.pipeline import ModelRequest, Reject, model_config_for
from tollway.policy.engine import PolicyEngine
from tollway.policy.state import MemoryBackend, StateBackend
from tollway.providers import ProviderAdapter, build_adapters
from tollway.routing import Router, Target
from tollway.server import admin
from tollway.server.errors import ApiError, invalid_request, model_not_allowed, model_not_found
from tollway.upstream import UpstreamClient, warn_without_trusted_roots
from tollway.usage.accounting import ModelAccounting
from tollway.usage.catalog import Catalog
from tollway.usage.ledger import Ledger, LedgerConfig
from tollway.usage.record import UsageRecord

if TYPE_CHECKING:
    from tollway.state.redis import RedisBackend

log = logging.getLogger("tollway")

CONFIG_ENV = "TOLLWAY_CONFIG"
WATCH_INTERVAL_S = 1.0
_JSON = ("content-type", "application/json")
# Targets whose accounting `Runtime.accounting` keeps (clients may name any `provider/model`).
_TARGETS_KEPT = 4096

Handler = Callable[[Any, Any, str], Awaitable[None]]


def new_request_id() -> str:
    """`req_` and 24 hex digits: the time in ms (40 bits), then 56 random bits. Time-ordered ids
    keep the ledger's primary-key index append-only: with random ids, each insert lands at a
    random place in a large B-tree (measured: 23 us of writer CPU per record on a 200k-row
    table, against 5.8 us with time-ordered ids)."""
    return f"req_{time.time_ns() // 1_000_000 & 0xFF_FFFF_FFFF:010x}{os.urandom(7).hex()}"


# The cyclic garbage collector's first threshold in a worker (CPython's default is 700).
GC_THRESHOLD = 10_000


def tune_gc() -> None:
    """Set the worker's garbage collector for serving: what startup built (modules, the
    configuration, compiled policies, the catalog) is frozen out of every later collection, and
    a collection waits for 10,000 net new container objects instead of 700.

    A request allocates a few hundred containers and frees them when it ends; it makes no
    cycles, so the collector finds nothing, but at 700 it ran several times a second in the
    middle of requests, and each older-generation pass walked every policy. Measured in a
    worker under load (`gc.callbacks`, 2026-12-06): 10.9 us of collection per request with 100
    policies and the ledger on, 4.7 with the ledger alone, none since (no collection in 5 s).
    Garbage in cycles is still collected, once 10,000 objects have accumulated: bounded
    memory, a few megabytes at most."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, gen1, gen2)


class Runtime:
    """Everything derived from one configuration, replaced whole by a reload."""

    def __init__(self, loaded: LoadedConfig, client: UpstreamClient | None, backend: StateBackend, digest: str) -> None:
        config = loaded.config
        self.loaded = loaded
        self.config = config
        self.digest = digest  # of the file's bytes: reloading the same text is a no-op
        self.base_dir = loaded.path.parent
        self.max_body = config.server.max_body_bytes
        self.stream_buffer_bytes = config.server.stream_buffer_bytes
        self.keys = KeyStore(config.keys)
        self.models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self.catalog = Catalog.load(list(config.catalog))
        self._kinds = [(p.name, p.kind, p.preset) for p in config.providers]
        self.router = Router(
            config.routes,
            config.models,
            [p.name for p in config.providers],
            config.routing,
            price=self._price,
            by_catalog=self._by_catalog,
        )
        self.policies = PolicyEngine(config.policies, config.limits, backend)
        self.adapters: dict[str, ProviderAdapter] = build_adapters(
            config.providers, config.server.timeouts, client, self.base_dir, config.server.upstream_limits
        )
        self._accounting: dict[tuple[str, str, str], ModelAccounting] = {}

    def model_config(self, target: Target) -> ModelConfig:
        return model_config_for(target, self.models)

    def accounting(self, target: Target) -> ModelAccounting:
        """How a target's model is counted and priced, resolved once per target (by name,
        provider and model; read per request). The cache starts over past `_TARGETS_KEPT`."""
        key = (target.name, target.provider, target.model)
        found = self._accounting.get(key)
        if found is None:
            if len(self._accounting) >= _TARGETS_KEPT:
                self._accounting.clear()
            tokenizer = self.model_config(target).tokenizer
            found = ModelAccounting.resolve(self.catalog, target.model, tokenizer, str(self.base_dir))
            self._accounting[key] = found
        return found

    def _by_catalog(self, name: str) -> Target | None:
        """A well-known model (`claude-sonnet-4-5`, `gemini-2.5-flash`) on the first configured
        provider of its catalog kind (an OpenAI-compatible preset counts as its own kind)."""
        info = self.catalog.get(name)
        if info is None or info.provider is None:
            return None
        for provider, kind, preset in self._kinds:
            if info.provider in (kind, preset) and kind != "mock":
                return Target(name, provider, name)
        return None

    def _price(self, provider: str, model: str) -> tuple[float, float] | None:
        info = self.catalog.get(model)
        if info is None or info.input is None or info.output is None:
            return None
        return info.input, info.output


class Gateway:
    """One worker's gateway. Build it with `create_app()` (Granian's factory)."""

    def __init__(self, loaded: LoadedConfig, digest: str = "") -> None:
        self.loaded = loaded
        config = loaded.config
        self.config = config
        self.digest = digest
        self.base_dir = loaded.path.parent
        # Leases and reservations outlive any request (the routing deadline), then expire.
        lease_ttl_s = config.routing.deadline_s + 60
        self.backend: StateBackend = MemoryBackend(lease_ttl_s=lease_ttl_s)
        self.shared_state: RedisBackend | None = None
        if config.state.backend == "redis":
            from tollway.state.config import WORKERS_ENV
            from tollway.state.redis import RedisBackend

            # Connections are opened in `startup`, in the worker process.
            workers = int(os.environ.get(WORKERS_ENV) or config.server.workers)
            self.backend = self.shared_state = RedisBackend(
                config.state, lease_ttl_s=lease_ttl_s, workers=workers, base_dir=self.base_dir
            )
        self.runtime: Runtime | None = None
        self.metrics = GatewayMetrics(models=[*(m.name for m in config.models), *(r.name for r in config.routes)])
        self.access_log = AccessLog() if config.logging.access_log else None
        self.tracer: Tracer | None = None
        self.ledger: Ledger | None = None
        self.client: UpstreamClient | None = None
        self.admin_digest = (
            bytes.fromhex(config.admin.key_hash.removeprefix("sha256:")) if config.admin.key_hash else None
        )
        self.ready = False
        self.reloads = 0
        # Requests in flight, and memory given back after bursts of them.
        self.memory = MemoryKeeper()
        self._watch: asyncio.Task[None] | None = None
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/messages"): self.messages,
            ("POST", "/v1/messages/count_tokens"): self.count_tokens,
            ("POST", "/v1/embeddings"): self.embeddings,
            ("POST", "/v1/responses"): self.responses,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
            ("GET", "/metrics"): self.metrics_endpoint,
            ("GET", "/_tollway/usage"): self.admin_usage,
            ("POST", "/_tollway/reload"): self.admin_reload,
        }
        self._paths = {path for _, path in self.routes}

    # -- lifecycle (Granian RSGI hooks) -------------------------------------------------------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.startup())
        tune_gc()

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def startup(self) -> None:
        config = self.config
        # One upstream client for every configuration: a reload keeps the warm connections of
        # providers whose way out did not change.
        self.client = UpstreamClient(config.server.max_connections_per_host, config.server.stream_buffer_bytes)
        if config.metrics.enabled:
            self.client.on_pool_wait = self.metrics.observe_pool_wait
        warn_without_trusted_roots()
        self.runtime = Runtime(self.loaded, self.client, self.backend, self.digest)
        # Built here, in the worker process: the writer is a thread, and threads do not survive fork.
        self.ledger = Ledger(_ledger_config(config.ledger, self.base_dir))
        self.metrics.attach_ledger(self.ledger.stats)
        if self.shared_state is not None:
            from tollway.state.redis import attach_metrics

            attach_metrics(self.metrics.registry, self.shared_state)
            await self.shared_state.start(self.ledger, lambda: self.runtime.policies if self.runtime else None)
        self.tracer = Tracer.from_config(config.tracing, {p.name: p.kind for p in config.providers})
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            # `tollway serve` relays SIGHUP to every worker as SIGUSR1 (see `tollway.cli`).
            loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(self.reload_from_file("SIGHUP")))
        if config.server.watch_config:
            self._watch = loop.create_task(self._watch_config())
        self.memory.start(loop)
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        self.memory.stop()
        if self._watch is not None:
            self._watch.cancel()
        if self.client is not None:
            await self.client.close()
        if self.access_log is not None:
            self.access_log.flush()
        if self.shared_state is not None:
            await self.shared_state.close()
        if self.ledger is not None and not self.ledger.close(timeout=10.0):
            log.error("the usage ledger did not finish writing within 10 s; some records may be lost")
        if self.tracer is not None:
            self.tracer.shutdown()

    # -- reload ---------------------------------------------------------------------------------
    def load_runtime(self) -> Runtime | None:
        """A runtime from the config file as it is now; `None` if it is the text already serving.
        Raises `ConfigError` with every problem of a broken file."""
        path = self.loaded.path
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
        digest = hashlib.sha256(text).hexdigest()
        if self.runtime is not None and digest == self.runtime.digest:
            return None
        return Runtime(load_config(path), self.client, self.backend, digest)

    async def reload_from_file(self, trigger: str) -> tuple[bool, list[str]]:
        """Validate the config file and switch to it; a broken file leaves the old one serving.
        Returns whether a new configuration took effect, and the problems of a refused one."""
        try:
            runtime = self.load_runtime()
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload (%s) refused: %s", trigger, problem)
            log.error("reload (%s) refused: the previous configuration keeps serving", trigger)
            return False, exc.problems
        if runtime is None:
            return False, []
        self.runtime = runtime
        self.reloads += 1
        log.info(
            "reload (%s): configuration %s in effect (%d models, %d policies)",
            trigger,
            runtime.digest[:12],
            len(runtime.models),
            len(runtime.policies),
        )
        return True, []

    async def _watch_config(self) -> None:
        """`[server] watch_config`: poll the file and reload when it changes."""
        path = self.loaded.path

        def seen() -> tuple[int, int] | None:
            try:
                stat = path.stat()
            except OSError:
                return None
            return (stat.st_mtime_ns, stat.st_size)

        # The baseline is the file as loaded (a change before the first poll is still a change:
        # the reload compares the content with what is serving, so a false alarm is a no-op).
        last = seen()
        if self.runtime is not None and last is not None:
            with contextlib.suppress(OSError):
                if hashlib.sha256(path.read_bytes()).hexdigest() != self.runtime.digest:
                    last = None
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = seen()
            if now is not None and now != last:
                await self.reload_from_file("file change")
            last = now

    # -- recording ------------------------------------------------------------------------------
    def record(self, record: UsageRecord) -> None:
        """A finished request: to the ledger, the metrics, the access log and the tracer."""
        if self.ledger is not None:
            self.ledger.submit(record)
        if self.config.metrics.enabled:
            self.metrics.observe_record(record)
        if self.access_log is not None:
            self.access_log.write(record)
        if self.tracer is not None:
            try:
                self.tracer.emit(record)
            except Exception:
                log.exception("request %s: emitting its trace failed", record.request_id)

    # -- dispatch -----------------------------------------------------------------------------
    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        request_id = new_request_id()
        handler = self.routes.get((scope.method, scope.path))
        if handler is None:
            if scope.method == "GET" and scope.path.startswith(admin.REQUESTS_PREFIX):
                handler = self.admin_request
            else:
                if scope.path in self._paths:
                    message = f"{scope.method} is not allowed on {scope.path}"
                    error = ApiError(405, "invalid_request_error", "method_not_allowed", message)
                else:
                    message = f"unknown URL: {scope.method} {scope.path}"
                    error = ApiError(404, "invalid_request_error", "unknown_url", message)
                self.respond_error(proto, request_id, error, scope.path)
                return
        memory = self.memory
        memory.begin()
        try:
            await handler(scope, proto, request_id)
        except Reject as reject:
            self.respond_error(proto, request_id, reject.error, scope.path)
        except Exception:
            # A bug, not a client or provider problem: log it with the request id and answer 500.
            log.exception("internal error handling %s %s (request %s)", scope.method, scope.path, request_id)
            with contextlib.suppress(Exception):
                self.respond_error(
                    proto,
                    request_id,
                    ApiError(500, "server_error", "internal_error", "the gateway failed to handle this request"),
                    scope.path,
                )
        finally:
            memory.end()

    @staticmethod
    def respond_error(proto: Any, request_id: str, error: ApiError, path: str = "") -> None:
        """The error in the format of the API the path belongs to (Anthropic's for `/v1/messages...`)."""
        headers = [_JSON, ("x-request-id", request_id), *error.headers]
        api = "anthropic" if path.startswith("/v1/messages") else "openai"
        proto.response_bytes(error.status, headers, error.body(api, request_id))

    def authenticate(self, scope: Any, runtime: Runtime) -> Identity:
        headers = scope.headers
        key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
        if key is None:
            raise Reject(
                ApiError(
                    401,
                    "authentication_error",
                    "missing_api_key",
                    "no API key: send a tollway virtual key as `Authorization: Bearer <key>` or `x-api-key`",
                )
            )
        identity = runtime.keys.lookup(key)
        if identity is None:
            raise Reject(
                ApiError(
                    401, "authentication_error", "invalid_api_key", "invalid API key: it matches no configured key"
                )
            )
        return identity

    def authenticate_admin(self, scope: Any) -> None:
        """The admin key, compared by digest in constant time; 401/403 otherwise."""
        if self.admin_digest is None:
            raise Reject(
                ApiError(
                    403,
                    "permission_error",
                    "admin_disabled",
                    "the admin API is off: set `[admin] key_hash` (from `tollway keys new`) to use it",
                )
            )
        key = presented_key(scope.headers.get("authorization"), scope.headers.get("x-api-key"))
        if key is None:
            raise Reject(ApiError(401, "authentication_error", "missing_api_key", "the admin API needs the admin key"))
        digest = bytes.fromhex(hash_key(key).removeprefix("sha256:"))
        if not hmac.compare_digest(digest, self.admin_digest):
            raise Reject(ApiError(401, "authentication_error", "invalid_api_key", "invalid admin key"))

    @staticmethod
    async def read_body(scope: Any, proto: Any, max_body: int) -> bytes:
        declared = scope.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise Reject(invalid_request("invalid Content-Length header")) from None
            if size > max_body:
                raise Reject(_too_large(max_body))
            body: bytes = await proto()
            return body
        parts, size = [], 0
        async for part in proto:
            size += len(part)
            if size > max_body:
                raise Reject(_too_large(max_body))
            parts.append(part)
        return b"".join(parts)

    def _runtime(self) -> Runtime:
        runtime = self.runtime
        if runtime is None:
            raise Reject(ApiError(503, "server_error", "not_ready", "the gateway is starting"))
        return runtime

    # -- endpoints ----------------------------------------------------------------------------
    async def chat_completions(self, scope: Any, proto: Any, request_id: str) -> None:
        runtime = self._runtime()
        await ModelRequest(self, runtime, scope, proto, request_id, "openai", "/v1/chat/completions").run()

    async def messages(self, scope: Any, proto: Any, request_id: str) -> None:
        runtime = self._runtime()
        await ModelRequest(self, runtime, scope, proto, request_id, "anthropic", "/v1/messages").run()

    async def embeddings(self, scope: Any, proto: Any, request_id: str) -> None:
        runtime = self._runtime()
        await ModelRequest(
            self, runtime, scope, proto, request_id, "openai", "/v1/embeddings", operation="embeddings"
        ).run()

    async def responses(self, scope: Any, proto: Any, request_id: str) -> None:
        runtime = self._runtime()
        await ModelRequest(
            self, runtime, scope, proto, request_id, "openai", "/v1/responses", operation="responses"
        ).run()

    async def count_tokens(self, scope: Any, proto: Any, request_id: str) -> None:
        """Anthropic's `POST /v1/messages/count_tokens`, answered by the native counter with the
        model's tokenizer (an approximation for Claude, whose tokenizer is not public: see
        docs/native.md). No provider is called, so no usage is recorded."""
        runtime = self._runtime()
        identity = self.authenticate(scope, runtime)
        raw = await self.read_body(scope, proto, runtime.max_body)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Reject(invalid_request(f"request body is not valid JSON: {exc}", code="invalid_json")) from None
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise Reject(invalid_request("missing `model`: a non-empty string naming the model", "model"))
        if not identity.may_use(model):
            raise Reject(model_not_allowed(identity.key_name, model))
        target = runtime.router.first_target(model)
        if target is None:
            raise Reject(model_not_found(model))
        try:
            tokens, exactness = runtime.accounting(target).counter.count_anthropic_messages(raw)
        except TokenCountError as exc:
            raise Reject(invalid_request(str(exc), "messages")) from None
        headers = [_JSON, ("x-request-id", request_id), ("x-tollway-token-count", exactness)]
        proto.response_bytes(200, headers, orjson.dumps({"input_tokens": tokens}))

    async def healthz(self, scope: Any, proto: Any, request_id: str) -> None:
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], b'{"status":"ok"}')

    async def readyz(self, scope: Any, proto: Any, request_id: str) -> None:
        runtime = self.runtime
        if not self.ready or runtime is None:
            proto.response_bytes(503, [_JSON, ("x-request-id", request_id)], b'{"status":"starting"}')
            return
        body = orjson.dumps(
            {
                "status": "ready",
                "config": runtime.digest[:12],
                "reloads": self.reloads,
                "providers": len(runtime.adapters),
                "models": len(runtime.models),
                "policies": len(runtime.policies),
                "state": self.backend.status(),
            }
        )
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], body)

    async def list_models(self, scope: Any, proto: Any, request_id: str) -> None:
        runtime = self._runtime()
        identity = self.authenticate(scope, runtime)
        names = [*runtime.models, *(r.name for r in runtime.config.routes)]
        owners = {m.name: m.provider for m in runtime.models.values()}
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": owners.get(name, "tollway")}
            for name in names
            if identity.may_use(name)
        ]
        body = orjson.dumps({"object": "list", "data": data})
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], body)

    async def metrics_endpoint(self, scope: Any, proto: Any, request_id: str) -> None:
        if not self.config.metrics.enabled:
            raise Reject(ApiError(404, "invalid_request_error", "unknown_url", "metrics are off (`[metrics] enabled`)"))
        if self.config.metrics.require_admin:
            self.authenticate_admin(scope)
        proto.response_bytes(200, [("content-type", METRICS_CONTENT_TYPE)], self.metrics.render())

    async def admin_usage(self, scope: Any, proto: Any, request_id: str) -> None:
        self.authenticate_admin(scope)
        body = await asyncio.to_thread(admin.usage_totals, self.ledger, scope.query_string)
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], body)

    async def admin_request(self, scope: Any, proto: Any, request_id: str) -> None:
        self.authenticate_admin(scope)
        wanted = scope.path.removeprefix(admin.REQUESTS_PREFIX)
        body = await asyncio.to_thread(admin.request_record, self.ledger, wanted)
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], body)

    async def admin_reload(self, scope: Any, proto: Any, request_id: str) -> None:
        """Validate the config file and switch to it; a broken file is refused with its problems
        (400), and the previous configuration keeps serving."""
        self.authenticate_admin(scope)
        changed, problems = await self.reload_from_file("admin API")
        if problems:
            body = orjson.dumps({"status": "refused", "problems": problems})
            proto.response_bytes(400, [_JSON, ("x-request-id", request_id)], body)
            return
        if changed and self.config.server.workers > 1:
            # The other workers, through the main process, as for SIGHUP (this one sees the same
            # text again: a no-op).
            os.kill(os.getppid(), signal.SIGHUP)
        runtime = self._runtime()
        body = orjson.dumps({"status": "reloaded" if changed else "unchanged", "config": runtime.digest[:12]})
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], body)


def _too_large(max_body: int) -> ApiError:
    return ApiError(
        413,
        "invalid_request_error",
        "request_too_large",
        f"request body is larger than the gateway's limit of {max_body} bytes (`server.max_body_bytes`)",
    )


def _ledger_config(config: LedgerConfig, base_dir: Path) -> LedgerConfig:
    """A relative ledger path is relative to the config file, as every path in the config is."""
    path = Path(config.path)
    if path.is_absolute():
        return config
    return msgspec.structs.replace(config, path=str(base_dir / path))


def _configure_logging(level: str) -> None:
    """tollway's own log lines go to stderr beside Granian's, in the same shape."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] tollway: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


def _stop_on_signals_while_starting() -> None:
    """In a worker forked by Granian's main process, give SIGTERM and SIGINT back their default
    meaning (stop now) until Granian installs the worker's own handlers, after the factory.

    The worker inherits the main process's Python handlers, which only set a flag on the main
    process's server object: a SIGTERM that reached a worker still starting (loading the
    config, opening the ledger, rebuilding budgets from it) set that flag in the worker's copy
    and was lost, so the worker went on to serve and a shutdown waited out Granian's
    `workers_kill_timeout` (30 s) before killing it. Nothing has been served at that point, so
    stopping at once loses nothing."""
    if multiprocessing.parent_process() is None or threading.current_thread() is not threading.main_thread():
        return  # not a worker process (`tollway serve` always forks them), or not its main thread
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


def create_app() -> Gateway:
    """Granian's factory: load the config named by `$TOLLWAY_CONFIG` (set by `tollway serve`)."""
    _stop_on_signals_while_starting()
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"${CONFIG_ENV} is not set; start the gateway with `tollway serve --config PATH`")
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    gateway = Gateway(load_config(path), digest)
    _configure_logging(gateway.config.server.log_level)
    return gateway
