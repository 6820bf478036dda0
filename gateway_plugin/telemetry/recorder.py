"""`GatewayTelemetry`: the dispatcher's observer, turning each call and attempt into metrics, spans and stats.

Per plugin request, the route hook (`telemetry.asgi`) opens a `RequestRecord` in a context
variable; calls and attempts fill it in (which node, how many attempts, when the first byte went
upstream and the last came back), and the hook turns it into the overhead metric and one log
line when the response is sent. Calls made outside a request (task workers) are measured the
same way, without a record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway_plugin.errors import DistinferError
from gateway_plugin.telemetry.metrics import GatewayMetrics
from gateway_plugin.telemetry.stats import StatsWindow
from gateway_plugin.telemetry.tracing import GatewayTracing
from worker.errors import NodeCallError, NodeRejected, NodeServerError, NodeTimeout, NodeUnreachable
from worker.tracing import retro_span

__all__ = ["RECORD", "GatewayTelemetry", "RequestRecord", "error_outcome"]

UNKNOWN = "unknown"


@dataclass(slots=True)
class RequestRecord:
    """What one plugin request did, filled in as it goes; read once the response is sent."""

    start: float
    route: str
    request_id: str | None = None
    trace_id: str | None = None
    model: str | None = None
    node: str | None = None
    mode: str | None = None
    attempts: int = 0
    outcome: str | None = None
    calls: int = 0
    upstream_start: float | None = None
    upstream_end: float | None = None


RECORD: ContextVar[RequestRecord | None] = ContextVar("distinfer_request_record", default=None)


@dataclass(slots=True)
class _Call:
    model: str
    label: str
    request_id: str
    strategy: str
    node: str | None = None
    mode: str = "none"
    attempts: int = 0
    in_flight: int = 0  # attempts running now: one starting while another runs is a hedge

    def finished(self, node_id: str | None, mode: str, attempts: int) -> None:
        self.node, self.mode, self.attempts = node_id, mode, attempts


@dataclass(frozen=True, slots=True)
class _Attempt:
    headers: Mapping[str, str] = field(default_factory=dict)


_CALL: ContextVar[_Call | None] = ContextVar("distinfer_dispatch_call", default=None)


def error_outcome(status: int) -> str:
    """A bounded outcome label for an HTTP error status."""
    if status == 404:
        return "not_found"
    if status == 429:
        return "rejected"
    if status == 503:
        return "unavailable"
    if status == 504:
        return "timeout"
    return "bad_request" if 400 <= status < 500 else "error"


def _attempt_outcome(exc: NodeCallError) -> str:
    if isinstance(exc, NodeTimeout):
        return "timeout"
    if isinstance(exc, NodeUnreachable):
        return "unreachable"
    if isinstance(exc, NodeRejected):
        return "rejected"
    return "server_error" if isinstance(exc, NodeServerError) else "error"


class GatewayTelemetry:
    def __init__(
        self,
        metrics: GatewayMetrics,
        tracing: GatewayTracing,
        stats: StatsWindow | None = None,
        *,
        known_model: Callable[[str], bool] = lambda _: False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.stats = stats or StatsWindow()
        self._known_model = known_model
        self._tracer = tracing.tracer
        self._clock = clock

    def model_label(self, model: str, *, served: bool = False) -> str:
        """Models that exist get their own label (within budget); anything a caller made up is `unknown`."""
        return self.metrics.model_label(model) if served or self._known_model(model) else UNKNOWN

    # ------------------------------------------------------------------ DispatchObserver

    @contextmanager
    def dispatch(self, model: str, request_id: str, strategy: str) -> Iterator[_Call]:
        start = self._clock()
        call = _Call(model, self.model_label(model), request_id, strategy)
        token = _CALL.set(call)
        outcome = "cancelled"
        # Without a provider that records, no span at all: a no-op span still costs its context switches.
        span = (
            self._tracer.start_span("dispatch", attributes={"distinfer.model": model, "distinfer.strategy": strategy})
            if self.tracing.enabled
            else None
        )
        try:
            with trace.use_span(span, end_on_exit=True) if span is not None else nullcontext():
                try:
                    yield call
                except DistinferError as exc:
                    outcome = error_outcome(exc.status)
                    raise
                except Exception:
                    outcome = "error"
                    raise
                outcome = "ok"
                if span is not None:
                    span.set_attributes({"distinfer.node.id": call.node or "local", "distinfer.mode": call.mode})
        finally:
            _CALL.reset(token)
            self._finish_call(call, outcome, self._clock() - start)

    def _finish_call(self, call: _Call, outcome: str, seconds: float) -> None:
        m = self.metrics
        label = self.model_label(call.model, served=True) if outcome == "ok" else call.label
        node = m.node_label(call.node) if call.node else ("local" if call.mode == "local" else "none")
        m.child(m.requests, label, node, outcome, call.mode).inc()
        m.child(m.inference_seconds, label, call.mode).observe(seconds)
        if call.mode == "local":
            m.child(m.fallbacks, label, "nodes_failed" if call.attempts else "no_node").inc()
        record = RECORD.get()
        if record is not None:
            record.calls += 1
            record.request_id = call.request_id
            record.model, record.node, record.mode = call.model, call.node, call.mode
            record.attempts += call.attempts
            record.outcome = outcome
        self.stats.request(
            {
                "time": time.time(),  # formatted when someone reads it
                "request_id": call.request_id,
                "model": label,
                "node": call.node,
                "mode": call.mode,
                "attempts": call.attempts,
                "outcome": outcome,
                "latency_ms": round(seconds * 1000, 3),
            },
            ok=outcome == "ok",
        )

    @contextmanager
    def attempt(self, model: str, node_id: str, number: int, *, hedge: bool = False) -> Iterator[_Attempt]:
        m = self.metrics
        call = _CALL.get()
        node = m.node_label(node_id)
        label = call.label if call is not None else self.model_label(model)
        hedge = hedge or (call is not None and call.in_flight > 0)
        m.child(m.decisions, call.strategy if call is not None else UNKNOWN, node).inc()
        if hedge:
            m.child(m.hedges, label).inc()
        elif number > 1:
            m.child(m.retries, label).inc()
        record = RECORD.get()
        start = self._clock()
        if record is not None and record.upstream_start is None:
            record.upstream_start = start
        attributes: dict[str, str | int | bool] = {
            "distinfer.node.id": node_id,
            "distinfer.attempt": number,
            "distinfer.hedge": hedge,
            "distinfer.model": model,
        }
        span = (
            self._tracer.start_span("node attempt", kind=SpanKind.CLIENT, attributes=attributes)
            if self.tracing.enabled
            else None
        )
        outcome = "cancelled"
        if call is not None:
            call.in_flight += 1
        try:
            # No span of ours: the caller's trace context (an incoming traceparent) still goes on to the node.
            yield _Attempt(self.tracing.headers(span, call.request_id if call is not None else None))
            outcome = "ok"
        except NodeCallError as exc:
            outcome = _attempt_outcome(exc)
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            end = self._clock()
            if call is not None:
                call.in_flight -= 1
            if outcome == "ok" and record is not None:
                record.upstream_end = end
            if span is not None:
                span.set_attribute("distinfer.outcome", outcome)
                if outcome != "ok":
                    span.set_status(Status(StatusCode.ERROR, outcome))
                span.end()
            m.child(m.attempts, node, outcome).inc()
            m.child(m.attempt_seconds, node).observe(end - start)
            # A node that refuses a bad request is healthy: only its own failures count against it.
            self.stats.attempt(node_id, end - start, outcome in ("ok", "rejected"))

    def queued(self, priority: str, waited_s: float) -> None:
        """A task waited `waited_s` in the queue; call it where the task starts, in its trace context."""
        self.metrics.child(self.metrics.queue_wait_seconds, priority).observe(waited_s)
        retro_span(self._tracer, "queue wait", waited_s, 0.0, **{"distinfer.priority": priority})

    # ------------------------------------------------------------------ background

    async def watch_event_loop(self, interval_s: float = 0.25) -> None:
        """Measure how late timers fire: every request waits through the same queue before it runs."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.metrics.loop_lag_seconds.observe(max(loop.time() - due, 0.0))
