"""`GET /stats`: a JSON snapshot for dashboards (`distinfer monitor`, scripts).

Everything comes from this gateway process's telemetry: the registry's nodes with their live
in-flight counts, latency percentiles and error rate over each node's recent attempts, overall
throughput, latency percentiles over the last calls, queue depth and the most recent requests (a
bounded ring).
"""

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.shadow import ShadowStats
from gateway_plugin.telemetry import Telemetry

__all__ = ["StatsSnapshot", "snapshot", "stats_router"]


class NodeStats(BaseModel):
    node_id: str
    url: str
    status: str
    in_flight: int
    models: list[str]
    samples: int = Field(description="recent attempts the percentiles and error rate are computed over")
    p50_ms: float | None
    p99_ms: float | None
    error_rate: float | None
    breaker: str | None = Field(description="closed | open | half_open, when the balancer has breakers")
    trust: float | None = Field(description="trust score 0..1, when the balancer keeps one")


class LoadStats(BaseModel):
    in_flight: int
    throughput_rps: float = Field(description="finished requests per second over the last 10 s")
    requests_total: int
    errors_total: int = Field(
        description="calls that failed; cancelled ones (a parallel call's losers, a caller that left) are not"
    )
    error_rate: float | None


class LatencyStats(BaseModel):
    samples: int = Field(description="recent calls the percentiles are computed over (at most 1,024)")
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class QueueStats(BaseModel):
    depth: int


class RecentRequest(BaseModel):
    time: str
    request_id: str
    model: str
    node: str | None
    mode: str
    attempts: int
    outcome: str
    latency_ms: float


class StatsSnapshot(BaseModel):
    time: str
    uptime_s: float
    nodes: list[NodeStats]
    load: LoadStats
    latency: LatencyStats = Field(
        description=(
            "latency of the last model calls over the whole cluster, as the dispatcher saw them: a single"
            " request, each batch item or group, parallel model and pipeline stage, a stream to its first"
            " token; retries, fallback and failures included, cancelled calls left out"
        )
    )
    queue: QueueStats
    recent: list[RecentRequest] = Field(description="the last requests, newest first")
    shadow: dict[str, Any] | None = Field(
        default=None, description="legacy path (compat): shadow comparisons, divergences, served and fallback counts"
    )


def snapshot(telemetry: Telemetry) -> dict[str, Any]:
    stats, readers = telemetry.stats, telemetry.cluster.readers
    nodes = []
    for node in telemetry.cluster.nodes():
        window = stats.node(node.node_id)
        nodes.append(
            {
                "node_id": node.node_id,
                "url": node.url,
                "status": node.status.value,
                "in_flight": readers.in_flight(node.key),
                "models": sorted(node.models),
                "samples": window.samples,
                "p50_ms": window.p50_ms,
                "p99_ms": window.p99_ms,
                "error_rate": window.error_rate,
                "breaker": readers.breaker(node.key),
                "trust": readers.trust(node.key),
            }
        )
    total, errors = stats.requests_total, stats.errors_total
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "uptime_s": stats.uptime_s(),
        "nodes": nodes,
        "load": {
            "in_flight": sum(n["in_flight"] for n in nodes),
            "throughput_rps": stats.throughput(),
            "requests_total": total,
            "errors_total": errors,
            "error_rate": round(errors / total, 4) if total else None,
        },
        "latency": asdict(stats.calls()),
        "queue": {"depth": telemetry.queue_depth()},
        "recent": stats.recent(),
    }


def stats_router(
    telemetry: Telemetry, route_class: type[ProblemRoute] = ProblemRoute, shadow: ShadowStats | None = None
) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["cluster"])

    @router.get("/stats", summary="Snapshot for dashboards: nodes, load, latency, queue, recent requests")
    async def stats() -> StatsSnapshot:
        body = snapshot(telemetry)
        if shadow is not None:
            body["shadow"] = shadow.snapshot()
        return StatsSnapshot.model_validate(body)

    return router
