"""The RSGI application: routing by path, request ids, auth, body limits, and the chat path.

Granian calls `Gateway.__rsgi__` once per request, in one event loop per worker. Everything the
request path needs is built once per worker in `__rsgi_init__` (adapters, the pooled upstream
client, the key store), so a request costs one dict lookup to route, one hash to authenticate
and one JSON parse of the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tollway.auth import Identity, KeyStore, presented_key
from tollway.config.loader import LoadedConfig, load_config
from tollway.config.schema import ModelConfig
from tollway.errors import UpstreamError
from tollway.providers import ChatCall, ProviderAdapter, build_adapters
from tollway.server.errors import ApiError, from_failure, invalid_request
from tollway.upstream import UpstreamClient, failure_of, forwardable_headers
from tollway.usage import Usage

log = logging.getLogger("tollway")

CONFIG_ENV = "TOLLWAY_CONFIG"
_JSON = ("content-type", "application/json")
_SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))

Handler = Callable[[Any, Any, str], Awaitable[None]]


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


class _Reject(Exception):
    """Ends a request early with an API error (raised and caught inside one handler)."""

    def __init__(self, error: ApiError) -> None:
        self.error = error


class ClientGone(Exception):
    """Writing to the client failed: it has disconnected."""


class ClientStream:
    """The client side of a streamed response; the HTTP response starts on the first send."""

    __slots__ = ("_headers", "_proto", "_transport")

    def __init__(self, proto: Any, headers: list[tuple[str, str]]) -> None:
        self._proto = proto
        self._headers = headers
        self._transport: Any = None

    @property
    def started(self) -> bool:
        return self._transport is not None

    async def send(self, data: bytes) -> None:
        if self._transport is None:
            self._transport = self._proto.response_stream(200, self._headers)
        try:
            await self._transport.send_bytes(data)
        except Exception as exc:  # Granian raises its own protocol errors for a closed peer
            raise ClientGone(str(exc)) from None

    def close(self) -> None:
        """End the response body. Granian ends a streamed body when its transport is released;
        the stream's objects may outlive the request in exception tracebacks (reference cycles
        that only the garbage collector frees), so the reference is dropped explicitly."""
        self._transport = None


class Gateway:
    """One worker's gateway. Build it with `create_app()` (Granian's factory)."""

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        config = loaded.config
        self.config = config
        self.max_body = config.server.max_body_bytes
        self.keys = KeyStore(config.keys)
        self.models: dict[str, ModelConfig] = {m.name: m for m in config.models}
        self.client: UpstreamClient | None = None
        self.adapters: dict[str, ProviderAdapter] = {}
        self.ready = False
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("GET", "/v1/models"): self.list_models,
            ("GET", "/healthz"): self.healthz,
            ("GET", "/readyz"): self.readyz,
        }
        self._paths = {path for _, path in self.routes}

    # -- lifecycle (Granian RSGI hooks) -------------------------------------------------------
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.startup())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def startup(self) -> None:
        config = self.config
        needs_network = any(p.kind != "mock" for p in config.providers)
        self.client = UpstreamClient(config.server.max_connections_per_host) if needs_network else None
        self.adapters = build_adapters(config.providers, config.server.timeouts, self.client, self.loaded.path.parent)
        self.ready = True

    async def shutdown(self) -> None:
        self.ready = False
        if self.client is not None:
            await self.client.close()

    # -- dispatch -----------------------------------------------------------------------------
    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":
            return
        request_id = new_request_id()
        handler = self.routes.get((scope.method, scope.path))
        if handler is None:
            if scope.path in self._paths:
                error = ApiError(
                    405, "invalid_request_error", "method_not_allowed", f"{scope.method} is not allowed on {scope.path}"
                )
            else:
                error = ApiError(
                    404, "invalid_request_error", "unknown_url", f"unknown URL: {scope.method} {scope.path}"
                )
            self.respond_error(proto, request_id, error)
            return
        try:
            await handler(scope, proto, request_id)
        except _Reject as reject:
            self.respond_error(proto, request_id, reject.error)
        except Exception:
            # A bug, not a client or provider problem: log it with the request id and answer 500.
            log.exception("internal error handling %s %s (request %s)", scope.method, scope.path, request_id)
            with contextlib.suppress(Exception):
                self.respond_error(
                    proto,
                    request_id,
                    ApiError(500, "server_error", "internal_error", "the gateway failed to handle this request"),
                )

    @staticmethod
    def respond_error(proto: Any, request_id: str, error: ApiError) -> None:
        headers = [_JSON, ("x-request-id", request_id), *error.headers]
        proto.response_bytes(error.status, headers, error.openai_body(request_id))

    def authenticate(self, scope: Any) -> Identity:
        headers = scope.headers
        key = presented_key(headers.get("authorization"), headers.get("x-api-key"))
        if key is None:
            raise _Reject(
                ApiError(
                    401,
                    "authentication_error",
                    "missing_api_key",
                    "no API key: send a tollway virtual key as `Authorization: Bearer <key>` or `x-api-key`",
                )
            )
        identity = self.keys.lookup(key)
        if identity is None:
            raise _Reject(
                ApiError(
                    401, "authentication_error", "invalid_api_key", "invalid API key: it matches no configured key"
                )
            )
        return identity

    async def read_body(self, scope: Any, proto: Any) -> bytes:
        declared = scope.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise _Reject(invalid_request("invalid Content-Length header")) from None
            if size > self.max_body:
                raise _Reject(self._too_large())
            body: bytes = await proto()
            return body
        parts, size = [], 0
        async for part in proto:
            size += len(part)
            if size > self.max_body:
                raise _Reject(self._too_large())
            parts.append(part)
        return b"".join(parts)

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            "invalid_request_error",
            "request_too_large",
            f"request body is larger than the gateway's limit of {self.max_body} bytes (`server.max_body_bytes`)",
        )

    # -- endpoints ----------------------------------------------------------------------------
    async def healthz(self, scope: Any, proto: Any, request_id: str) -> None:
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], b'{"status":"ok"}')

    async def readyz(self, scope: Any, proto: Any, request_id: str) -> None:
        if self.ready:
            body = orjson.dumps({"status": "ready", "providers": len(self.adapters), "models": len(self.models)})
            proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], body)
        else:
            proto.response_bytes(503, [_JSON, ("x-request-id", request_id)], b'{"status":"starting"}')

    async def list_models(self, scope: Any, proto: Any, request_id: str) -> None:
        identity = self.authenticate(scope)
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": m.provider}
            for m in self.models.values()
            if identity.may_use(m.name)
        ]
        body = orjson.dumps({"object": "list", "data": data})
        proto.response_bytes(200, [_JSON, ("x-request-id", request_id)], body)

    async def chat_completions(self, scope: Any, proto: Any, request_id: str) -> None:
        started = time.perf_counter()
        identity = self.authenticate(scope)
        raw = await self.read_body(scope, proto)
        body = _parse_chat_body(raw)
        model_name = body["model"]
        model = self.models.get(model_name)
        if model is None:
            raise _Reject(
                ApiError(
                    404,
                    "invalid_request_error",
                    "model_not_found",
                    f"model `{model_name}` does not exist on this gateway; GET /v1/models lists the models you may use",
                    "model",
                )
            )
        if not identity.may_use(model_name):
            raise _Reject(
                ApiError(
                    403,
                    "permission_error",
                    "model_not_allowed",
                    f"key `{identity.key_name}` may not use model `{model_name}`",
                    "model",
                )
            )
        stream = body.get("stream") is True
        adapter = self.adapters[model.provider]
        call = ChatCall(
            request_id=request_id,
            body=body,
            raw=raw,
            model=model,
            stream=stream,
            forward_headers=forwardable_headers(scope.headers.items()) if adapter.client is not None else {},
        )
        route_headers = [
            ("x-request-id", request_id),
            ("x-tollway-provider", model.provider),
            ("x-tollway-model", model.upstream_model),
        ]
        if stream:
            usage = await self._stream(proto, adapter, call, route_headers)
        else:
            upstream_started = time.perf_counter()
            try:
                completion = await adapter.chat(call)
            except UpstreamError as exc:
                raise _Reject(from_failure(failure_of(exc))) from None
            upstream_finished = time.perf_counter()
            headers = [_JSON, *route_headers, *completion.headers]
            # The gateway's own time so far: everything but the wait for the provider's answer.
            now = time.perf_counter()
            overhead_ms = ((upstream_started - started) + (now - upstream_finished)) * 1000
            headers.append(("x-tollway-overhead-ms", f"{overhead_ms:.3f}"))
            proto.response_bytes(200, headers, completion.body)
            usage = completion.usage
        if usage is not None and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "request %s key=%s model=%s prompt_tokens=%d completion_tokens=%d",
                request_id,
                identity.key_name,
                model_name,
                usage.prompt_tokens,
                usage.completion_tokens,
            )

    async def _stream(
        self, proto: Any, adapter: ProviderAdapter, call: ChatCall, route_headers: list[tuple[str, str]]
    ) -> Usage | None:
        """Run a streamed call in this task while watching for the client to go away.

        If the client disconnects, this task is cancelled, which closes the upstream connection
        (the adapter's `finally`), so the provider stops generating. The pump runs in the
        request's own task (no second task, no `asyncio.wait`): this is the per-stream hot path.
        """
        sink = ClientStream(proto, [*_SSE_HEADERS, *route_headers])
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.ensure_future(proto.client_disconnect())
        disconnected = False

        def on_gone(fut: asyncio.Future[None]) -> None:
            nonlocal disconnected
            if not fut.cancelled():
                disconnected = True
                task.cancel()

        gone.add_done_callback(on_gone)
        try:
            usage: Usage | None = await adapter.chat_stream(call, sink)
            return usage
        except asyncio.CancelledError:
            if not disconnected:
                raise
            task.uncancel()
            log.info("request %s: client disconnected mid-stream; upstream request ended", call.request_id)
            return None
        except ClientGone:
            log.info("request %s: client went away mid-stream; upstream request ended", call.request_id)
            return None
        except UpstreamError as exc:
            error = from_failure(failure_of(exc))
            if not sink.started:
                raise _Reject(error) from None
            # The stream has begun: end it with an explicit error event, never a silent cut.
            with contextlib.suppress(Exception):
                await sink.send(error.openai_event(call.request_id))
            return None
        except Exception:
            if not sink.started:
                raise  # answered as a 500 by `__rsgi__`
            log.exception("internal error mid-stream (request %s)", call.request_id)
            internal = ApiError(500, "server_error", "internal_error", "the gateway failed mid-stream")
            with contextlib.suppress(Exception):
                await sink.send(internal.openai_event(call.request_id))
            return None
        finally:
            gone.remove_done_callback(on_gone)
            gone.cancel()
            sink.close()


def _parse_chat_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise _Reject(invalid_request("request body is empty; expected a JSON object", code="invalid_json"))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Reject(invalid_request(f"request body is not valid JSON: {exc}", code="invalid_json")) from None
    if not isinstance(body, dict):
        raise _Reject(invalid_request("request body must be a JSON object", code="invalid_json"))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Reject(invalid_request("missing `model`: a non-empty string naming the model", "model", "missing_model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Reject(
            invalid_request("missing `messages`: a non-empty array of chat messages", "messages", "missing_messages")
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _Reject(invalid_request("`stream` must be true or false", "stream", "invalid_type"))
    return body


def _configure_logging(level: str) -> None:
    """tollway's own log lines go to stderr beside Granian's, in the same shape."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] tollway: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level.upper())


def create_app() -> Gateway:
    """Granian's factory: load the config named by `$TOLLWAY_CONFIG` (set by `tollway serve`)."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"${CONFIG_ENV} is not set; start the gateway with `tollway serve --config PATH`")
    gateway = Gateway(load_config(path))
    _configure_logging(gateway.config.server.log_level)
    return gateway
