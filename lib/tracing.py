"""Optional OpenTelemetry traces: one span per delivery attempt of a job.

Off by default. `OTEL_ENABLED=true` or `OTEL_EXPORTER_OTLP_ENDPOINT` turns it on, and then the
`otel` extra (`pip install 'careershaper-jobs[otel]'`) must be installed: `setup` raises
ConfigError at start otherwise. When off, nothing here imports opentelemetry and every call is a
no-op, so the worker never depends on it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lib.config import Settings
from lib.errors import ConfigError

log = logging.getLogger("cs.tracing")

SPAN_NAME = "job.attempt"

_tracer: Any = None
_provider: Any = None


def enabled(settings: Settings) -> bool:
    return settings.otel_enabled or bool(settings.otel_exporter_otlp_endpoint)


def setup(settings: Settings, exporter: Any = None) -> bool:
    """Start exporting spans when tracing is enabled; return whether it is.

    `exporter` replaces the OTLP/HTTP exporter (tests pass an in-memory one; spans are then
    exported synchronously). Raises ConfigError when tracing is enabled but the `otel` extra
    is not installed.
    """
    global _tracer, _provider
    shutdown()
    if not enabled(settings):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        raise ConfigError(
            "invalid configuration:\n  - OTEL_ENABLED/OTEL_EXPORTER_OTLP_ENDPOINT need the otel "
            "extra: pip install 'careershaper-jobs[otel]'"
        ) from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint
        exporter = OTLPSpanExporter(
            endpoint=endpoint.rstrip("/") + "/v1/traces" if endpoint else None
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Ours, whether or not a global provider is set already; offered as the global one too, so
    # other instrumentation joins the same traces.
    if type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":
        trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("careershaper.worker")
    log.info("tracing on", extra={"service": settings.otel_service_name})
    return True


def shutdown() -> None:
    """Flush and stop the exporter set up by `setup`, if any."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@contextmanager
def attempt_span(job_id: str, **attributes: Any) -> Iterator[None]:
    """A `job.attempt` span around one delivery of a job (no-op when tracing is off), with
    `job.id` and `job.<name>` for each attribute given.

    An exception leaving the block is recorded on the span and re-raised."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(
        SPAN_NAME, attributes={"job.id": job_id, **_attrs(**attributes)}
    ):
        yield


def annotate(**attributes: Any) -> None:
    """Add `job.*` attributes to the current attempt span (no-op when tracing is off)."""
    if _tracer is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(_attrs(**attributes))


def _attrs(**attributes: Any) -> dict[str, Any]:
    return {f"job.{k}": v for k, v in attributes.items() if v is not None}
