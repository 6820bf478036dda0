"""The gateway's traces: which provider, a server span per plugin request, W3C context to nodes.

Provider, first match wins: the one passed to `DistributedInference(tracer_provider=...)`; the
host's global SDK provider when the host set one up (e.g. `opentelemetry-instrument`); else one
built from the standard `OTEL_*` variables (`worker.tracing`), which exports over OTLP only when
an endpoint is set and is a no-op otherwise.

Each plugin route's requests get a server span (the host app is never patched); under a host
that already traces requests they become child spans. With the no-op provider nothing is
created, but an incoming `traceparent` is still attached, so it reaches the nodes unchanged.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)
from opentelemetry.trace.propagation import set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.tracing import tracer_provider_from_env

__all__ = ["GatewayTracing", "gateway_tracer_provider"]

_TRACEPARENT = b"traceparent"


def gateway_tracer_provider(injected: TracerProvider | None = None) -> TracerProvider:
    """The provider the plugin uses: injected, else the host's global SDK one, else from `OTEL_*`."""
    if injected is not None:
        return injected
    current = trace.get_tracer_provider()
    if not isinstance(current, NoOpTracerProvider | ProxyTracerProvider):
        return current
    return tracer_provider_from_env("distinfer-gateway")


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1"): value.decode("latin-1") for key, value in scope.get("headers", ())}


def _has_traceparent(scope: Scope) -> bool:
    return _TRACEPARENT in dict(scope.get("headers", ()))  # one C pass: every plugin request asks


def _in_span() -> bool:
    return trace.get_current_span().get_span_context().is_valid


class GatewayTracing:
    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.enabled = not isinstance(provider, NoOpTracerProvider)
        self.tracer = provider.get_tracer("distinfer.gateway")
        self._propagator = TraceContextTextMapPropagator()

    def involved(self, scope: Scope) -> bool:
        """Whether `serve` does anything for this request: it makes spans, or the caller sent a traceparent."""
        return self.enabled or _has_traceparent(scope)

    async def serve(
        self, route: object, template: str, scope: Scope, receive: Receive, send: Send, app: ASGIApp
    ) -> None:
        """Run one request of `route` under a server span (or just the caller's trace context)."""
        # A caller's traceparent counts only where no span is current: under a host that traces its
        # requests, the host's server span (itself the caller's child) is the parent, not a sibling.
        has_parent = _has_traceparent(scope) and not _in_span()
        if not self.enabled:
            if not has_parent:
                await app(scope, receive, send)
                return
            token = otel_context.attach(self._propagator.extract(_headers(scope)))
            try:
                await app(scope, receive, send)
            finally:
                otel_context.detach(token)
            return
        await self._server_span(template, scope, receive, send, app, has_parent)

    async def _server_span(
        self, template: str, scope: Scope, receive: Receive, send: Send, app: ASGIApp, has_parent: bool
    ) -> None:
        """The request's server span, with the HTTP semantic conventions' core attributes.

        Written here rather than taken from OpenTelemetry's ASGI middleware: that one decodes every
        header and builds a dozen attributes per request, which cost ~0.2 ms of CPU per request here
        (measured with `distinfer bench overhead`, target `full`).
        """
        method = scope.get("method", "HTTP")
        parent = self._propagator.extract(_headers(scope)) if has_parent else None
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes = {"http.request.method": method, "http.route": template, "url.path": scope.get("path", "")}
        with self.tracer.start_as_current_span(
            f"{method} {template}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            await app(scope, receive, send_status)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))

    def headers(self, span: Span | None, request_id: str | None) -> dict[str, str]:
        """What an attempt sends to its node: `traceparent` (and `tracestate`) of `span`, and the request id.

        With no span (tracing off), the current context's: the caller's, when a `traceparent` came in.
        """
        carrier: dict[str, str] = {"X-Request-ID": request_id} if request_id else {}
        if span is not None:
            self._propagator.inject(carrier, context=set_span_in_context(span))
        elif otel_context.get_current():  # an empty context (no caller's trace) has nothing to pass on
            self._propagator.inject(carrier)
        return carrier

    def flush(self) -> None:
        """Export what is buffered (at the end of the host's lifespan); the provider lives on."""
        flush = getattr(self.provider, "force_flush", None)
        if callable(flush):
            flush()
