"""The gateway's server span per plugin request: name, kind, parent, status and HTTP attributes."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode, get_current_span
from starlette.types import Receive, Scope, Send

from gateway_plugin.telemetry.tracing import GatewayTracing

ROUTE = "/api/v1/distributed/inference"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def answering(status: int) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _ignore(message: Any) -> None:
    return None


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}


@pytest.mark.parametrize(("status", "error"), [(200, False), (404, False), (503, True)])
async def test_one_server_span_per_request(status: int, error: bool) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = GatewayTracing(provider)
    headers = [(b"traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01".encode())]
    scope = {"type": "http", "method": "POST", "path": ROUTE, "headers": headers}
    await tracing.serve(object(), ROUTE, scope, _nothing, _ignore, answering(status))
    (span,) = exporter.get_finished_spans()
    assert span.name == f"POST {ROUTE}"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == CALLER_TRACE
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.attributes is not None
    assert span.attributes["http.route"] == ROUTE
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["http.response.status_code"] == status
    assert (span.status.status_code is StatusCode.ERROR) is error


async def test_an_exception_is_recorded_on_the_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await GatewayTracing(provider).serve(
            object(), ROUTE, {"type": "http", "method": "GET"}, _nothing, _ignore, failing
        )
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


@pytest.mark.parametrize("ours", [True, False], ids=["plugin tracing", "plugin tracing off"])
async def test_under_a_host_span_the_callers_traceparent_does_not_make_a_sibling(ours: bool) -> None:
    """Regression: with a traceparent, the plugin parented its span (and, with its tracing off, its
    node calls) on the remote caller, beside the host's own server span instead of under it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = GatewayTracing(provider if ours else NoOpTracerProvider())
    headers = [(b"traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01".encode())]
    scope = {"type": "http", "method": "POST", "path": ROUTE, "headers": headers}
    seen: list[Any] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(get_current_span().get_span_context())
        await answering(200)(scope, receive, send)

    host = provider.get_tracer("host")
    with host.start_as_current_span("host server span") as host_span:
        await tracing.serve(object(), ROUTE, scope, _nothing, _ignore, app)
    host_id = host_span.get_span_context().span_id
    if ours:
        (span,) = [s for s in exporter.get_finished_spans() if s.name != "host server span"]
        assert span.parent is not None
        assert span.parent.span_id == host_id
    else:
        assert seen[0].span_id == host_id  # what node calls would carry on


class _Route:
    path_format = ROUTE


def _logged_trace_id(caplog: pytest.LogCaptureFixture) -> str | None:
    (line,) = [record for record in caplog.records if record.name == "distinfer.requests"]
    trace_id: str | None = line.distinfer["trace_id"]  # type: ignore[attr-defined]
    return trace_id


@pytest.mark.parametrize(
    ("ours", "traceparent", "host_span", "expected"),
    [
        (False, False, False, None),
        (False, True, False, CALLER_TRACE),
        (False, False, True, "ab" * 16),
        (True, False, False, "ours"),
        (True, True, False, CALLER_TRACE),
    ],
    ids=["no trace", "caller's traceparent", "host's span", "our span", "our span under the caller"],
)
async def test_the_request_line_names_the_trace_the_request_ran_in(
    caplog: pytest.LogCaptureFixture, ours: bool, traceparent: bool, host_span: bool, expected: str | None
) -> None:
    """Regression guard for the hook's untraced path, which skips the tracing wrappers and reads the
    trace id after the answer: the line must still name the caller's or the host's trace."""
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
    from prometheus_client import CollectorRegistry

    from discovery.registry import NodeRegistry
    from gateway_plugin.telemetry import Telemetry

    exporter = InMemorySpanExporter()
    provider: Any = TracerProvider() if ours else NoOpTracerProvider()
    if ours:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(NodeRegistry(), api_prefix="", registry=CollectorRegistry(), tracer_provider=provider)
    headers = [(b"traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01".encode())] if traceparent else []
    scope = {"type": "http", "method": "POST", "path": ROUTE, "headers": headers}
    host = SpanContext(int("ab" * 16, 16), int("cd" * 8, 16), is_remote=False, trace_flags=TraceFlags(1))
    caplog.set_level("INFO", logger="distinfer.requests")
    if host_span:
        with trace.use_span(NonRecordingSpan(host)):
            await telemetry.route_hook(_Route(), scope, _nothing, _ignore, answering(200))
    else:
        await telemetry.route_hook(_Route(), scope, _nothing, _ignore, answering(200))
    if expected == "ours":
        (span,) = exporter.get_finished_spans()
        expected = format(span.context.trace_id, "032x")
    assert _logged_trace_id(caplog) == expected
