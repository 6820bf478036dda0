"""OpenTelemetry set-up from the standard `OTEL_*` variables, shared by nodes and gateways.

What is read, all standard:

    OTEL_SDK_DISABLED=true                     no tracing at all
    OTEL_TRACES_EXPORTER=otlp,console,none     default: otlp when an OTLP endpoint is set, else none
    OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT       where OTLP spans go (read by the exporter itself)
    OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL       http/protobuf (default) or grpc (needs the grpc exporter)
    OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG], OTEL_BSP_*

With no exporter, no SDK provider is built: spans cost nothing and none is exported, while an
incoming `traceparent` still passes through to the next hop (the API's no-op tracer keeps the
parent's context). Nothing here runs at import time and nothing is set globally.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import NoOpTracerProvider, Span, Tracer

from worker.errors import ConfigurationError

__all__ = ["TracingConfigError", "exporters_from_env", "retro_span", "tracer_provider_from_env"]

_TRUE = frozenset({"1", "true", "yes", "on"})


class TracingConfigError(ConfigurationError):
    """An `OTEL_*` variable names something this installation cannot do."""


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # reads endpoint, headers, timeout, compression from the environment
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError as exc:
            raise TracingConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs `pip install opentelemetry-exporter-otlp-proto-grpc`"
            ) from exc
        return GrpcSpanExporter()  # type: ignore[no-any-return]
    raise TracingConfigError(f"unsupported OTLP protocol {protocol!r}: use http/protobuf or grpc")


def exporters_from_env(environ: Mapping[str, str]) -> list[SpanExporter]:
    """The span exporters `OTEL_TRACES_EXPORTER` asks for (none when no endpoint is configured)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return []
    has_endpoint = bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        names = ["otlp"] if has_endpoint else []
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            exporters.append(_otlp_exporter(environ))
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            raise TracingConfigError(f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none")
    return exporters


def tracer_provider_from_env(
    service_name: str, environ: Mapping[str, str] | None = None
) -> TracerProvider | NoOpTracerProvider:
    """An SDK provider exporting as `OTEL_*` says, or a no-op provider when nothing would be exported."""
    env = os.environ if environ is None else environ
    exporters = exporters_from_env(env)
    if not exporters:
        return NoOpTracerProvider()
    named = "OTEL_SERVICE_NAME" in env or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {SERVICE_NAME: service_name})
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune it
    return provider


def retro_span(tracer: Tracer, name: str, seconds_ago_start: float, seconds_ago_end: float, **attrs: object) -> Span:
    """A finished span for something measured on a monotonic clock, placed on the wall clock now.

    Used for waits that only become known once over (a batcher's queue), in the caller's context.
    """
    now = time.time_ns()
    span = tracer.start_span(name, start_time=now - int(seconds_ago_start * 1e9), attributes=attrs)  # type: ignore[arg-type]
    span.end(end_time=now - int(max(seconds_ago_end, 0.0) * 1e9))
    return span
