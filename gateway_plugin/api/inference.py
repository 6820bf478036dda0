"""`POST /inference`: one request, routed to one node (or answered locally)."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from balancer.pool import UnknownStrategy
from discovery.node import ModelInfo
from gateway_plugin.admission import admitted
from gateway_plugin.api.disconnect import unless_disconnected
from gateway_plugin.api.routing import ProblemRoute, request_id_of
from gateway_plugin.api.schemas import InferenceRequest, InferenceResponse
from gateway_plugin.api.served import INFERENCE_TAG, node_header, serving
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import UnknownModel, Unprocessable
from gateway_plugin.inputs import check_batch_size, is_tensor_list, to_tensors
from gateway_plugin.services import Services, ServicesDependency
from gateway_plugin.telemetry.recorder import defer_bookkeeping
from worker.engine import check_inputs
from worker.protocol import Tensor, dumps
from worker.protocol.codec import json_tensor

# Names the session `model_affinity` keeps on one node (else `parameters.session_id`, else the model).
SESSION_HEADER = "X-Session-ID"

__all__ = ["SESSION_HEADER", "inference_router", "outcome_body", "outcome_headers"]


def outcome_body(outcome: Outcome, request_id: str) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "model": outcome.model,
        "model_version": outcome.model_version,
        "outputs": [json_tensor(tensor) for tensor in outcome.outputs],
        "node_id": outcome.node_id,
        "mode": outcome.mode,
        "attempts": outcome.attempts,
        "latency_ms": round(outcome.latency_ms, 3),
    }


def outcome_headers(outcome: Outcome, request_id: str) -> dict[str, str]:
    return {
        "X-Request-ID": request_id,
        "X-Inference-Node": node_header(outcome.node_id),
        "X-Inference-Mode": outcome.mode,
    }


def model_info(svc: Services, model: str) -> ModelInfo | None:
    """What the gateway knows of `model`: a sharded model's whole signature (its nodes list only its
    stages), else what nodes or the local copy say."""
    return (svc.sharded.info(model) if svc.sharded else None) or svc.catalog.info(model)


def unknown_model(svc: Services, model: str) -> UnknownModel | None:
    """A 404 for a model no node lists and no local copy has (only an online cluster can say so)."""
    if model_info(svc, model) is None and svc.pool.any_online() and not svc.pool.knows(model):
        return UnknownModel(f"no node and no local copy has model {model!r}")
    return None


def build_call(
    services: Services,
    body: InferenceRequest,
    request_id: str,
    *,
    affinity_key: str | None = None,
    decoded: list[Tensor] | None = None,
) -> InferenceCall:
    """Check and convert one request before any node is called (`affinity_key`: the X-Session-ID header).

    `decoded`: `body.inputs` already decoded (v2 tensors, which decode alike for any model), so that
    a request fanned out to many models holds its tensors once.
    """
    # A sharded model (gateway_plugin.sharded) is described by its pipeline; the dispatcher wrapper serves it.
    info = model_info(services, body.model)
    if info is None and not is_tensor_list(body.inputs) and (missing := unknown_model(services, body.model)):
        # A plain value cannot be read without the model's metadata: say the model is unknown, not
        # that the value is (v2 tensors go on to the dispatcher, which answers 404 and counts it).
        raise missing
    tensors = decoded if decoded is not None else to_tensors(body.inputs, info, services.limits)
    if info is not None:
        check_batch_size(info, tensors, services.settings.limits.max_batch_size)
        check_inputs(info.name, info.inputs, tensors, max_batch_size=info.max_batch_size)
    try:
        services.pool.check_strategy(body.strategy)
    except UnknownStrategy as exc:
        raise Unprocessable(str(exc)) from exc
    dispatch = services.settings.dispatch
    timeout_ms = min(body.timeout_ms or dispatch.default_timeout_ms, dispatch.max_timeout_ms)
    return InferenceCall(
        model=body.model,
        inputs=tensors,
        request_id=request_id,
        timeout_s=timeout_ms / 1000,
        outputs=body.outputs,
        parameters=body.parameters,
        strategy=body.strategy,
        affinity_key=affinity_key,
    )


def inference_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=[INFERENCE_TAG])

    @router.post(
        "/inference",
        response_model=InferenceResponse,
        summary="Run one inference on the cluster",
        responses={400: {}, 404: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}},
    )
    async def infer(body: InferenceRequest, request: Request, svc: Annotated[Services, Depends(services)]) -> Response:
        defer_bookkeeping()  # one call per request: its metrics may wait for the answer
        request_id = body.request_id or request_id_of(request)
        session = request.headers.get(SESSION_HEADER)
        with serving(), admitted(svc.admission):  # 429 + Retry-After beyond DISTINFER_MAX_INFLIGHT
            call = build_call(svc, body, request_id, affinity_key=session)
            outcome = await unless_disconnected(request.receive, svc.dispatcher.infer(call))
        return Response(
            dumps(outcome_body(outcome, request_id)),
            media_type="application/json",
            headers=outcome_headers(outcome, request_id),
        )

    return router
