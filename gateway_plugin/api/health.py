"""`GET /health`, `/health/live`, `/health/ready`: the plugin and a summary of the cluster (no auth)."""

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from discovery.node import NodeStatus
from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.services import Services, ServicesDependency

__all__ = ["health_router", "summary"]

_STATES = ("online", "busy", "offline", "error")


def summary(svc: Services) -> dict[str, Any]:
    statuses = Counter(svc.pool.status(node).value for node in svc.registry.nodes())
    panic = svc.pool.panic_models()
    online = statuses.get("online", 0)
    # Busy or ejected nodes still answer probes: they can serve (ejected ones in panic mode).
    reachable = sum(node.status is NodeStatus.ONLINE for node in svc.registry.nodes())
    local = svc.local is not None and bool(svc.local.models())
    ready = reachable > 0 or local
    return {
        "status": "ok" if online else ("degraded" if reachable or local else "unavailable"),
        "ready": ready,
        "nodes": {
            "total": sum(statuses.values()),
            **{s: statuses.get(s, 0) for s in ("online", "busy", "offline", "error")},
        },
        "models": len(svc.catalog.entries()),
        "local_fallback": local,
        # Panic: every probed-healthy node of these models is ejected, so routing goes to the least bad.
        "panic": {"active": bool(panic), "models": panic},
    }


def health_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["health"])

    @router.get("/health", summary="Plugin health and cluster summary")
    async def health(svc: Annotated[Services, Depends(services)]) -> dict[str, Any]:
        # Liveness and readiness side by side: live while the plugin runs, ready while something can serve.
        return {"live": True, **summary(svc)}

    @router.get("/health/live", summary="Liveness: the plugin is running")
    async def live(svc: Annotated[Services, Depends(services)]) -> dict[str, str]:
        return {"status": "live"}

    @router.get(
        "/health/ready",
        summary="Readiness: a node or the local fallback can serve",
        responses={
            503: {
                "description": "Nothing can serve: the same summary, `ready` false",
                "content": {"application/json": {}},
            }
        },
    )
    async def ready(svc: Annotated[Services, Depends(services)]) -> JSONResponse:
        body = summary(svc)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    return router
