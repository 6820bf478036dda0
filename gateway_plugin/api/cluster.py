"""`GET /models` and `GET /nodes`: what the cluster can serve, and the nodes behind it.

No `from __future__ import annotations` in router modules: FastAPI must resolve `Depends(...)` on
closure-local callables at definition time.
"""

from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Depends

from discovery.node import Node, NodeStatus
from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.api.schemas import ModelEntry, NodeEntry
from gateway_plugin.catalog import CatalogEntry
from gateway_plugin.services import Services, ServicesDependency
from gateway_plugin.shard_runner import ShardRunner
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


def _model_entry(entry: CatalogEntry) -> ModelEntry:
    return ModelEntry(
        name=entry.info.name,
        versions=[entry.info.version] if entry.info.version else [],
        platform=entry.info.platform,
        inputs=[_spec(s) for s in entry.info.inputs],
        outputs=[_spec(s) for s in entry.info.outputs],
        nodes=entry.nodes,
        ready_nodes=entry.ready_nodes,
        local=entry.local,
    )


def _sharded_entry(svc: Services, runner: ShardRunner, entries: Mapping[str, CatalogEntry]) -> ModelEntry:
    """A sharded model: served by the nodes of its stages, and only while every stage can be served."""
    stages = [stage.model for stage in runner.spec.stages]
    found = [entries.get(name) for name in stages]
    nodes = sorted({node for entry in found if entry is not None for node in entry.nodes})
    servable = all(entry is not None and (entry.ready_nodes > 0 or entry.local) for entry in found)
    online = {node.node_id for node in svc.registry.nodes() if node.status is NodeStatus.ONLINE}
    info = runner.info
    return ModelEntry(
        name=info.name,
        versions=[info.version] if info.version else [],
        platform=info.platform,
        inputs=[_spec(s) for s in info.inputs],
        outputs=[_spec(s) for s in info.outputs],
        nodes=nodes,
        ready_nodes=len(online.intersection(nodes)) if servable else 0,
        local=all(entry is not None and entry.local for entry in found),
        stages=stages,
    )


def cluster_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["cluster"])

    @router.get("/models", summary="Models the cluster can serve, and where")
    async def models(svc: Annotated[Services, Depends(services)]) -> list[ModelEntry]:
        entries = {entry.info.name: entry for entry in svc.catalog.entries()}
        listed = {name: _model_entry(entry) for name, entry in entries.items()}
        for runner in svc.sharded.runners() if svc.sharded else []:
            listed[runner.spec.name] = _sharded_entry(svc, runner, entries)  # the gateway serves it, whole
        return [listed[name] for name in sorted(listed)]

    @router.get("/nodes", summary="Nodes, their status, load and models")
    async def nodes(svc: Annotated[Services, Depends(services)]) -> list[NodeEntry]:
        return [node_entry(svc, node) for node in sorted(svc.registry.nodes(), key=lambda n: n.node_id)]

    return router
