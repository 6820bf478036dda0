"""The bench's OTLP/HTTP sink counts what a real SDK exporter sends it."""

from __future__ import annotations

import httpx
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from bench.servers import start_otlp_sink


def test_the_sink_counts_spans_from_the_otlp_exporter() -> None:
    sink = start_otlp_sink()
    try:
        sink.wait_ready(timeout_s=30)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{sink.url}/v1/traces")))
        tracer = provider.get_tracer("test")
        for name in ("a", "b", "c"):
            with tracer.start_as_current_span(name):
                pass
        provider.shutdown()
        stats = httpx.get(f"{sink.url}/stats", timeout=5).json()
    finally:
        sink.stop()
    assert stats == {"exports": 3, "spans": 3}
