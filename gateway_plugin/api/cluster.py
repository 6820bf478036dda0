"""`GET /models` and `GET /nodes`: what the cluster can serve, and the nodes behind it.

No `from __future__ import annotations` in router modules: FastAPI must resolve `Depends(...)` on
closure-local callables at definition time.
"""

from typing import Annotated

from fastapi import APIRouter, Depends

from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.api.schemas import ModelEntry, NodeEntry
from gateway_plugin.services import Services, ServicesDependency
from worker.config import TensorSpec

__all__ = ["cluster_router"]


def _spec(spec: TensorSpec) -> dict[str, object]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


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
        return [
            NodeEntry(
                node_id=node.node_id,
                url=node.url,
                status=node.status.value,
                source=node.source,
                in_flight=svc.pool.in_flight(node.key),
                models=sorted(node.models),
                binary=node.binary,
                weight=node.spec.weight,
                labels=dict(node.spec.labels),
                last_error=node.last_error,
            )
            for node in sorted(svc.registry.nodes(), key=lambda n: n.node_id)
        ]

    return router
