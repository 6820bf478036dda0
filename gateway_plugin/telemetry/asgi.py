"""`RouteTelemetry`: pure ASGI around each request of a plugin route (the `ProblemRoute` hook).

It sees the request from the moment our route's ASGI handling starts to the moment the last
response byte is handed to the server, so it can time the gateway's own share of the request:

    before_upstream  route entry -> first attempt sent to a node (routing, body read, parsing,
                     validation, picking; and any time the event loop kept us waiting meanwhile)
    after_upstream   last byte back from the node -> response sent (decoding, encoding, sending)

Time before the route runs (the server parsing the request, the host's own middleware, the loop
queue before the request's task starts) is invisible from inside the app; the event-loop lag
histogram (`GatewayTelemetry.watch_event_loop`) shows the loop queueing every request suffers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway_plugin.telemetry.recorder import RECORD, GatewayTelemetry, RequestRecord
from worker.telemetry import trace_id_of

__all__ = ["RouteTelemetry"]

log = logging.getLogger("distinfer.requests")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Polled by probes and dashboards: measured, but not worth a log line each.
_QUIET = ("/health", "/health/live", "/health/ready", "/stats")


class RouteTelemetry:
    def __init__(
        self, telemetry: GatewayTelemetry, *, api_prefix: str, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._telemetry = telemetry
        self._metrics = telemetry.metrics
        self._tracing = telemetry.tracing
        self._prefix = api_prefix
        self._clock = clock
        self._templates: dict[int, tuple[str, bool]] = {}
        # Children kept here (route series are never removed, only a departed node's): the duration
        # per (route template, method, status), the two overhead phases per route, made only once a
        # request of the route called a node (a made child is an exported series, even at zero).
        self._durations: dict[tuple[str, str, int], Any] = {}
        self._overheads: dict[str, tuple[Any, Any]] = {}

    def _template(self, route: object) -> tuple[str, bool]:
        """The route's full path template (bounded label) and whether its requests are logged."""
        known = self._templates.get(id(route))
        if known is None:
            path = str(getattr(route, "path_format", "") or "/")
            # Routes of included routers keep their own path; the plugin's prefix is ours to add.
            template = path if path.startswith(self._prefix + "/") else self._prefix + path
            known = self._templates[id(route)] = (template, not template.endswith(_QUIET))
        return known

    def _duration(self, route: str, method: str, status: int) -> Any:
        key = (route, method, status)
        found = self._durations.get(key)
        if found is None:
            m = self._metrics
            found = self._durations[key] = m.child(m.http_seconds, route, method, str(status))
        return found

    def _overhead(self, route: str) -> tuple[Any, Any]:
        found = self._overheads.get(route)
        if found is None:
            m = self._metrics
            before = m.child(m.overhead_seconds, route, "before_upstream")
            found = self._overheads[route] = (before, m.child(m.overhead_seconds, route, "after_upstream"))
        return found

    async def __call__(self, route: object, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = self._clock()
        template, logged = self._template(route)
        record = RequestRecord(start, template)
        token = RECORD.set(record)
        status = 500
        sent: float | None = None

        async def send_timed(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                sent = self._clock()

        in_flight = self._metrics.child(self._metrics.http_in_flight, template)
        in_flight.inc()
        untraced = not self._tracing.involved(scope)
        try:
            if untraced:  # no span of ours and no caller's context: the context the request sees is this one
                await app(scope, receive, send_timed)
            else:

                async def traced(scope: Scope, receive: Receive, send: Send) -> None:
                    record.trace_id = trace_id_of()  # inside the server span, when there is one
                    await app(scope, receive, send)

                await self._tracing.serve(route, template, scope, receive, send_timed, traced)
        finally:
            RECORD.reset(token)
            if untraced:
                record.trace_id = trace_id_of()  # a host's span, if it traces its requests itself
            end = sent if sent is not None else self._clock()
            self._run_after(record)
            in_flight.dec()
            self._finish(record, scope, status, end, sent is not None, logged)

    @staticmethod
    def _run_after(record: RequestRecord) -> None:
        """The request's deferred bookkeeping (`recorder.after_response`), now that the answer is out."""
        pending, record.after = record.after or [], None
        for work in pending:
            try:
                work()
            except Exception:  # bookkeeping must not fail the request nor skip the rest
                log.exception("request bookkeeping failed")

    def _finish(self, record: RequestRecord, scope: Scope, status: int, end: float, sent: bool, logged: bool) -> None:
        method = scope.get("method", "GET")
        method = method if method in _METHODS else "other"  # a label: clients may send any token
        self._duration(record.route, method, status).observe(end - record.start)
        if sent and record.upstream_start is not None and record.upstream_end is not None:
            before_upstream, after_upstream = self._overhead(record.route)
            before_upstream.observe(record.upstream_start - record.start)
            after_upstream.observe(end - record.upstream_end)
        if logged and log.isEnabledFor(logging.INFO):
            fields = _log_fields(record, scope, method, status, end)
            log.info("%s %s %d", method, record.route, status, extra={"distinfer": fields})


def _log_fields(record: RequestRecord, scope: Scope, method: str, status: int, end: float) -> dict[str, Any]:
    """The request's line: ids, routing and timing only; never bodies, tensors or tokens."""
    request_id = record.request_id
    if request_id is None:
        state = scope.get("state")
        request_id = state.get("request_id") if isinstance(state, dict) else None
    return {
        "request_id": request_id,
        "trace_id": record.trace_id,
        "method": method,
        "route": record.route,
        "status": status,
        "model": record.model,
        "node": record.node,
        "attempts": record.attempts if record.calls else None,
        "mode": record.mode,
        "outcome": record.outcome,
        "latency_ms": round((end - record.start) * 1000, 3),
    }
