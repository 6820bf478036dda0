"""The gateway's Prometheus metrics, every one created once on an injected `CollectorRegistry`.

Names follow Prometheus conventions (base units in the name, `_total` counters). Labels are
bounded: routes are route templates, node and model labels come from a `LabelBudget` that admits
a fixed number of distinct values and folds the rest into `other`, so no caller can grow the
series without limit by inventing model names. A node that leaves the registry keeps its series
for `DEPARTED_NODE_SERIES_S` (late answers, the scrapes after its end), then they are removed and
its label goes back to the budget: pods that come and go under new names would otherwise fill it
and every later node would be `other`.

    distinfer_gateway_http_request_duration_seconds{route,method,status}   ASGI entry to response sent
    distinfer_gateway_http_requests_in_flight{route}
    distinfer_gateway_overhead_seconds{route,phase}      phase: before_upstream | after_upstream
    distinfer_gateway_requests_total{model,node,outcome,mode}              one per logical inference
    distinfer_gateway_inference_duration_seconds{model,mode}
    distinfer_gateway_attempts_total{node,outcome}        distinfer_gateway_attempt_duration_seconds{node}
    distinfer_gateway_retries_total{model}                distinfer_gateway_hedges_total{model}
    distinfer_gateway_fallbacks_total{model,reason}       distinfer_gateway_balancer_decisions_total{strategy,node}
    distinfer_gateway_node_ejections_total{node}          distinfer_gateway_queue_wait_seconds{priority}
    distinfer_gateway_event_loop_lag_seconds              distinfer_gateway_panic_picks_total{model}
    live, read at scrape time: distinfer_gateway_node_up{node}, distinfer_gateway_node_in_flight_requests{node},
    distinfer_gateway_breaker_state{node,state}, distinfer_gateway_node_trust_score{node},
    distinfer_gateway_panic_mode{model}, distinfer_gateway_queue_depth
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from discovery.node import NodeStatus
from gateway_plugin.telemetry.buffered import MetricBuffer
from worker.telemetry import LATENCY_BUCKETS, Exposition

__all__ = ["DEPARTED_NODE_SERIES_S", "OTHER", "GatewayMetrics", "LabelBudget", "LiveNode", "OVERHEAD_BUCKETS"]

OTHER = "other"
# How long a departed node's series stay: a few scrape intervals, and far longer than any call to it.
DEPARTED_NODE_SERIES_S = 300.0
# Values of the `node` label that are not nodes (`requests_total`'s local fallback, no node at all).
_NOT_NODES = frozenset({OTHER, "local", "none"})
# The gateway's own share of a request: tens of microseconds to tens of milliseconds.
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BREAKER_STATES = ("closed", "open", "half_open")
NODE_STATES = tuple(status.value for status in NodeStatus)


class LabelBudget:
    """Admits up to `limit` distinct label values; later newcomers are reported as `other`."""

    def __init__(self, limit: int, on_admit: Callable[[str], None] | None = None) -> None:
        self._limit = limit
        self._on_admit = on_admit  # told of each value given a place
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen or len(self._seen) >= self._limit:
                return value if value in self._seen else OTHER
            self._seen.add(value)
        if self._on_admit is not None:
            self._on_admit(value)
        return value

    def release(self, value: str) -> None:
        """Give `value`'s place back: a later newcomer may take it."""
        with self._lock:
            self._seen.discard(value)

    def __contains__(self, value: object) -> bool:
        return value in self._seen


@dataclass(frozen=True, slots=True)
class LiveNode:
    """What the scrape-time collector reports about one node."""

    node_id: str
    up: bool
    in_flight: int
    breaker: str | None = None
    trust: float | None = None
    status: str | None = None  # CONTRACT's node state as /nodes shows it (the balancer's view: busy, ejected)


