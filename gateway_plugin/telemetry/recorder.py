"""`GatewayTelemetry`: the dispatcher's observer, turning each call and attempt into metrics, spans and stats.

Per plugin request, the route hook (`telemetry.asgi`) opens a `RequestRecord` in a context
variable; calls and attempts fill it in (which node, how many attempts, when the first byte went
upstream and the last came back), and the hook turns it into the overhead metric and one log
line when the response is sent. Calls made outside a request (task workers) are measured the
same way, without a record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from gateway_plugin.errors import DistinferError
from gateway_plugin.telemetry.metrics import GatewayMetrics
from gateway_plugin.telemetry.stats import StatsWindow
from gateway_plugin.telemetry.tracing import GatewayTracing
from worker.errors import (
    NodeBusy,
    NodeCallError,
    NodeLacksModel,
    NodeRejected,
    NodeServerError,
    NodeTimeout,
    NodeUnreachable,
)
from worker.tracing import retro_span

__all__ = ["RECORD", "GatewayTelemetry", "RequestRecord", "after_response", "defer_bookkeeping", "error_outcome"]

log = logging.getLogger(__name__)

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
    # Bookkeeping that waits for the response to be sent, for routes that opted in (`defer_bookkeeping`);
    # None: done at once (the default, and once the response is out).
    after: list[Callable[[], None]] | None = None


RECORD: ContextVar[RequestRecord | None] = ContextVar("distinfer_request_record", default=None)


def defer_bookkeeping() -> None:
    """The current request makes one dispatch call: its bookkeeping may wait for the answer to go out.

    For single-call routes only (the v2 relay, `/inference`). A batch, parallel or pipeline request
    makes many calls over a long time, and the balancer must learn each one's success as it
    happens (a breaker that saw only the failures would trip on a healthy node).
    """
    record = RECORD.get()
    if record is not None and record.after is None and not record.calls:
        record.after = []


def after_response(work: Callable[[], None]) -> None:
    """Run `work` once the current request's response is sent if it deferred its bookkeeping; else at once.

    Metrics, stats and a success's latency report need not delay a single call's answer: the route
    hook runs this work after the last byte is handed to the server, off the caller's critical path
    (what a one-client benchmark measures) while costing the same CPU.
    """
    _after(RECORD.get(), work)


def _after(record: RequestRecord | None, work: Callable[[], None]) -> None:
    """`after_response` for the request `record` (the scopes below look it up once per call)."""
    if record is not None and record.after is not None:
        record.after.append(work)
    else:
        work()


def error_outcome(status: int) -> str:
    """A bounded outcome label for an HTTP error status."""
    if status == 404:
        return "not_found"
    if status == 429:
        return "rejected"
    if status == 499:  # the client left first (api.disconnect.ClientLeft)
        return "cancelled"
    if status == 503:
        return "unavailable"
    if status == 504:
        return "timeout"
    return "bad_request" if 400 <= status < 500 else "error"


def _attempt_outcome(exc: NodeCallError) -> str:
    if isinstance(exc, NodeBusy):
        return "busy"
    if isinstance(exc, NodeTimeout):
        return "timeout"
    if isinstance(exc, NodeUnreachable):
        return "unreachable"
    if isinstance(exc, NodeRejected | NodeLacksModel):  # the node judged the call: it is healthy
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

    def later(self, work: Callable[[], None]) -> None:
        after_response(work)

    def dispatch(self, model: str, request_id: str, strategy: str) -> _Call:
        return _Call(self, model, request_id, strategy)

    def _count_call(self, call: _Call, outcome: str, seconds: float, ended: float) -> None:
        record = call.record
        if record is not None:
            record.calls += 1
            record.request_id = call.request_id
            record.model, record.node, record.mode = call.model, call.node, call.mode
            record.attempts += call.attempts
            record.outcome = outcome
        m = self.metrics
        label = self.model_label(call.model, served=outcome == "ok")
        node = m.node_label(call.node) if call.node else ("local" if call.mode == "local" else "none")
        m.child(m.requests, label, node, outcome, call.mode).inc()
        m.child(m.inference_seconds, label, call.mode).observe(seconds)
        if call.mode == "local":
            m.child(m.fallbacks, label, "nodes_failed" if call.attempts else "no_node").inc()
        self.stats.request(
            {
                "time": ended,  # formatted when someone reads it
                "request_id": call.request_id,
                "model": label,
                "node": call.node,
                "mode": call.mode,
                "attempts": call.attempts,
                "outcome": outcome,
                "latency_ms": round(seconds * 1000, 3),
            },
            # Cut short by us or the caller, a cancelled call failed nobody: not an error (the recent
            # list still shows it as cancelled).
            ok=outcome in ("ok", "cancelled"),
            # A cancelled call (a parallel request's losers, a caller that left) was cut short: its time
            # is nobody's latency, as the node windows leave out cancelled attempts.
            seconds=None if outcome == "cancelled" else seconds,
        )

    def attempt(self, model: str, node_id: str, number: int, *, hedge: bool = False) -> _Attempt:
        return _Attempt(self, model, node_id, number, hedge)

    def _count_attempt(
        self, call: _Call | None, model: str, node_id: str, number: int, hedge: bool, outcome: str, seconds: float
    ) -> None:
        m = self.metrics
        node = m.node_label(node_id)
        m.child(m.decisions, call.strategy if call is not None else UNKNOWN, node).inc()
        if hedge:
            m.child(m.hedges, self.model_label(model)).inc()
        elif number > 1:
            m.child(m.retries, self.model_label(model)).inc()
        m.child(m.attempts, node, outcome).inc()
        if outcome == "cancelled":
            # A hedge's loser or a departed client's call: cut short by us, it says nothing of the
            # node's speed or health (the lease reports nothing for it either).
            return
        m.child(m.attempt_seconds, node).observe(seconds)
        # A node that refuses a bad request, or sheds load, is healthy: only its own failures count.
        self.stats.attempt(node_id, seconds, outcome in ("ok", "rejected", "busy"))

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
            self.metrics.flush()  # so that no reader of the registry sees counts older than this tick
            try:
                self.metrics.expire_departed()
            except Exception:  # housekeeping: the watch (and the flushes above) must go on
                log.exception("removing departed nodes' series failed")


# The two scopes below are plain context managers rather than `@contextmanager` generators: they
# bracket every call and attempt, and a generator's machinery costs more than their own work. Each is
# also what its `with` gives (`DispatchScope`, `AttemptScope`), and its counting waits for the
# response as a bound method (`after_response`): one object per call and per attempt.


class _Call:
    """Around one logical call: its context (`_CALL`), its span when tracing records, its counts."""

    __slots__ = (
        "_span",
        "_start",
        "_telemetry",
        "_token",
        "_use",
        "attempts",
        "in_flight",
        "mode",
        "model",
        "node",
        "outcome",
        "record",
        "request_id",
        "seconds",
        "strategy",
    )

    def __init__(self, telemetry: GatewayTelemetry, model: str, request_id: str, strategy: str) -> None:
        self._telemetry = telemetry
        self.model, self.request_id, self.strategy = model, request_id, strategy
        self.node: str | None = None
        self.mode = "none"
        self.attempts = 0
        self.in_flight = 0  # attempts running now: one starting while another runs is a hedge
        self.record = RECORD.get()  # the plugin request making the call, if any
        self._span: Span | None = None
        self._use: AbstractContextManager[object] | None = None

    def finished(self, node_id: str | None, mode: str, attempts: int) -> None:
        self.node, self.mode, self.attempts = node_id, mode, attempts

    def __enter__(self) -> _Call:
        telemetry = self._telemetry
        self._start = telemetry._clock()
        self._token = _CALL.set(self)
        if telemetry.tracing.enabled:  # a no-op span would still cost its context switches
            attributes = {"distinfer.model": self.model, "distinfer.strategy": self.strategy}
            self._span = telemetry._tracer.start_span("dispatch", attributes=attributes)
            self._use = trace.use_span(self._span, end_on_exit=True)
            self._use.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.outcome = "ok"
            if self._span is not None:
                self._span.set_attributes({"distinfer.node.id": self.node or "local", "distinfer.mode": self.mode})
        elif isinstance(error, DistinferError):
            self.outcome = error_outcome(error.status)
        else:
            self.outcome = "error" if isinstance(error, Exception) else "cancelled"
        try:
            if self._use is not None:
                self._use.__exit__(kind, error, tb)
        finally:
            _CALL.reset(self._token)
            self.seconds = self._telemetry._clock() - self._start
            _after(self.record, self._count)

    def _count(self) -> None:
        self._telemetry._count_call(self, self.outcome, self.seconds, time.time())


_CALL: ContextVar[_Call | None] = ContextVar("distinfer_dispatch_call", default=None)


class _Attempt:
    """Around one call to one node: the headers it carries, its span, the request's upstream timing."""

    __slots__ = (
        "_call",
        "_hedge",
        "_model",
        "_node_id",
        "_number",
        "_outcome",
        "_record",
        "_seconds",
        "_span",
        "_start",
        "_telemetry",
        "headers",
    )

    def __init__(self, telemetry: GatewayTelemetry, model: str, node_id: str, number: int, hedge: bool) -> None:
        self._telemetry = telemetry
        self._model, self._node_id, self._number, self._hedge = model, node_id, number, hedge

    def __enter__(self) -> _Attempt:
        telemetry = self._telemetry
        call = self._call = _CALL.get()
        start = self._start = telemetry._clock()
        self._span = None
        request_id = None
        if call is not None:
            self._hedge = self._hedge or call.in_flight > 0
            request_id = call.request_id
            record = call.record
        else:
            record = RECORD.get()
        self._record = record
        if record is not None and record.upstream_start is None:
            record.upstream_start = start
        if telemetry.tracing.enabled:
            attributes: dict[str, str | int | bool] = {
                "distinfer.node.id": self._node_id,
                "distinfer.attempt": self._number,
                "distinfer.hedge": self._hedge,
                "distinfer.model": self._model,
            }
            self._span = telemetry._tracer.start_span("node attempt", kind=SpanKind.CLIENT, attributes=attributes)
        # No span of ours: the caller's trace context (an incoming traceparent) still goes on to the node.
        self.headers = telemetry.tracing.headers(self._span, request_id)
        if call is not None:  # last: `__exit__`, which takes it back, runs only if this returns
            call.in_flight += 1
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        call, span = self._call, self._span
        end = self._telemetry._clock()
        if kind is None:
            outcome = "ok"
        elif isinstance(error, NodeCallError):
            outcome = _attempt_outcome(error)
        else:
            outcome = "error" if isinstance(error, Exception) else "cancelled"
        record = self._record
        if call is not None:
            call.in_flight -= 1
        if outcome == "ok" and record is not None:
            record.upstream_end = end
        if span is not None:
            span.set_attribute("distinfer.outcome", outcome)
            if outcome not in ("ok", "cancelled"):  # cancelled: we cut it short, not the node's error
                span.set_status(Status(StatusCode.ERROR, outcome))
            span.end()
        self._outcome, self._seconds = outcome, end - self._start
        _after(record, self._count)

    def _count(self) -> None:
        self._telemetry._count_attempt(
            self._call, self._model, self._node_id, self._number, self._hedge, self._outcome, self._seconds
        )
