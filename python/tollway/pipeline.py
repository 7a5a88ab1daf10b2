"""The request lifecycle of a model call, and nothing else.

    auth -> parse -> route (plan) -> admit (policies) -> attempt loop -> settle -> record -> respond

One `ModelRequest` per call to a model endpoint (`/v1/chat/completions`, `/v1/messages`). Every
request that reaches it ends with exactly one `UsageRecord`, whatever happened: rejected before
any attempt (auth, validation, policy), answered, failed upstream, timed out, cut by the client,
or broken by a bug in the gateway. `finish` builds and hands off that record in a `finally`,
and never raises.

Rules the code keeps:
- Reservations made at admission are settled with the actual usage, or released when no model
  call happened, on every path (`Admission.settle` / `Admission.release`, called once).
- Failover happens only before the first byte reaches the client; after it, a failure ends the
  stream with an explicit error event in the client's format.
- Each target is tried at most once per request, within one deadline (`tollway.routing`).
- The gateway's overhead (`x-tollway-overhead-ms`) is its own time: everything but the waits for
  the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from tollway.auth import Identity
from tollway.config.schema import ModelConfig
from tollway.errors import CallerGone, UpstreamError
from tollway.policy.engine import NEEDS_FACTS, RequestFacts
from tollway.providers import ChatCall, ProviderAdapter
from tollway.providers.base import StreamMeter
from tollway.routing import Plan, RoutingError, Step, Target
from tollway.server.errors import ApiError, from_failure, invalid_request, model_not_allowed, model_not_found
from tollway.streaming import STREAM_ENDS, CapReached, ClientGone, ClientStream, OutputGuard, Pace, caller_of
from tollway.upstream import CALLER, Failure, failure_of, forwardable_headers
from tollway.usage import Usage
from tollway.usage.accounting import output_text, settle_usage
from tollway.usage.record import Attempt, UsageRecord

if TYPE_CHECKING:
    from tollway._native import Admitted
    from tollway.policy.engine import Admission, AdmitRequest
    from tollway.server.app import Gateway, Runtime

log = logging.getLogger("tollway")

Api = Literal["openai", "anthropic"]
_JSON = ("content-type", "application/json")
_SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))


class Reject(Exception):
    """Ends a request early with an API error."""

    def __init__(self, error: ApiError) -> None:
        self.error = error


@dataclass(slots=True)
class ParsedRequest:
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool


def parse_body(raw: bytes, api: Api, operation: str = "chat") -> ParsedRequest:
    """The fields the gateway needs, checked; everything else goes to the provider as sent.
    Chat needs `messages`; embeddings need `input`; the Responses API needs only `model`."""
    if not raw:
        raise Reject(invalid_request("request body is empty; expected a JSON object", code="invalid_json"))
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Reject(invalid_request(f"request body is not valid JSON: {exc}", code="invalid_json")) from None
    if not isinstance(body, dict):
        raise Reject(invalid_request("request body must be a JSON object", code="invalid_json"))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Reject(invalid_request("missing `model`: a non-empty string naming the model", "model", "missing_model"))
    if operation == "embeddings":
        value = body.get("input")
        if not (isinstance(value, str) and value) and not (isinstance(value, list) and value):
            raise Reject(invalid_request("missing `input`: a string or a non-empty array", "input", "missing_input"))
        return ParsedRequest(body, raw, model, False)
    messages = body.get("messages")
    if operation == "chat" and (not isinstance(messages, list) or not messages):
        raise Reject(
            invalid_request("missing `messages`: a non-empty array of chat messages", "messages", "missing_messages")
        )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise Reject(invalid_request("`stream` must be true or false", "stream", "invalid_type"))
    if api == "anthropic":
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise Reject(
                invalid_request("missing `max_tokens`: a positive integer (required by the Messages API)", "max_tokens")
            )
    return ParsedRequest(body, raw, model, stream is True)


class ModelRequest:
    """One call to a model endpoint, from authentication to its usage record."""

    def __init__(
        self,
        gateway: Gateway,
        runtime: Runtime,
        scope: Any,
        proto: Any,
        request_id: str,
        api: Api,
        endpoint: str,
        operation: str = "chat",
    ) -> None:
        # `chat` (both APIs, translated across providers); `embeddings` and `responses` (OpenAI's
        # format, passed through to providers that serve them).
        self.operation = operation
        self.gw = gateway
        self.rt = runtime
        self.scope = scope
        self.proto = proto
        self.api: Api = api
        self.started = time.perf_counter()
        self.record = UsageRecord(request_id=request_id, received_at=time.time(), endpoint=endpoint, api=api)
        self.record.client_ip = _client_ip(scope)
        self.identity: Identity | None = None
        self.parsed: ParsedRequest | None = None
        self.admission: Admission | Admitted | None = None
        self.meter: StreamMeter | None = None
        self.sink: ClientStream | None = None
        # Time spent waiting for providers (excluded from the gateway's overhead).
        self.upstream_wait = 0.0
        # The call that produced the answer (or the last one tried), for settling usage.
        self.final_call: ChatCall | None = None
        self.final_target: Target | None = None
        self.reported_usage: Usage | None = None
        self.complete = False
        self.attempted = False
        # Output text of a non-streamed answer without usage, for counting.
        self.delivered_text: str | None = None
        # The truncating budget that ended the stream, if one did.
        self.truncated_by: str | None = None
        # The client disconnected before its answer was complete.
        self.client_left = False

    @property
    def request_id(self) -> str:
        return self.record.request_id

    # -- the lifecycle -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        except Reject as reject:
            self.respond_error(reject.error)
        except Exception:
            log.exception("internal error handling %s (request %s)", self.record.endpoint, self.request_id)
            error = ApiError(500, "server_error", "internal_error", "the gateway failed to handle this request")
            if self.sink is not None and self.sink.started:
                await self._end_stream_with(error)
            else:
                with contextlib.suppress(Exception):
                    self.respond_error(error)
        finally:
            self.finish()

    async def _run(self) -> None:
        gw = self.gw
        self.identity = identity = gw.authenticate(self.scope, self.rt)
        rec = self.record
        rec.key, rec.team, rec.user, rec.tags = identity.key_name, identity.team, identity.user, list(identity.tags)
        raw = await gw.read_body(self.scope, self.proto, self.rt.max_body)
        self.parsed = parsed = parse_body(raw, self.api, self.operation)
        rec.requested_model, rec.stream = parsed.model, parsed.stream
        rec.params = _numeric_params(parsed.body)
        if not identity.may_use(parsed.model):
            raise Reject(model_not_allowed(identity.key_name, parsed.model))
        plan = self._plan(parsed, identity)
        primary = plan.candidates[0]
        rec.provider, rec.upstream_model = primary.provider, primary.model
        policies = self.rt.policies
        if policies.compiled.policies:
            if policies.admit is not None:  # the backend answers in process: no coroutine
                admission = self._admit(policies.admit, identity, parsed, primary)
            else:
                admission = await policies.evaluate_async(self._facts(identity, parsed, primary))
            if admission is not None:
                self.admission = admission
                rec.decisions = admission.verdicts
                if admission.denied is not None:
                    raise Reject(admission.denied)
                if admission.clamps:
                    self.parsed = parsed = _clamped(parsed, admission.clamps, self.api)
        await self._attempts_while_present(plan, parsed)

    def _admit(
        self, admit: AdmitRequest, identity: Identity, parsed: ParsedRequest, primary: Target
    ) -> Admission | Admitted | None:
        """The admission by policies whose state is in process (`admit`: the engine's): the
        request's attributes as a tuple (one native call decides most requests), and the whole
        `RequestFacts` made only when a matched policy needs it."""
        rec = self.record
        admission = admit(
            (
                identity.key_name,
                identity.team,
                identity.user,
                parsed.model,
                primary.model,
                primary.provider,
                rec.endpoint,
                rec.client_ip,
            ),
            identity.tags,
            rec.params,
            self.rt.accounting(primary),
            self.api,
            parsed.raw,
        )
        if admission is NEEDS_FACTS:
            return self.rt.policies.evaluate(self._facts(identity, parsed, primary))
        return admission

    def _facts(self, identity: Identity, parsed: ParsedRequest, primary: Target) -> RequestFacts:
        """The request as policies see it (made only when a matched policy needs more than its
        attributes: see `PolicyEngine.admit`)."""
        accounting = self.rt.accounting(primary)
        api, raw, rec = self.api, parsed.raw, self.record
        # Positional, in the field order: made per request, and keywords cost more.
        return RequestFacts(
            identity.key_name,
            identity.team,
            identity.user,
            identity.tags,
            parsed.model,
            primary.model,
            primary.provider,
            rec.endpoint,
            rec.client_ip,
            rec.params,
            parsed.stream,
            bool(parsed.body.get("tools")),
            self.scope.headers,
            lambda: accounting.count_prompt(api, raw)[0],
            accounting.info,
        )

    def _plan(self, parsed: ParsedRequest, identity: Identity) -> Plan:
        override = self.scope.headers.get("x-tollway-target")
        try:
            return self.rt.router.plan(parsed.model, identity, override=override, stream=parsed.stream)
        except RoutingError as exc:
            if exc.code == "model_not_found":
                raise Reject(model_not_found(parsed.model)) from None
            raise Reject(ApiError(403, "permission_error", exc.code, str(exc), "model")) from None

    async def _attempts_while_present(self, plan: Plan, parsed: ParsedRequest) -> None:
        """The attempts, cancelled at once when the client disconnects before its answer is
        complete (RSGI tells): a request still waiting for a connection is never sent, a call
        in flight is closed so the provider stops generating, a backoff wait ends."""
        task = asyncio.current_task()
        assert task is not None
        gone = asyncio.ensure_future(self.proto.client_disconnect())

        def on_gone(fut: asyncio.Future[None]) -> None:
            sink = self.sink
            # A client that leaves after the end event has the whole answer: the rest of the
            # upstream response is still read, for its usage and to keep the connection.
            if not fut.cancelled() and not self.complete and not (sink is not None and sink.ended):
                self.client_left = True
                task.cancel()

        gone.add_done_callback(on_gone)
        caller = CALLER.set(caller_of(self.scope))
        try:
            await self._attempts(plan, parsed)
        except asyncio.CancelledError:
            if not self.client_left:
                raise
            task.uncancel()
            self.record.client_disconnected = True
            log.info("request %s: client disconnected; upstream request ended", self.request_id)
        finally:
            CALLER.reset(caller)
            gone.remove_done_callback(on_gone)
            gone.cancel()

    async def _attempts(self, plan: Plan, parsed: ParsedRequest) -> None:
        failure: Failure | None = None
        failure_headers: dict[str, str] | None = None
        skips = 0
        while True:
            started_streaming = self.sink is not None and self.sink.started
            step = plan.next_attempt(failure, headers=failure_headers, started_streaming=started_streaming)
            skips = self._record_skips(plan, skips)
            if step is None:
                break
            if step.delay_s > 0:
                await asyncio.sleep(step.delay_s)
            failure, failure_headers = await self._attempt(plan, step, parsed)
            if failure is None:
                return
        # No more attempts: the last failure is the answer.
        assert failure is not None
        error = from_failure(failure)
        if plan.stop_reason not in (None, "not_retryable", "streaming_started") and self.record.attempts:
            self.record.error = f"{failure.message} (no further attempt: {plan.stop_reason})"
        if self.sink is not None and self.sink.started:
            await self._end_stream_with(error)
            return
        raise Reject(error)

    def _record_skips(self, plan: Plan, recorded: int) -> int:
        """Targets the plan passed over since the last call (an open circuit, a provider's wait
        hint over the cap) go into the record, in order, as attempts not made: reason
        `skipped`, the skip's reason as outcome. Returns how many skips are recorded."""
        for skip in plan.skipped[recorded:]:
            target = self.rt.router.resolve(skip.name) if skip.reason != "restricted" else None
            if target is not None:
                self.record.attempts.append(
                    Attempt(provider=target.provider, model=target.model, outcome=skip.reason, reason="skipped")
                )
        return len(plan.skipped)

    async def _attempt(
        self, plan: Plan, step: Step, parsed: ParsedRequest
    ) -> tuple[Failure | None, dict[str, str] | None]:
        """One attempt at one target; the failure (and its response headers) or `None` on success."""
        rt = self.rt
        target = step.target
        adapter = rt.adapters[target.provider]
        model = rt.model_config(target)
        self.meter = StreamMeter(rt.accounting(target).counter) if parsed.stream else None
        call = ChatCall(
            request_id=self.request_id,
            body=parsed.body,
            raw=parsed.raw,
            model=model,
            stream=parsed.stream,
            forward_headers=forwardable_headers(self.scope.headers.items()) if adapter.egress is not None else {},
            api=self.api,
            meter=self.meter,
        )
        adapter = _with_deadline(adapter, plan)
        attempt = Attempt(provider=target.provider, model=target.model, reason=step.reason)
        self.record.attempts.append(attempt)
        self.final_call, self.final_target = call, target
        self.record.provider, self.record.upstream_model = target.provider, target.model
        self.attempted = True
        began = time.perf_counter()
        if self.operation != "chat" and self.operation not in adapter.operations:
            message = f"provider `{target.provider}` ({adapter.kind}) does not serve {self.record.endpoint}"
            raise Reject(invalid_request(message, "model", "unsupported_endpoint"))
        try:
            if parsed.stream:
                await self._stream(adapter, call, target)
                self._finish_attempt(attempt, began, None)
            else:
                if self.operation == "chat":
                    completion = await adapter.chat(call)
                else:
                    completion = await adapter.forward(call, self.operation)
                self._finish_attempt(attempt, began, None)
                self.reported_usage = completion.usage
                if completion.usage is None:
                    self.delivered_text = output_text(completion.body, self.api)
                self.complete = True
                self._respond_completion(completion.body, [*completion.headers], target)
            rt.router.observe(target, None, ttft_s=_ttft(attempt), latency_s=attempt.latency_ms / 1000)
            return None, None
        except UpstreamError as exc:
            failure = failure_of(exc)
            self._finish_attempt(attempt, began, failure)
            rt.router.observe(target, failure.kind)
            headers = {"retry-after": failure.retry_after} if failure.retry_after else None
            return failure, headers
        except (_ClientLeft, CallerGone):
            self._finish_attempt(attempt, began, None, outcome="client_disconnected")
            self.record.client_disconnected = True
            return None, None
        except asyncio.CancelledError:
            if self.client_left:
                self._finish_attempt(attempt, began, None, outcome="client_disconnected")
            raise
        except CapReached:
            self._finish_attempt(attempt, began, None, outcome="truncated")
            policy = self.truncated_by or "?"
            message = (
                f"budget reached: policy `{policy}` allowed no more output for this request; "
                'the answer was cut here (`on_exceed = "truncate"`)'
            )
            await self._end_stream_with(ApiError(429, "rate_limit_error", "budget_exhausted", message))
            for verdict in self.record.decisions:
                if verdict.policy == policy and verdict.kind == "budget":
                    verdict.verdict = "truncate"
            return None, None

    def _finish_attempt(
        self, attempt: Attempt, began: float, failure: Failure | None, outcome: str | None = None
    ) -> None:
        now = time.perf_counter()
        attempt.latency_ms = round((now - began) * 1000, 3)
        self.upstream_wait += now - began
        if self.sink is not None and self.sink.first_send_at is not None and attempt.ttft_ms is None:
            attempt.ttft_ms = round((self.sink.first_send_at - began) * 1000, 3)
        if failure is not None:
            attempt.outcome = failure.kind.value
            attempt.status = failure.upstream_status
            attempt.error = failure.message
        elif outcome is not None:
            attempt.outcome = outcome
        else:
            attempt.status = 200

    # -- responses -------------------------------------------------------------------------------
    def route_headers(self, target: Target) -> list[tuple[str, str]]:
        headers = [
            ("x-request-id", self.request_id),
            ("x-tollway-provider", target.provider),
            ("x-tollway-model", target.model),
        ]
        if self.admission is not None:
            headers.extend(self.admission.headers)
        return headers

    def _respond_completion(self, body: bytes, extra: list[tuple[str, str]], target: Target) -> None:
        headers = [_JSON, *self.route_headers(target), *extra]
        overhead_ms = (time.perf_counter() - self.started - self.upstream_wait) * 1000
        self.record.overhead_ms = round(overhead_ms, 3)
        headers.append(("x-tollway-overhead-ms", f"{overhead_ms:.3f}"))
        self.proto.response_bytes(200, headers, body)
        self.record.status = 200
        self.record.first_byte_at = time.time()

    def respond_error(self, error: ApiError) -> None:
        rec = self.record
        rec.status, rec.error_code = error.status, error.code
        rec.error = rec.error or error.message
        headers = [_JSON, ("x-request-id", self.request_id), *error.headers]
        if self.admission is not None and error.status == 429:
            headers.extend(h for h in self.admission.headers if h[0] not in {k for k, _ in error.headers})
        self.proto.response_bytes(error.status, headers, error.body(self.api, self.request_id))

    async def _end_stream_with(self, error: ApiError) -> None:
        """A stream that has begun ends with an explicit error event, never a silent cut."""
        rec = self.record
        rec.error_code = error.code
        rec.error = rec.error or error.message
        assert self.sink is not None
        with contextlib.suppress(Exception):
            await self.sink.send(error.event(self.api, self.request_id))

    async def _stream(self, adapter: ProviderAdapter, call: ChatCall, target: Target) -> None:
        """Run a streamed call in this task. The pump runs in the request's own task (no second
        task, no `asyncio.wait`): this is the per-stream hot path. A client that leaves cancels
        the task (`_attempts_while_present`); one that stops reading is found by its pace."""
        # A new sink per attempt: after a failover before the first byte the response has not
        # started, so its headers name the target that serves it.
        guard = None
        cap = self.admission.output_cap if self.admission is not None else None
        if cap is not None and call.meter is not None:
            guard = OutputGuard(cap[0], cap[1], call.meter)
        ends = STREAM_ENDS["responses" if self.operation == "responses" else self.api]
        pace = Pace.of(self.scope, self.rt.stream_buffer_bytes, adapter.timeouts.idle)
        self.sink = sink = ClientStream(
            self.proto, [*_SSE_HEADERS, *self.route_headers(target)], guard, ends, call.meter, pace
        )
        try:
            if self.operation == "chat":
                usage = await adapter.chat_stream(call, sink)
            else:
                usage = await adapter.forward_stream(call, self.operation, sink)
            self.reported_usage = usage
            self.complete = True
            self.record.status = 200
        except ClientGone as exc:
            log.info("request %s: client went away mid-stream (%s); upstream request ended", self.request_id, exc)
            raise _ClientLeft() from None
        except CapReached:
            # The upstream request is closed (the pump's `finally`); the stream ends with an
            # explicit error, never a silent cut.
            assert guard is not None
            self.record.status = 200
            self.truncated_by = guard.policy
            raise
        except UpstreamError:
            if sink.started:
                self.record.status = 200
            raise
        finally:
            if sink.first_send_at is not None and self.record.first_byte_at is None:
                self.record.first_byte_at = self.record.received_at + (sink.first_send_at - self.started)
                self.record.ttft_ms = round((sink.first_send_at - self.started) * 1000, 3)

    # -- settle and record ---------------------------------------------------------------------
    def finish(self) -> None:
        """Settle usage and reservations, build the record, hand it off. Never raises."""
        try:
            self._settle()
        except Exception:
            log.exception("request %s: settling usage failed", self.request_id)
        finally:
            if self.sink is not None:
                self.sink.close()
            try:
                self.gw.record(self.record)
            except Exception:
                log.exception("request %s: recording usage failed", self.request_id)

    def _settle(self) -> None:
        rec = self.record
        now = time.perf_counter()
        rec.finished_at = rec.received_at + (now - self.started)
        rec.latency_ms = round((now - self.started) * 1000, 3)
        if rec.overhead_ms is None:
            rec.overhead_ms = round((now - self.started - self.upstream_wait) * 1000, 3)
        if rec.status == 0:
            rec.status = 499 if rec.client_disconnected else 500
        call, target = self.final_call, self.final_target
        if not self.attempted or call is None or target is None or self.parsed is None:
            if self.admission is not None:
                self.admission.release()
            return
        reported = self.reported_usage
        delivered = 0
        if reported is None and self.meter is not None:
            reported = self.meter.usage
            if reported is None:
                delivered = self.meter.output_tokens()
        elif reported is None and self.delivered_text:
            delivered = self.rt.accounting(target).count_text(self.delivered_text)[0]
        answered = self.complete or reported is not None or delivered > 0 or bool(self.sink and self.sink.started)
        if not answered:
            # Every attempt failed before its answer began: no usage to record (the sources
            # stay `none`), and the reservations go back.
            if self.admission is not None:
                self.admission.release()
            return
        settled = settle_usage(
            self.rt.accounting(target),
            api=self.api,
            raw_body=self.parsed.raw,
            reported=reported,
            delivered_tokens=delivered,
            complete=self.complete and not rec.client_disconnected,
        )
        usage = settled.usage
        rec.prompt_tokens = usage.prompt_tokens
        rec.completion_tokens = usage.completion_tokens
        rec.cached_tokens = usage.cached_tokens
        rec.cache_write_tokens = usage.cache_write_tokens
        rec.reasoning_tokens = usage.reasoning_tokens
        rec.prompt_source, rec.completion_source = settled.prompt_source, settled.completion_source
        rec.cost_usd = settled.cost.usd
        rec.cost_source = settled.cost.source
        if self.admission is not None:
            self.admission.settle(usage, settled.cost.micro_usd if settled.cost.source != "unpriced" else None)


def _numeric_params(body: dict[str, Any]) -> dict[str, float]:
    """The numeric parameters policies look at, as sent (`max_completion_tokens` is `max_tokens`)."""
    params: dict[str, float] = {}
    for name in ("max_tokens", "n", "temperature", "top_p"):
        value = body.get("max_completion_tokens", body.get(name)) if name == "max_tokens" else body.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            params[name] = float(value)
    return params


def _clamped(parsed: ParsedRequest, clamps: dict[str, int | float], api: Api) -> ParsedRequest:
    """The request with parameters lowered by policies (the body sent upstream is re-encoded)."""
    body = dict(parsed.body)
    for name, value in clamps.items():
        if name == "max_tokens" and api == "openai" and "max_completion_tokens" in body:
            body["max_completion_tokens"] = value
        else:
            body[name] = value
    return ParsedRequest(body, orjson.dumps(body), parsed.model, parsed.stream)


class _ClientLeft(Exception):
    """The client disconnected during a streamed attempt."""


def _ttft(attempt: Attempt) -> float | None:
    return attempt.ttft_ms / 1000 if attempt.ttft_ms is not None else None


def _client_ip(scope: Any) -> str | None:
    client = getattr(scope, "client", None)
    if not client:
        return None
    host, _, _port = str(client).rpartition(":")
    return host.strip("[]") or None


def _with_deadline(adapter: ProviderAdapter, plan: Plan) -> ProviderAdapter:
    """Timeouts of this attempt: the provider's, each cut to the request's remaining deadline."""
    remaining = plan.remaining_s()
    base = adapter.timeouts
    # A second of slack: with the defaults (a 600 s deadline and a 600 s total timeout) the
    # first attempt needs no copy, and the total timeout still ends it near the deadline.
    if remaining + 1.0 >= base.total:
        return adapter
    clone = copy.copy(adapter)
    clone.timeouts = plan.timeouts(base)
    return clone


def model_config_for(target: Target, configured: dict[str, ModelConfig]) -> ModelConfig:
    """The `ModelConfig` an adapter gets for a target: the [[models]] entry it names, or one made
    for a direct `provider/model` address."""
    found = configured.get(target.name)
    if found is not None and found.provider == target.provider and found.upstream_model == target.model:
        return found
    return ModelConfig(name=target.name, provider=target.provider, upstream=target.model)
