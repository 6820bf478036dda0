"""`POST /v2/models/{m}/infer`: the Open Inference Protocol relayed through the gateway.

v2 clients (tritonclient, KServe's client) point at `{prefix}` as if it were one v2 server;
requests are routed like `/inference` (balancer, retries, local fallback) and answered in v2 form,
JSON or binary as the client asked. Errors stay problem+json, with the v2 `error` member added so
that v2 clients show the message.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway_plugin.api.inference import outcome_headers
from gateway_plugin.api.routing import ProblemRoute, request_id_of
from gateway_plugin.dispatch import InferenceCall
from gateway_plugin.errors import DistinferError, UnknownModel, from_worker
from gateway_plugin.inputs import check_batch_size
from gateway_plugin.services import Services, ServicesDependency
from worker.engine import check_inputs
from worker.errors import WorkerError
from worker.protocol import (
    HEADER_LENGTH,
    binary_outputs,
    decode_request,
    encode_response,
    parse_header_length,
)

__all__ = ["relay_router"]

# Parameters about the client↔gateway encoding; the gateway chooses its own towards the node.
_ENCODING_PARAMETERS = frozenset({"binary_data_output"})


def relay_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["open inference protocol"])

    @router.post(
        "/v2/models/{model}/infer",
        summary="Open Inference Protocol (KServe v2) inference, routed over the cluster",
        responses={400: {}, 404: {}, 413: {}, 503: {}, 504: {}},
    )
    @router.post("/v2/models/{model}/versions/{version}/infer", include_in_schema=False)
    async def relay(
        model: str, request: Request, svc: Annotated[Services, Depends(services)], version: str | None = None
    ) -> Response:
        request_id = request_id_of(request)
        try:
            return await _relay(svc, model, version, request, request_id)
        except WorkerError as exc:
            raise _with_v2_error(from_worker(exc)) from exc
        except DistinferError as exc:
            raise _with_v2_error(exc) from exc

    return router


async def _relay(svc: Services, model: str, version: str | None, request: Request, request_id: str) -> Response:
    decoded = decode_request(await request.body(), parse_header_length(request.headers.get(HEADER_LENGTH)), svc.limits)
    info = svc.catalog.info(model)
    if info is not None:
        if version is not None and version != info.version:
            raise UnknownModel(f"model {model!r} has no version {version!r}")
        check_batch_size(info, decoded.inputs, svc.settings.limits.max_batch_size)
        check_inputs(info.name, info.inputs, decoded.inputs, max_batch_size=info.max_batch_size)
    dispatch = svc.settings.dispatch
    outcome = await svc.dispatcher.infer(
        InferenceCall(
            model=model,
            inputs=decoded.inputs,
            request_id=request_id,
            timeout_s=dispatch.default_timeout_ms / 1000,
            outputs=[out.name for out in decoded.outputs] if decoded.outputs else None,
            parameters={k: v for k, v in decoded.parameters.items() if k not in _ENCODING_PARAMETERS},
        )
    )
    encoded = encode_response(
        model_name=outcome.model,
        model_version=outcome.model_version,
        request_id=decoded.id,
        outputs=outcome.outputs,
        binary=binary_outputs(decoded),
    )
    headers = outcome_headers(outcome, request_id)
    if encoded.header_length is not None:
        headers[HEADER_LENGTH] = str(encoded.header_length)
    return Response(encoded.body, media_type=encoded.content_type, headers=headers)


def _with_v2_error(error: DistinferError) -> DistinferError:
    error.extra.setdefault("error", error.detail)
    return error
