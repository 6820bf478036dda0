"""The dispatcher's observer: what each call and attempt turns into (metrics, spans, stats, headers)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry

from balancer import NodePool, RetryPolicy
from balancer.strategies import default_strategies
from discovery.node import ModelInfo, NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin.dispatch import Dispatcher, InferenceCall
from gateway_plugin.errors import BadRequest, NoCapacity, UnknownModel
from gateway_plugin.streaming import StreamCall, StreamRelay
from gateway_plugin.telemetry import Telemetry
from gateway_plugin.telemetry.metrics import OTHER, LabelBudget
from gateway_plugin.telemetry.recorder import RECORD, RequestRecord, after_response, defer_bookkeeping
from worker.config import TensorSpec
from worker.errors import NodeBusy, NodeRejected, NodeServerError
from worker.protocol import DecodedResponse, Tensor

SPEC = (TensorSpec(name="x", datatype="FP32", shape=(-1, 1)),)
INFO = ModelInfo("m", "1", "onnx", SPEC, SPEC)
INPUT = [Tensor.of("x", np.zeros((1, 1), np.float32))]


class RecordingClient:
    """Answers or fails per node URL, and keeps the headers each call carried."""

    def __init__(self) -> None:
        self.error: dict[str, Exception] = {}
        self.fail_first: Exception | None = None  # raised by whichever node is called first
        self.headers: list[dict[str, str]] = []
        self.urls: list[str] = []

    async def infer(self, url: str, model: str, inputs: Any, *, headers: Any = None, **_: Any) -> DecodedResponse:
        self.headers.append(dict(headers or {}))
        self.urls.append(url)
        await asyncio.sleep(0)
        if self.fail_first is not None and len(self.urls) == 1:
            raise self.fail_first
        if url in self.error:
            raise self.error[url]
        return DecodedResponse(model, "1", None, {}, [Tensor.of("x", np.ones((1, 1), np.float32))])


def _setup(nodes: int = 2) -> tuple[Telemetry, Dispatcher, RecordingClient, list[str], InMemorySpanExporter]:
    registry = NodeRegistry()
    pool = NodePool(registry, default_strategies(), default_strategy="round_robin", rng=random.Random(0))
    urls = [f"http://n{i}:1" for i in range(nodes)]
    registry.reset("static", [NodeSpec(url, node_id=f"n{i}") for i, url in enumerate(urls)])
    for url in urls:
        registry.update(url, status=NodeStatus.ONLINE, models=MappingProxyType({"m": INFO}))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(
        registry, api_prefix="/api", registry=CollectorRegistry(), tracer_provider=provider, known_model=pool.knows
    )
    client = RecordingClient()
    dispatcher = Dispatcher(
        pool,
        client,
        retry=RetryPolicy(max_attempts=2),
        observer=telemetry.observer,  # type: ignore[arg-type]
    )
    return telemetry, dispatcher, client, urls, exporter


def _value(telemetry: Telemetry, name: str, **labels: str) -> float:
    return telemetry.registry.get_sample_value(name, labels) or 0.0


def _call(model: str = "m") -> InferenceCall:
    return InferenceCall(model=model, inputs=INPUT, request_id="req-1", timeout_s=2.0)


async def _infer_in_request(dispatcher: Dispatcher, *, calls: int = 1, deferred: bool = False) -> RequestRecord:
    """Calls made as a plugin request would make them (under its record); the record after them.

    `deferred`: the route opted in to bookkeeping after its answer, as the single-call routes do.
    """
    record = RequestRecord(start=0.0, route="/api/inference")
    token = RECORD.set(record)
    try:
        if deferred:
            defer_bookkeeping()
        for _ in range(calls):
            await dispatcher.infer(_call())
    finally:
        RECORD.reset(token)
    return record


async def test_a_retried_call_counts_attempts_retries_and_nests_spans() -> None:
    telemetry, dispatcher, client, urls, exporter = _setup()
    client.fail_first = NodeServerError("boom", node_url="first", status=500)
    outcome = await dispatcher.infer(_call())
    failed, served = (f"n{urls.index(url)}" for url in client.urls)
    assert (outcome.node_id, outcome.attempts) == (served, 2)
    assert _value(
        telemetry, "distinfer_gateway_requests_total", model="m", node=served, outcome="ok", mode="distributed"
    )
    assert _value(telemetry, "distinfer_gateway_attempts_total", node=failed, outcome="server_error") == 1
    assert _value(telemetry, "distinfer_gateway_attempts_total", node=served, outcome="ok") == 1
    assert _value(telemetry, "distinfer_gateway_retries_total", model="m") == 1
    assert _value(telemetry, "distinfer_gateway_hedges_total", model="m") == 0
    assert _value(telemetry, "distinfer_gateway_balancer_decisions_total", strategy="round_robin", node=served) == 1

    spans = exporter.get_finished_spans()
    (dispatch,) = [s for s in spans if s.name == "dispatch"]
    attempts = sorted((s for s in spans if s.name == "node attempt"), key=lambda s: s.attributes["distinfer.attempt"])  # type: ignore[index]
    assert [s.attributes["distinfer.outcome"] for s in attempts] == ["server_error", "ok"]  # type: ignore[index]
    assert all(s.parent is not None and s.parent.span_id == dispatch.context.span_id for s in attempts)
    # Each attempt carried its own span as the node's parent, and the request id.
    sent = [h["traceparent"].split("-")[2] for h in client.headers]
    assert sent == [format(s.context.span_id, "016x") for s in attempts]
    assert all(h["X-Request-ID"] == "req-1" for h in client.headers)

    window = telemetry.stats.node(failed)
    assert (window.samples, window.error_rate) == (1, 1.0)
    assert telemetry.stats.recent()[0]["attempts"] == 2


async def test_failures_are_labelled_by_outcome_and_made_up_models_stay_unknown() -> None:
    telemetry, dispatcher, client, urls, _ = _setup()
    for url in urls:
        client.error[url] = NodeServerError("down", node_url=url, status=503)
    with pytest.raises(NoCapacity):
        await dispatcher.infer(_call())
    assert _value(
        telemetry, "distinfer_gateway_requests_total", model="m", node="none", outcome="unavailable", mode="none"
    )
    with pytest.raises(UnknownModel):
        await dispatcher.infer(_call("invented-model-42"))
    text = telemetry.render_metrics()[0].decode()
    assert "invented-model-42" not in text
    assert _value(
        telemetry, "distinfer_gateway_requests_total", model="unknown", node="none", outcome="not_found", mode="none"
    )
    assert telemetry.stats.errors_total == 2


async def test_a_node_refusing_a_bad_request_is_not_counted_against_its_health() -> None:
    telemetry, dispatcher, client, urls, _ = _setup()
    client.fail_first = NodeRejected("bad tensor", node_url="first", status=400)
    with pytest.raises(BadRequest, match="bad tensor"):
        await dispatcher.infer(_call())
    node = f"n{urls.index(client.urls[0])}"
    assert _value(telemetry, "distinfer_gateway_attempts_total", node=node, outcome="rejected") == 1
    bad = {"model": "m", "node": "none", "outcome": "bad_request", "mode": "none"}
    assert _value(telemetry, "distinfer_gateway_requests_total", **bad) == 1
    assert telemetry.stats.node(node).error_rate == 0.0


async def test_overlapping_attempts_of_one_call_are_hedges() -> None:
    telemetry, *_ = _setup()
    observer = telemetry.observer
    with observer.dispatch("m", "r", "round_robin") as call:
        with observer.attempt("m", "n0", 1), observer.attempt("m", "n1", 2):
            pass
        call.finished("n0", "distributed", 2)
    assert _value(telemetry, "distinfer_gateway_hedges_total", model="m") == 1
    assert _value(telemetry, "distinfer_gateway_retries_total", model="m") == 0


async def test_a_hedges_cancelled_loser_is_not_held_against_its_node() -> None:
    """Regression: the attempt a hedge race cancels counted as a failure in /stats (a healthy node
    that lost every race showed a 100 % error rate), its cut-short time went into the latency
    window and histogram, and its span was marked as an error."""
    telemetry, _, _, _, exporter = _setup()
    observer = telemetry.observer

    async def attempt(node: str, delay_s: float) -> None:
        with observer.attempt("m", node, 1):
            await asyncio.sleep(delay_s)

    with observer.dispatch("m", "r", "round_robin") as call:
        slow = asyncio.create_task(attempt("n0", 5.0))
        await asyncio.sleep(0.01)
        await attempt("n1", 0.0)  # the hedge answers first
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        call.finished("n1", "distributed", 2)
    assert _value(telemetry, "distinfer_gateway_attempts_total", node="n0", outcome="cancelled") == 1
    assert _value(telemetry, "distinfer_gateway_attempt_duration_seconds_count", node="n0") in (None, 0)
    window = telemetry.stats.node("n0")
    assert (window.samples, window.error_rate) == (0, None)  # nothing known of n0: it never finished one
    spans = exporter.get_finished_spans()
    cancelled = [span for span in spans if (span.attributes or {}).get("distinfer.outcome") == "cancelled"]
    assert len(cancelled) == 1
    assert cancelled[0].status.status_code is StatusCode.UNSET


async def test_the_cluster_latency_window_has_every_finished_call_and_no_cancelled_one() -> None:
    """Every call `requests_total` counts is a latency sample (a failure, a local answer), but a
    cancelled one: it was cut short. Regression (review): nothing tested failures or cancels there."""
    telemetry, dispatcher, client, urls, _ = _setup()
    await dispatcher.infer(_call())  # served
    client.error = {url: NodeRejected("bad input", node_url=url, status=400) for url in urls}
    with pytest.raises(BadRequest):
        await dispatcher.infer(_call())  # a failure: the caller waited for it too
    with telemetry.observer.dispatch("m", "r-local", "round_robin") as local:
        local.finished(None, "local", 0)
    with contextlib.suppress(asyncio.CancelledError), telemetry.observer.dispatch("m", "r-gone", "round_robin"):
        raise asyncio.CancelledError  # the caller left
    stats = telemetry.stats
    # Regression: the cancelled call was counted as an error (a parallel request's quorum losers
    # made the error rate of a healthy cluster climb).
    assert (stats.requests_total, stats.errors_total) == (4, 1)
    assert stats.calls().samples == 3
    assert stats.recent()[0]["outcome"] == "cancelled"


class StreamingClient:
    """`generate_stream` on no network: two tokens and the end, and the headers each stream carried."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    @contextlib.asynccontextmanager
    async def generate_stream(
        self, url: str, model: str, payload: Any, *, headers: Any = None, **_: Any
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        self.headers.append(dict(headers or {}))

        async def events() -> AsyncIterator[dict[str, Any]]:
            for index in range(2):
                yield {"model_name": model, "text_output": "a", "index": index}
            yield {"model_name": model, "text_output": "", "finish_reason": "length", "tokens": 2}

        yield events()


async def test_a_stream_is_observed_like_a_call_and_carries_the_trace_context() -> None:
    """Regression: streams went around the observer: no traceparent reached the node, no attempt span,
    nothing in requests_total, attempts_total or /stats."""
    telemetry, dispatcher, _, _, exporter = _setup()
    client = StreamingClient()
    relay = StreamRelay(dispatcher._pool, client, max_attempts=2, observer=telemetry.observer)  # type: ignore[arg-type]
    caller = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    token = otel_context.attach(TraceContextTextMapPropagator().extract(caller))
    try:
        stream = await relay.open(StreamCall("m", "ab", {"max_tokens": 2}, "req-s", 5.0))
    finally:
        otel_context.detach(token)
    items = [item async for item in stream.items()]
    await stream.aclose()
    assert len(items) == 3
    [sent] = client.headers
    assert sent["X-Request-ID"] == "req-s"
    assert sent["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"  # the caller's trace
    node = stream.node_id or ""
    ok = {"model": "m", "node": node, "outcome": "ok", "mode": "distributed"}
    assert _value(telemetry, "distinfer_gateway_requests_total", **ok) == 1
    assert _value(telemetry, "distinfer_gateway_attempts_total", node=node, outcome="ok") == 1
    assert telemetry.stats.node(node).samples == 1
    assert "node attempt" in [span.name for span in exporter.get_finished_spans()]


def test_a_busy_node_is_counted_as_busy_not_as_failing() -> None:
    telemetry, *_ = _setup()
    with pytest.raises(NodeBusy), telemetry.observer.attempt("m", "n0", 1):
        raise NodeBusy("429 queue full", node_url="http://n0:1", status=429)
    assert _value(telemetry, "distinfer_gateway_attempts_total", node="n0", outcome="busy") == 1
    assert telemetry.stats.node("n0").error_rate == 0.0


async def test_the_request_record_learns_upstream_timing_and_routing() -> None:
    _, dispatcher, client, urls, _ = _setup()
    record = await _infer_in_request(dispatcher)
    assert record.upstream_start is not None
    assert record.upstream_end is not None
    assert record.upstream_end >= record.upstream_start
    assert (record.model, record.node, record.mode, record.attempts, record.outcome) == (
        "m",
        f"n{urls.index(client.urls[0])}",
        "distributed",
        1,
        "ok",
    )


def test_ejections_and_live_node_state_follow_the_registry() -> None:
    telemetry, *_ = _setup()
    registry = telemetry.cluster._registry
    registry.update("http://n0:1", status=NodeStatus.OFFLINE, last_error="probe failed")
    registry.update("http://n0:1", status=NodeStatus.OFFLINE, last_error="still")
    assert _value(telemetry, "distinfer_gateway_node_ejections_total", node="n0") == 1
    assert _value(telemetry, "distinfer_gateway_node_up", node="n0") == 0
    assert _value(telemetry, "distinfer_gateway_node_up", node="n1") == 1
    states = {s: _value(telemetry, "distinfer_gateway_node_status", node="n0", state=s) for s in NodeStatus}
    assert states == {"online": 0, "busy": 0, "offline": 1, "error": 0}
    assert _value(telemetry, "distinfer_gateway_node_status", node="n1", state="online") == 1
    assert _value(telemetry, "distinfer_gateway_queue_depth") == 0
    telemetry.queue_depth = lambda: 7
    assert _value(telemetry, "distinfer_gateway_queue_depth") == 7


def test_label_budget_folds_newcomers_past_the_limit_into_other() -> None:
    budget = LabelBudget(2)
    assert [budget("a"), budget("b"), budget("c"), budget("a")] == ["a", "b", OTHER, "a"]


def test_a_task_queue_wait_is_a_histogram_sample_and_a_span_of_that_length() -> None:
    telemetry, *_, exporter = _setup()
    telemetry.observer.queued("high", 0.25)
    assert _value(telemetry, "distinfer_gateway_queue_wait_seconds_count", priority="high") == 1
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "queue wait"]
    assert span.end_time is not None
    assert span.start_time is not None
    assert abs((span.end_time - span.start_time) / 1e9 - 0.25) < 0.01


async def test_with_tracing_off_the_callers_traceparent_still_reaches_the_node() -> None:
    """No provider records: no span is made, yet the caller's trace context goes on unchanged."""
    registry = NodeRegistry()
    pool = NodePool(registry, default_strategies(), default_strategy="round_robin", rng=random.Random(0))
    registry.reset("static", [NodeSpec("http://n0:1", node_id="n0")])
    registry.update("http://n0:1", status=NodeStatus.ONLINE, models=MappingProxyType({"m": INFO}))
    telemetry = Telemetry(
        registry, api_prefix="/api", registry=CollectorRegistry(), tracer_provider=NoOpTracerProvider()
    )
    assert not telemetry.tracing.enabled
    client = RecordingClient()
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=1), observer=telemetry.observer)  # type: ignore[arg-type]
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    token = otel_context.attach(TraceContextTextMapPropagator().extract({"traceparent": incoming}))
    try:
        await dispatcher.infer(_call())
    finally:
        otel_context.detach(token)
    await dispatcher.infer(_call())  # and without one, none is made up
    assert client.headers[0] == {"X-Request-ID": "req-1", "traceparent": incoming}
    assert client.headers[1] == {"X-Request-ID": "req-1"}
    assert _value(telemetry, "distinfer_gateway_attempts_total", node="n0", outcome="ok") == 2


