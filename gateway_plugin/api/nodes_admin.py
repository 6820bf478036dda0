"""`POST /nodes`, `PATCH /nodes/{id}`, `DELETE /nodes/{id}`: managing nodes by hand (CONTRACT §4, `admin`).

A node registered here belongs to the `manual` source and lives until it is deleted. PATCH works
on a node from any source: `status` `busy` or `offline` holds it out of rotation whatever its
probes say (in-flight requests finish; nothing new is sent), `online` lifts the hold; `models`
limits what is routed to it to those of its models (`null` routes all again). DELETE removes a
manual node; a node that Consul, DNS or the static settings list comes back from there, so it
answers 409 and points to PATCH instead.

No `from __future__ import annotations` in router modules: FastAPI must resolve `Depends(...)` on
closure-local callables at definition time.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from discovery.node import NODE_ID_PATTERN, Node, NodeSpec, NodeStatus
from gateway_plugin.api.cluster import node_entry
from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.api.schemas import NodeEntry
from gateway_plugin.errors import Conflict, UnknownNode, Unprocessable
from gateway_plugin.services import Services, ServicesDependency

__all__ = ["MANUAL_SOURCE", "MAX_MANUAL_NODES", "NodePatch", "NodeRegistration", "nodes_admin_router"]

MANUAL_SOURCE = "manual"
MAX_MANUAL_NODES = 1024
_MODEL = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"

AdminDependency = Callable[..., Awaitable[object]]  # the host's admin-scope check
SettableStatus = Literal["online", "busy", "offline"]


async def _anyone() -> None:
    """The default admin check: none (the host wires the real `admin` scope check)."""


class NodeRegistration(BaseModel):
    """A node to register by hand; only `url` is required."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"url": "http://10.0.0.7:8001", "node_id": "gpu-7", "weight": 2}]},
    )

    url: str = Field(min_length=1, max_length=2048)
    node_id: str | None = Field(default=None, min_length=1, max_length=128, pattern=NODE_ID_PATTERN)
    weight: float = Field(default=1.0, ge=0, le=1_000_000)
    labels: dict[str, str] = Field(default={}, max_length=64)
    status: SettableStatus = "online"
    models: list[Annotated[str, Field(max_length=128, pattern=_MODEL)]] | None = Field(default=None, max_length=1024)


class NodePatch(BaseModel):
    """`status`: `online` lifts a hold, `busy`/`offline` hold the node out of rotation; `models`: a
    routing filter (`null` removes it). Absent fields stay as they are."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"status": "offline"}]})

    status: SettableStatus | None = None
    models: list[Annotated[str, Field(max_length=128, pattern=_MODEL)]] | None = Field(default=None, max_length=1024)


def _hold(status: SettableStatus) -> NodeStatus | None:
    return None if status == "online" else NodeStatus(status)


def _find(svc: Services, node_id: str) -> Node:
    node = svc.registry.find(node_id)
    if node is None:
        raise UnknownNode(f"no node {node_id!r}")
    return node


def nodes_admin_router(
    services: ServicesDependency,
    route_class: type[ProblemRoute] = ProblemRoute,
    admin: AdminDependency = _anyone,
) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["nodes"], dependencies=[Depends(admin)])
    NodeId = Annotated[str, Path(min_length=1, max_length=256)]

    @router.post(
        "/nodes", status_code=201, summary="Register a node by hand", response_model=NodeEntry, responses={409: {}}
    )
    async def register(
        body: NodeRegistration, request: Request, response: Response, svc: Annotated[Services, Depends(services)]
    ) -> NodeEntry:
        try:
            spec = NodeSpec(url=body.url, node_id=body.node_id, weight=body.weight, labels=body.labels)
        except ValueError as exc:
            raise Unprocessable(f"url: {exc}") from exc
        existing = svc.registry.get(spec.url)
        if existing is not None:
            raise Conflict(f"{spec.url} is already node {existing.node_id!r} (from {existing.source})")
        if body.node_id is not None and svc.registry.find(body.node_id) is not None:
            raise Conflict(f"node id {body.node_id!r} is taken")
        manual = [n for n in svc.registry.nodes() if MANUAL_SOURCE in svc.registry.claimants(n.key)]
        if len(manual) >= MAX_MANUAL_NODES:
            raise Conflict(f"{MAX_MANUAL_NODES} nodes are registered by hand already")
        node = svc.registry.add(MANUAL_SOURCE, spec)
        if body.models is not None:
            node = svc.registry.set_model_filter(node.key, body.models) or node
        if body.status != "online":
            node = svc.registry.set_manual_status(node.key, _hold(body.status)) or node
        response.headers["Location"] = str(request.url_for("node_admin_patch", node_id=node.node_id))
        return node_entry(svc, node)

    @router.patch(
        "/nodes/{node_id}", name="node_admin_patch", summary="Hold a node out of rotation or limit its models"
    )
    async def patch(node_id: NodeId, body: NodePatch, svc: Annotated[Services, Depends(services)]) -> NodeEntry:
        node = _find(svc, node_id)
        if "models" in body.model_fields_set:
            node = svc.registry.set_model_filter(node.key, body.models) or node
        if body.status is not None:
            node = svc.registry.set_manual_status(node.key, _hold(body.status)) or node
        return node_entry(svc, node)

    @router.delete(
        "/nodes/{node_id}", status_code=204, summary="Unregister a node registered by hand", responses={409: {}}
    )
    async def unregister(node_id: NodeId, svc: Annotated[Services, Depends(services)]) -> Response:
        node = _find(svc, node_id)
        others = [source for source in svc.registry.claimants(node.key) if source != MANUAL_SOURCE]
        if others:
            raise Conflict(
                f"node {node_id!r} is listed by {', '.join(others)}: remove it there, "
                "or PATCH its status to offline to take it out of rotation"
            )
        svc.registry.remove(MANUAL_SOURCE, node.key)
        return Response(status_code=204)

    return router
