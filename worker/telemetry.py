"""What a node tells about itself: Prometheus metrics, spans that continue the caller's trace, request logs.

Metrics (all on one injected `CollectorRegistry`, model labels limited to the repository's models)::

    distinfer_node_requests_total{model,outcome}          outcome: ok | client_error | server_error | cancelled
    distinfer_node_request_duration_seconds{model}        whole infer request inside the node
    distinfer_node_inference_duration_seconds{model}      one runtime call (a batch when batching)
    distinfer_node_batch_rows{model}                      rows per runtime call
    distinfer_node_queue_wait_seconds{model}              time in the dynamic batcher's queue
    distinfer_node_queue_depth{model}                     requests waiting in the batcher now
    distinfer_node_requests_in_flight                     infer requests being served now

`exposition()` renders them, summed over processes when `PROMETHEUS_MULTIPROC_DIR` is set.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, Span, TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.errors import WorkerError
from worker.tracing import retro_span, tracer_provider_from_env

__all__ = [
    "LATENCY_BUCKETS",
    "ROW_BUCKETS",
    "Exposition",
    "ModelTelemetry",
    "NodeTelemetry",
    "trace_id_of",
]

log = logging.getLogger("distinfer.node.requests")

# Seconds: from sub-millisecond CPU inference to multi-second generative calls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
UNKNOWN = "unknown"


def trace_id_of(span: Span | None = None) -> str | None:
    """The current (or given) span's trace id as 32 hex digits; None outside any trace."""
    context = (span or trace.get_current_span()).get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def _caller_trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header; None when absent, malformed or all zeros."""
    match = _TRACEPARENT.fullmatch(traceparent.strip()) if traceparent else None
    if match is None or match.group(1) == "0" * 32:
        return None
    return match.group(1)


class Exposition:
    """Renders a registry for `/metrics`; with `PROMETHEUS_MULTIPROC_DIR`, every process's values summed.

    In multiprocess mode the per-process files hold counters, histograms and gauges; collectors that
    read live state at scrape time (`live`) describe the process that answers the scrape.
    """

    def __init__(
        self, registry: CollectorRegistry, live: Iterable[Collector] = (), *, multiprocess_dir: str | None
    ) -> None:
        self._registry = registry
        self._live = list(live)
        self._dir = multiprocess_dir

    @classmethod
    def for_environment(cls, registry: CollectorRegistry, live: Iterable[Collector] = ()) -> Exposition:
        return cls(registry, live, multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None)

    @property
    def multiprocess(self) -> bool:
        return self._dir is not None

    def render(self) -> tuple[bytes, str]:
        if self._dir is None:
            return generate_latest(self._registry), CONTENT_TYPE_LATEST
        # A fresh registry per scrape, as prometheus_client's multiprocess docs prescribe.
        scrape = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(scrape, path=self._dir)  # type: ignore[no-untyped-call]
        for collector in self._live:
            scrape.register(collector)
        return generate_latest(scrape), CONTENT_TYPE_LATEST


class _QueueDepth(Collector):
    def __init__(self, depths: Callable[[], Mapping[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "distinfer_node_queue_depth", "Requests waiting in the dynamic batcher's queue", labels=["model"]
        )
        for model, depth in sorted(self._depths().items()):
            family.add_metric([model], depth)
        yield family


class ModelTelemetry:
    """One model's metric children, bound once; the batcher and the engine report through it."""

    def __init__(self, owner: NodeTelemetry, model: str) -> None:
        self._tracer = owner.tracer
        self._runtime = owner.inference_seconds.labels(model)
        self._rows = owner.batch_rows.labels(model)
        self._queued = owner.queue_wait_seconds.labels(model)

    def runtime_call(self, rows: int, seconds: float) -> None:
        self._runtime.observe(seconds)
        self._rows.observe(rows)

    def queued(self, arrived: float, started: float) -> None:
        """Called in the waiting request's own context once its batch started (monotonic times)."""
        waited = max(started - arrived, 0.0)
        self._queued.observe(waited)
        now = time.monotonic()
        retro_span(self._tracer, "queue wait", now - arrived, now - started)


