"""What a node that forwards a sharded model's activations passes on: the request id and the trace."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_trace_id

from worker.sharding.forward import onward_headers

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_without_tracing_the_callers_trace_and_request_id_go_on_as_they_came() -> None:
    incoming = {"x-request-id": "req-7", "traceparent": CALLER, "tracestate": "v=1", "authorization": "Bearer x"}
    assert onward_headers(incoming) == {"X-Request-ID": "req-7", "traceparent": CALLER, "tracestate": "v=1"}


def test_nothing_to_pass_on_is_nothing() -> None:
    assert onward_headers({}) == {}


def test_with_a_current_span_the_next_hop_is_its_child() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("infer") as span:
        sent = onward_headers({"traceparent": CALLER})
        context = span.get_span_context()
    version, trace_id, parent_id, _ = sent["traceparent"].split("-")
    assert (version, trace_id) == ("00", format_trace_id(context.trace_id))
    assert parent_id == f"{context.span_id:016x}"  # this node's span, not the caller's