async def test_bookkeeping_waits_until_the_response_is_sent_and_then_runs() -> None:
    """Metrics and stats of a request's calls are counted after its last byte, off the caller's path."""
    telemetry, dispatcher, *_ = _setup()
    seen_at_send: list[tuple[float, float, int]] = []

    def counted() -> tuple[float, float, int]:
        nodes = ("n0", "n1")
        ok = {"model": "m", "outcome": "ok", "mode": "distributed"}
        calls = sum(_value(telemetry, "distinfer_gateway_requests_total", node=node, **ok) for node in nodes)
        attempts = sum(_value(telemetry, "distinfer_gateway_attempts_total", node=node, outcome="ok") for node in nodes)
        return calls, attempts, len(telemetry.stats.recent())

    async def app(scope: Any, receive: Any, send: Any) -> None:
        defer_bookkeeping()  # as the relay and /inference do
        await dispatcher.infer(_call())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            seen_at_send.append(counted())

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    route = type("Route", (), {"path_format": "/api/inference"})()
    scope = {"type": "http", "method": "POST", "path": "/api/inference", "headers": []}
    await telemetry.route_hook(route, scope, receive, send, app)
    assert seen_at_send == [(0.0, 0.0, 0)]
    assert counted() == (1.0, 1.0, 1)