class _LiveCollector(Collector):
    def __init__(
        self,
        nodes: Callable[[], Iterable[LiveNode]],
        queue_depth: Callable[[], int],
        panic: Callable[[], Iterable[tuple[str, bool]]],
    ) -> None:
        self._nodes = nodes
        self._queue_depth = queue_depth
        self._panic = panic

    def describe(self) -> Iterator[Metric]:
        """The families, without reading any state: a registry with `auto_describe` (prometheus_client's
        global REGISTRY) would otherwise call `collect` at registration, before the plugin is built."""
        yield from _live_families()
        yield _panic_family()
        yield _queue_family()

    def collect(self) -> Iterator[Metric]:
        up, busy, breaker, trust, status = _live_families()
        # Nodes past the label budget share the label `other`: one sample per label, or the
        # exposition would repeat a series (Prometheus drops such samples). Shared: up if any is,
        # in-flight summed, nodes counted per breaker state, the lowest trust.
        by_label: dict[str, list[LiveNode]] = {}
        for node in self._nodes():
            by_label.setdefault(node.node_id, []).append(node)
        for label, nodes in by_label.items():
            up.add_metric([label], 1.0 if any(node.up for node in nodes) else 0.0)
            busy.add_metric([label], sum(node.in_flight for node in nodes))
            states = [node.breaker for node in nodes if node.breaker is not None]
            if states:
                for state in BREAKER_STATES:
                    breaker.add_metric([label, state], float(states.count(state)))
            trusts = [node.trust for node in nodes if node.trust is not None]
            if trusts:
                trust.add_metric([label], min(trusts))
            statuses = [node.status for node in nodes if node.status is not None]
            if statuses:
                for state in NODE_STATES:
                    status.add_metric([label, state], float(statuses.count(state)))
        yield from (up, busy, breaker, trust, status)
        panic = _panic_family()
        for model, active in self._panic():
            panic.add_metric([model], 1.0 if active else 0.0)
        yield panic
        yield _queue_family(self._queue_depth())


def _live_families() -> tuple[GaugeMetricFamily, ...]:
    up = GaugeMetricFamily("distinfer_gateway_node_up", "1 when the node is online and routable", labels=["node"])
    busy = GaugeMetricFamily(
        "distinfer_gateway_node_in_flight_requests", "Requests this gateway has on the node now", labels=["node"]
    )
    breaker = GaugeMetricFamily(
        "distinfer_gateway_breaker_state", "1 for the breaker's current state", labels=["node", "state"]
    )
    trust = GaugeMetricFamily("distinfer_gateway_node_trust_score", "Node trust score (0..1)", labels=["node"])
    status = GaugeMetricFamily(
        "distinfer_gateway_node_status", "1 for the node's current state (as /nodes shows it)", labels=["node", "state"]
    )
    return up, busy, breaker, trust, status


def _panic_family() -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "distinfer_gateway_panic_mode",
        "1 while the model is in panic mode (too few admitted nodes: routed to the least bad)",
        labels=["model"],
    )


def _queue_family(depth: int | None = None) -> GaugeMetricFamily:
    help_text = "Tasks waiting in the queue"
    if depth is None:
        return GaugeMetricFamily("distinfer_gateway_queue_depth", help_text, labels=[])
    return GaugeMetricFamily("distinfer_gateway_queue_depth", help_text, value=depth)


class GatewayMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        live_nodes: Callable[[], Iterable[LiveNode]] = tuple,
        queue_depth: Callable[[], int] = lambda: 0,
        live_panic: Callable[[], Iterable[tuple[str, bool]]] = tuple,
        node_limit: int = 1000,
        model_limit: int = 256,
        listed_node: Callable[[str], bool] = lambda _: True,
        departed_series_s: float = DEPARTED_NODE_SERIES_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self._listed_node = listed_node  # whether the registry lists a node with this id now
        self._departed_series_s = departed_series_s
        self._clock = clock
        self._departed: dict[str, float] = {}  # node id -> when it left the registry
        # Children by (metric, label values): metrics hash by identity, a C call on the hot path.
        self._node_keys: dict[str, list[tuple[MetricWrapperBase, tuple[str, ...]]]] = {}  # node label -> its keys
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        # Hot-path children count into plain numbers, flushed when the registry collects; registered
        # first so that it runs before the metrics it feeds. Multiprocess files need every update.
        self._buffer = None if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else MetricBuffer()
        if self._buffer is not None:
            registry.register(self._buffer)
        self.node_label = LabelBudget(node_limit, on_admit=self._admitted_node)
        self.model_label = LabelBudget(model_limit)
        r = registry
        self.http_seconds = Histogram(
            "distinfer_gateway_http_request_duration_seconds",
            "Plugin requests from ASGI entry to the last response byte sent",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_in_flight = Gauge(
            "distinfer_gateway_http_requests_in_flight",
            "Plugin requests being served",
            ["route"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.overhead_seconds = Histogram(
            "distinfer_gateway_overhead_seconds",
            "The gateway's own time: ASGI entry to first upstream send, last upstream byte to response sent",
            ["route", "phase"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "distinfer_gateway_requests",
            "Logical inference calls by model, serving node, outcome and mode",
            ["model", "node", "outcome", "mode"],
            registry=r,
        )
        self.inference_seconds = Histogram(
            "distinfer_gateway_inference_duration_seconds",
            "One logical inference call, all attempts and any fallback included",
            ["model", "mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "distinfer_gateway_attempts", "Calls to nodes by outcome", ["node", "outcome"], registry=r
        )
        self.attempt_seconds = Histogram(
            "distinfer_gateway_attempt_duration_seconds",
            "One call to one node",
            ["node"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter("distinfer_gateway_retries", "Attempts after the first", ["model"], registry=r)
        self.hedges = Counter("distinfer_gateway_hedges", "Hedged (speculative) attempts", ["model"], registry=r)
        self.fallbacks = Counter(
            "distinfer_gateway_fallbacks", "Calls answered by local inference", ["model", "reason"], registry=r
        )
        self.decisions = Counter(
            "distinfer_gateway_balancer_decisions",
            "Nodes picked, by strategy",
            ["strategy", "node"],
            registry=r,
        )
        self.panic_picks = Counter(
            "distinfer_gateway_panic_picks",
            "Nodes picked in panic mode (the least bad, because too few of the model's nodes were admitted)",
            ["model"],
            registry=r,
        )
        self.ejections = Counter(
            "distinfer_gateway_node_ejections",
            "Times a node left the routable set (probe or passive failure)",
            ["node"],
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "distinfer_gateway_queue_wait_seconds",
            "Time a task waited in the queue",
            ["priority"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.loop_lag_seconds = Histogram(
            "distinfer_gateway_event_loop_lag_seconds",
            "How late the event loop ran a timer: queueing every request also waits through",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter(
            "distinfer_gateway_cache_hits", "Calls answered from the response cache", ["model"], registry=r
        )
        self.cache_misses = Counter(
            "distinfer_gateway_cache_misses", "Cacheable calls not found in the response cache", ["model"], registry=r
        )
        # Per metric with a `node` label: that label's position, for removing a node's series.
        self._node_position = {
            metric: metric._labelnames.index("node")
            for metric in vars(self).values()
            if isinstance(metric, MetricWrapperBase) and "node" in metric._labelnames
        }
        live = _LiveCollector(live_nodes, queue_depth, live_panic)
        r.register(live)
        self.exposition = Exposition.for_environment(r, [live])

    def flush(self) -> None:
        """Add buffered updates to the metrics now, for readers that skip the buffer (a scrape
        restricted with `name[]` collects only the named metrics); `watch_event_loop` calls it."""
        if self._buffer is not None:
            self._buffer.flush()

    def node_departed(self, node_id: str) -> None:
        """No listed node has this id any more: its series go after the grace period.

        Not with multiprocess files, from which prometheus_client cannot remove series: there the
        label keeps its place, so that the budget still bounds them.
        """
        if self._buffer is not None:
            self._departed.setdefault(node_id, self._clock())

    def node_returned(self, node_id: str) -> None:
        """A node with this id is listed again: its series stay."""
        self._departed.pop(node_id, None)

    def _admitted_node(self, node_id: str) -> None:
        # A late answer from a node already forgotten (its bookkeeping waits for a slow client)
        # brings its label back: it departs again at once, or it would stay for good.
        if not self._listed_node(node_id):
            self.node_departed(node_id)

    def expire_departed(self) -> None:
        """Remove the series of nodes departed longer than the grace period; free their labels.

        On the event loop (the updating thread), so that no update of ours races the removal.
        """
        if not self._departed:
            return
        now = self._clock()
        due = [node_id for node_id, since in list(self._departed.items()) if now - since >= self._departed_series_s]
        if due:
            self._forget_nodes(due)
            for node_id in due:
                self._departed.pop(node_id, None)

    def _forget_nodes(self, node_ids: list[str]) -> None:
        # `other` is shared with live nodes; "local" and "none" also label calls no node served.
        owned = [node_id for node_id in node_ids if node_id not in _NOT_NODES and node_id in self.node_label]
        removed = []
        for node_id in owned:
            for key in self._node_keys.pop(node_id, ()):
                child = self._children.pop(key, None)
                if child is not None:
                    removed.append(child)
                    key[0].remove(*key[1])
        if self._buffer is not None:
            self._buffer.discard(removed)
        for node_id in owned:
            self.node_label.release(node_id)

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: a dict hit per request instead of a validating call under a lock.

        As bounded as the labels themselves (route templates, label budgets, fixed outcome sets).
        """
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = metric.labels(*labels)
            if self._buffer is not None:
                found = self._buffer.wrap(metric, found)
            self._children[key] = found
            by_node = self._node_position.get(metric)
            if by_node is not None:  # indexed by node, for removing a departed node's series
                self._node_keys.setdefault(labels[by_node], []).append(key)
        return found
