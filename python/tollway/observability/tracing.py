"""OpenTelemetry traces following the GenAI semantic conventions, exported over OTLP/HTTP.

Off unless `[tracing] otlp_endpoint` is set; needs the optional extra (`pip install
'tollway[otel]'`, which brings `opentelemetry-sdk` and the OTLP/HTTP exporter). One span per
model request, built from its usage record when the request ends (so the request path pays
nothing until then): name `"{operation} {model}"`, kind CLIENT, start and end at the request's
received and finished times, attributes:

- `gen_ai.operation.name` (`chat`), `gen_ai.provider.name` (the provider kind that served it),
  `gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.usage.input_tokens`,
  `gen_ai.usage.output_tokens`, `error.type` on failure;
- `tollway.request_id`, `tollway.key`, `tollway.team`, `tollway.endpoint`, `tollway.cost_usd`,
  `tollway.attempts`, `http.response.status_code`;
- one span event per upstream attempt (`gen_ai.attempt`) with its provider, model, outcome and
  latency, and one per policy verdict other than `allow` (`tollway.policy`).

Spans are exported by a batch processor in a background thread; shutdown flushes it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tollway.config.schema import TracingConfig
from tollway.usage.record import UsageRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("tollway")


class Tracer:
    """Emits one span per finished request; `None` from `from_config` when tracing is off."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter, provider_kinds: dict[str, str]) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=TraceIdRatioBased(config.sample_ratio),
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        self._tracer = self._provider.get_tracer("tollway")
        self._kinds = provider_kinds

    @classmethod
    def from_config(cls, config: TracingConfig, provider_kinds: dict[str, str]) -> Tracer | None:
        if config.otlp_endpoint is None:
            return None
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.error(
                "[tracing] otlp_endpoint is set but OpenTelemetry is not installed: "
                "pip install 'tollway[otel]'; tracing is off"
            )
            return None
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=dict(config.headers))
        return cls(config, exporter, provider_kinds)

    def emit(self, record: UsageRecord) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        operation = "chat"
        model = record.requested_model or "unknown"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": model,
            "tollway.request_id": record.request_id,
            "tollway.endpoint": record.endpoint,
            "tollway.attempts": sum(1 for a in record.attempts if a.reason != "skipped"),
            "http.response.status_code": record.status,
        }
        if record.provider is not None:
            attributes["gen_ai.provider.name"] = self._kinds.get(record.provider, record.provider)
            attributes["tollway.provider"] = record.provider
        if record.upstream_model is not None:
            attributes["gen_ai.response.model"] = record.upstream_model
        if record.completion_source != "none":
            attributes["gen_ai.usage.input_tokens"] = record.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = record.completion_tokens
            attributes["tollway.cost_usd"] = record.cost_usd
        for name in ("key", "team", "user"):
            value = getattr(record, name)
            if value is not None:
                attributes[f"tollway.{name}"] = value
        if record.error_code is not None:
            attributes["error.type"] = record.error_code
        start_ns = int(record.received_at * 1e9)
        end_ns = int(max(record.finished_at, record.received_at) * 1e9)
        span = self._tracer.start_span(
            f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attributes, start_time=start_ns
        )
        for attempt in record.attempts:
            span.add_event(
                "gen_ai.attempt",
                {
                    "gen_ai.provider.name": self._kinds.get(attempt.provider, attempt.provider),
                    "tollway.provider": attempt.provider,
                    "gen_ai.request.model": attempt.model,
                    "tollway.outcome": attempt.outcome,
                    "tollway.reason": attempt.reason,
                    "tollway.latency_ms": attempt.latency_ms,
                },
                timestamp=start_ns,
            )
        for verdict in record.decisions:
            if verdict.verdict != "allow":
                span.add_event("tollway.policy", {"tollway.policy": verdict.policy, "tollway.verdict": verdict.verdict})
        if record.status >= 400 or record.error_code is not None:
            span.set_status(Status(StatusCode.ERROR, record.error_code or str(record.status)))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        self._provider.shutdown()
