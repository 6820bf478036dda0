"""`GET /models` and `GET /nodes`: what the cluster can serve, and the nodes behind it.

No `from __future__ import annotations` in router modules: FastAPI must resolve `Depends(...)` on
closure-local callables at definition time.
"""

from typing import Annotated

from fastapi import APIRouter, Depends

from discovery.node import Node
from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.api.schemas import ModelEntry, NodeEntry
from gateway_plugin.services import Services, ServicesDependency
from worker.config import TensorSpec

__all__ = ["cluster_router", "node_entry"]


def _spec(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def node_entry(svc: Services, node: Node) -> NodeEntry:
    """One node as users see it: probe status refined by its breaker, trust and load (CONTRACT §4 states)."""
    pool = svc.pool
    breaker = pool.breaker(node.key)
    trust = pool.trust.snapshot(node.key)
    ewma = pool.latency_ewma_s(node.key)
    return NodeEntry(
        node_id=node.node_id,
        url=node.url,
        status=pool.status(node).value,
        source=node.source,
        in_flight=pool.in_flight(node.key),
        models=sorted(node.models),
        binary=node.binary,
        weight=node.spec.weight,
        labels=dict(pool.labels(node)),
        last_error=node.last_error,
        breaker=breaker.state.value,
        ejected_for_s=breaker.open_for_s,
        latency_ewma_ms=None if ewma is None else round(ewma * 1000, 3),
        trust=trust.score,
        quarantined=trust.quarantined,
    )


def cluster_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["cluster"])

    @router.get("/models", summary="Models the cluster can serve, and where")
    async def models(svc: Annotated[Services, Depends(services)]) -> list[ModelEntry]:
        return [
            ModelEntry(
                name=entry.info.name,
                versions=[entry.info.version] if entry.info.version else [],
                platform=entry.info.platform,
                inputs=[_spec(s) for s in entry.info.inputs],
                outputs=[_spec(s) for s in entry.info.outputs],
                nodes=entry.nodes,
                ready_nodes=entry.ready_nodes,
                local=entry.local,
            )
            for entry in svc.catalog.entries()
        ]

    @router.get("/nodes", summary="Nodes, their status, load and models")
    async def nodes(svc: Annotated[Services, Depends(services)]) -> list[NodeEntry]:
        return [node_entry(svc, node) for node in sorted(svc.registry.nodes(), key=lambda n: n.node_id)]

    return router