class NodeTelemetry:
    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        node_id: str = "",
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._provider = tracer_provider or NoOpTracerProvider()
        self.tracer = self._provider.get_tracer("distinfer.node")
        self.node_id = node_id
        self._models: frozenset[str] = frozenset()
        self._depths: Callable[[], Mapping[str, int]] = dict
        r = self.registry
        self.requests = Counter(
            "distinfer_node_requests", "Inference requests the node answered", ["model", "outcome"], registry=r
        )
        self.request_seconds = Histogram(
            "distinfer_node_request_duration_seconds",
            "Infer requests from body read to response, inside the node",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "distinfer_node_inference_duration_seconds",
            "One runtime call (a whole batch when batching)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "distinfer_node_batch_rows", "Rows per runtime call", ["model"], buckets=ROW_BUCKETS, registry=r
        )
        self.queue_wait_seconds = Histogram(
            "distinfer_node_queue_wait_seconds",
            "Time a request waited in the dynamic batcher's queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "distinfer_node_requests_in_flight", "Infer requests being served", registry=r, multiprocess_mode="livesum"
        )
        queue_depth = _QueueDepth(lambda: self._depths())
        r.register(queue_depth)
        self.exposition = Exposition.for_environment(r, [queue_depth])

    @classmethod
    def from_env(cls, node_id: str) -> NodeTelemetry:
        """For `distinfer node`: spans as the standard `OTEL_*` variables say (none without an exporter)."""
        return cls(tracer_provider=tracer_provider_from_env("distinfer-node"), node_id=node_id)

    def instrument(self, app: FastAPI) -> None:
        """Server spans from OpenTelemetry's FastAPI instrumentation, continuing an incoming `traceparent`.

        Only when spans go somewhere: with the no-op provider the node adds nothing per request.
        """
        if isinstance(self._provider, NoOpTracerProvider):
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.metrics import NoOpMeterProvider

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self._provider,
            meter_provider=NoOpMeterProvider(),  # metrics are Prometheus's job here
            # Anchored to the path (the instrumentation searches the whole URL): "/metrics" alone
            # also left models named metrics* untraced, /v2/models/metrics_v2/infer among them.
            excluded_urls=r"^[a-z]+://[^/]+/v2/health/,^[a-z]+://[^/]+/metrics$",
            exclude_spans=["receive", "send"],
        )

    def serve(self, models: Iterable[str], depths: Callable[[], Mapping[str, int]] = dict) -> None:
        """The models that get their own label (others count as `unknown`) and the batch queue depths."""
        self._models = frozenset(models)
        self._depths = depths

    def model(self, name: str) -> ModelTelemetry:
        return ModelTelemetry(self, self.label(name))

    def label(self, model: str) -> str:
        return model if model in self._models else UNKNOWN

    @contextmanager
    def request(self, model: str, request_id: str | None, traceparent: str | None = None) -> Iterator[Span]:
        """Around one infer request: in-flight, outcome, duration, a span, and one log line.

        The line's `trace_id` is the span's; with tracing off, the caller's (`traceparent`), so a
        gateway's and its nodes' lines still join on it."""
        label = self.label(model)
        start = time.perf_counter()
        outcome, status = "cancelled", 499
        span: Span | None = None
        self.in_flight.inc()
        try:
            with self.tracer.start_as_current_span("infer", attributes={"distinfer.model": label}) as span:
                try:
                    yield span
                except WorkerError as exc:
                    outcome, status = ("client_error" if exc.status < 500 else "server_error"), exc.status
                    raise
                except Exception:
                    outcome, status = "server_error", 500
                    raise
                outcome, status = "ok", 200
        finally:
            seconds = time.perf_counter() - start
            self.in_flight.dec()
            self.requests.labels(label, outcome).inc()
            self.request_seconds.labels(label).observe(seconds)
            if log.isEnabledFor(logging.INFO):
                fields = {
                    "request_id": request_id,
                    "trace_id": (trace_id_of(span) if span is not None else None) or _caller_trace_id(traceparent),
                    "node": self.node_id,
                    "model": label,
                    "outcome": outcome,
                    "status": status,
                    "latency_ms": round(seconds * 1000, 3),
                }
                log.info("infer %s %s", label, outcome, extra={"distinfer": fields})