async def test_failing_bookkeeping_is_logged_and_the_rest_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    telemetry, *_ = _setup()
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("bookkeeping bug")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        defer_bookkeeping()
        after_response(broken)
        after_response(lambda: ran.append("second"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def ignore(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    route = type("Route", (), {"path_format": "/api/x"})()
    await telemetry.route_hook(route, {"type": "http", "method": "GET", "headers": []}, receive, ignore, app)
    assert ran == ["second"]
    assert "request bookkeeping failed" in caplog.text
    after_response(lambda: ran.append("outside a request: at once"))
    assert ran[-1] == "outside a request: at once"


async def test_a_success_reaches_the_balancer_after_the_response_and_at_once_outside_a_request() -> None:
    _, dispatcher, client, urls, _ = _setup(nodes=1)
    pool = dispatcher._pool
    record = await _infer_in_request(dispatcher, deferred=True)
    assert pool.latency_ewma_s(urls[0]) is None  # not yet: the answer goes out first
    for work in record.after or []:
        work()
    learned = pool.latency_ewma_s(urls[0])
    assert learned is not None
    client.error.clear()
    await dispatcher.infer(_call())  # no request around it (a task worker): reported at once
    assert pool.latency_ewma_s(urls[0]) != learned


async def test_a_request_that_did_not_opt_in_reports_each_success_at_once() -> None:
    """A batch makes many calls over a long time: the balancer must learn each success as it happens."""
    _, dispatcher, _, urls, _ = _setup(nodes=1)
    record = await _infer_in_request(dispatcher, calls=3)
    assert record.after is None
    window = dispatcher._pool.latency_ewma_s(urls[0])
    assert window is not None  # learned during the request, not after it


async def test_opting_in_after_a_call_was_made_changes_nothing() -> None:
    _, dispatcher, *_ = _setup(nodes=1)
    record = RequestRecord(start=0.0, route="/api/batch")
    token = RECORD.set(record)
    try:
        await dispatcher.infer(_call())
        defer_bookkeeping()  # too late: a call already counted at once
        await dispatcher.infer(_call())
    finally:
        RECORD.reset(token)
    assert record.after is None


async def test_an_attempt_that_fails_to_start_is_not_left_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: an attempt scope counted itself in flight before building its headers; had that raised,
    nothing took it back, and every later attempt of the call was labelled a hedge."""
    telemetry, *_ = _setup()
    observer = telemetry.observer
    calls = iter([RuntimeError("headers failed")])

    def headers(span: Any, request_id: str | None) -> dict[str, str]:
        error = next(calls, None)
        if error is not None:
            raise error
        return {}

    monkeypatch.setattr(telemetry.tracing, "headers", headers)
    with observer.dispatch("m", "r", "round_robin") as call:
        with pytest.raises(RuntimeError, match="headers failed"), observer.attempt("m", "n0", 1):
            pass
        assert call.in_flight == 0  # type: ignore[attr-defined]
        with observer.attempt("m", "n0", 2) as attempt:
            assert attempt._hedge is False  # type: ignore[attr-defined]


async def test_overhead_series_exist_only_for_routes_that_called_a_node() -> None:
    """Review: the overhead children were made with the route's duration, so `/health` exported empty ones."""
    telemetry, dispatcher, *_ = _setup(nodes=1)

    async def health(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def inference(scope: Any, receive: Any, send: Any) -> None:
        await dispatcher.infer(_call())
        await health(scope, receive, send)

    async def ignore(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    for path, app in (("/health", health), ("/inference", inference)):
        route = type("Route", (), {"path_format": path})()
        await telemetry.route_hook(route, {"type": "http", "method": "GET", "headers": []}, receive, ignore, app)
    registry = telemetry.metrics.registry
    count = "distinfer_gateway_overhead_seconds_count"
    assert registry.get_sample_value(count, {"route": "/api/inference", "phase": "before_upstream"}) == 1.0
    assert registry.get_sample_value(count, {"route": "/api/health", "phase": "before_upstream"}) is None
    assert registry.get_sample_value(count, {"route": "/api/health", "phase": "after_upstream"}) is None
