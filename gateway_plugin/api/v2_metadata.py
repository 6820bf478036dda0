"""The Open Inference Protocol's read side at the gateway: server and model metadata, liveness, readiness.

With `POST /v2/models/{m}/infer` (the relay) these make `{prefix}` one v2 server to v2 clients:
tritonclient's `is_server_live`, `is_server_ready`, `is_model_ready` and `get_model_metadata`
read them. A model's metadata is what the cluster knows of it (an online node's, else any node's,
else the local copy's; a sharded model's whole signature); it is ready when an online node lists
it or the local fallback has it (a sharded model: when all its stages are). Not ready is 503, as
KServe's own server answers; unknown is 404. Errors are problem+json with the v2 `error` member.
"""

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import Response

from gateway_plugin.api.health import summary
from gateway_plugin.api.inference import model_info
from gateway_plugin.api.routing import V2_TAG, ProblemRoute, with_v2_error
from gateway_plugin.errors import NoCapacity, UnknownModel
from gateway_plugin.services import Services, ServicesDependency
from worker.protocol.models import MetadataTensor, ModelMetadata, ServerMetadata
from worker.server import EXTENSIONS, SERVER_VERSION

__all__ = ["SERVER_NAME", "v2_health_router", "v2_metadata_router"]

SERVER_NAME = "distinfer-gateway"
_RELAYED_EXTENSIONS = [name for name in EXTENSIONS if name == "binary_tensor_data"]  # no repository API here


def v2_health_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    """`GET /v2/health/live` and `/v2/health/ready`: 200 when true, no body; without auth, as `/health`."""
    router = APIRouter(route_class=route_class, tags=[V2_TAG])

    @router.get("/v2/health/live", summary="v2 liveness: the plugin is serving")
    async def live(svc: Annotated[Services, Depends(services)]) -> Response:  # 503 until started, as /health/live
        return Response(status_code=200)

    @router.get(
        "/v2/health/ready",
        summary="v2 readiness: a node or the local fallback can serve",
        responses={503: {"description": "Nothing can serve (no body, as v2 servers answer)", "content": {}}},
    )
    async def ready(svc: Annotated[Services, Depends(services)]) -> Response:
        return Response(status_code=200 if summary(svc)["ready"] else 503)

    return router


def v2_metadata_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    """`GET /v2`, `/v2/models/{m}[/versions/{v}]` and their `/ready`."""
    router = APIRouter(route_class=route_class, tags=[V2_TAG])

    @router.get("/v2", summary="v2 server metadata")
    async def server_metadata() -> ServerMetadata:
        return ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=_RELAYED_EXTENSIONS)

    @router.get("/v2/models/{model}", summary="v2 model metadata, as the cluster knows it")
    @router.get("/v2/models/{model}/versions/{version}", include_in_schema=False)
    async def model_metadata(
        model: str, svc: Annotated[Services, Depends(services)], version: str | None = None
    ) -> ModelMetadata:
        return _metadata(svc, model, version)

    @router.get(
        "/v2/models/{model}/ready",
        summary="v2 model readiness: 200 when the cluster can serve it",
        responses={503: {"description": "Known, but no online node serves it and no local copy"}},
    )
    @router.get("/v2/models/{model}/versions/{version}/ready", include_in_schema=False)
    async def model_ready(
        model: str, svc: Annotated[Services, Depends(services)], version: str | None = None
    ) -> Response:
        _metadata(svc, model, version)  # 404 for a model or version nobody has
        if not _ready(svc, model):
            raise with_v2_error(NoCapacity(f"model {model!r} is not ready: no online node serves it and no local copy"))
        return Response(status_code=200)

    return router


def _metadata(svc: Services, model: str, version: str | None) -> ModelMetadata:
    info = model_info(svc, model)
    if info is None:
        raise with_v2_error(UnknownModel(f"no node and no local copy has model {model!r}"))
    if version is not None and version != info.version:
        raise with_v2_error(UnknownModel(f"model {model!r} has no version {version!r}"))
    return ModelMetadata(
        name=info.name,
        versions=[info.version] if info.version is not None else None,
        platform=info.platform,
        inputs=[MetadataTensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in info.inputs],
        outputs=[MetadataTensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in info.outputs],
        parameters={"max_batch_size": info.max_batch_size, "labels": list(info.labels)},
    )


def _ready(svc: Services, model: str) -> bool:
    runner = svc.sharded.get(model) if svc.sharded else None
    names = [stage.model for stage in runner.spec.stages] if runner is not None else [model]
    entries = {entry.info.name: entry for entry in svc.catalog.entries()}
    return all((entry := entries.get(name)) is not None and (entry.ready_nodes > 0 or entry.local) for name in names)
