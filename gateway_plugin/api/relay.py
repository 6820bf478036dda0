"""`POST /v2/models/{m}/infer`: the Open Inference Protocol relayed through the gateway.

v2 clients (tritonclient, KServe's client) point at `{prefix}` as if it were one v2 server;
requests are routed like `/inference` (balancer, retries, local fallback) and answered in v2 form,
JSON or binary as the client asked. Errors stay problem+json, with the v2 `error` member added so
that v2 clients show the message.
"""

import logging
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway_plugin.api.inference import outcome_headers
from gateway_plugin.api.routing import ProblemRoute, problem_for, raw_route, request_id_of
from gateway_plugin.dispatch import InferenceCall
from gateway_plugin.errors import DistinferError, UnknownModel, from_worker, problem
from gateway_plugin.inputs import check_batch_size
from gateway_plugin.services import Services, ServicesDependency
from worker.bodies import read_body
from worker.client import RawMessage
from worker.engine import check_inputs
from worker.errors import WorkerError
from worker.protocol import (
    HEADER_LENGTH,
    binary_outputs,
    decode_request,
    encode_response,
    parse_header_length,
)

__all__ = ["RelayEndpoint", "relay_router"]

log = logging.getLogger(__name__)

# Parameters about the client↔gateway encoding; the gateway chooses its own towards the node.
_ENCODING_PARAMETERS = frozenset({"binary_data_output"})

# What the router's dependencies do for other routes (the flag, a token with `infer`), for a request.
Guard = Callable[[Request], Awaitable[object]]


class RelayEndpoint:
    """The relay as plain ASGI (see `RawRoute`): guard, body under the cap, route, answer in v2 form."""

    def __init__(self, services: ServicesDependency, guard: Guard, max_body_bytes: int | None) -> None:
        self._services = services
        self._guard = guard
        self._limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        request_id = request_id_of(request)
        response: Response
        try:
            await self._guard(request)
            svc = await self._services()
            body = await (read_body(request, self._limit) if self._limit is not None else request.body())
            params = scope["path_params"]
            response = await _relay(svc, params["model"], params.get("version"), body, request.headers, request_id)
        except WorkerError as exc:
            response = problem(_with_v2_error(from_worker(exc)), request_id)
        except DistinferError as exc:
            response = problem(_with_v2_error(exc), request_id)
        except Exception as exc:
            response = problem_for(exc, request_id)
        await response(scope, receive, send)


def relay_router(
    services: ServicesDependency, guard: Guard, route_class: type[ProblemRoute] = ProblemRoute
) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["open inference protocol"])
    served = raw_route(route_class, RelayEndpoint(services, guard, route_class.max_body_bytes))

    async def relay(model: str, request: Request, version: str | None = None) -> Response:
        """Describes the route to OpenAPI; `RelayEndpoint` serves its requests."""
        raise AssertionError("served by RelayEndpoint")  # pragma: no cover

    router.add_api_route(
        "/v2/models/{model}/infer",
        relay,
        methods=["POST"],
        summary="Open Inference Protocol (KServe v2) inference, routed over the cluster",
        responses={400: {}, 404: {}, 413: {}, 503: {}, 504: {}},
        route_class_override=served,
    )
    router.add_api_route(
        "/v2/models/{model}/versions/{version}/infer",
        relay,
        methods=["POST"],
        include_in_schema=False,
        route_class_override=served,
    )
    return router


async def _relay(
    svc: Services, model: str, version: str | None, body: bytes, headers: Mapping[str, str], request_id: str
) -> Response:
    """Checked like `/inference` (decoding is cheap next to a node call); the body goes to the node as sent."""
    header_length = parse_header_length(headers.get(HEADER_LENGTH))
    decoded = decode_request(body, header_length, svc.limits)
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
            raw=RawMessage(body, headers.get("content-type") or "application/json", header_length),
        )
    )
    answer = outcome.raw  # the node answered the client's own body, in the encoding the client asked for
    if answer is None:  # a node without that encoding, the local fallback, the cache: encode it here
        encoded = encode_response(
            model_name=outcome.model,
            model_version=outcome.model_version,
            request_id=decoded.id,
            outputs=outcome.outputs,
            binary=binary_outputs(decoded),
        )
        answer = RawMessage(encoded.body, encoded.content_type, encoded.header_length)
    sent = outcome_headers(outcome, request_id)
    if answer.header_length is not None:
        sent[HEADER_LENGTH] = str(answer.header_length)
    return Response(answer.data, media_type=answer.content_type, headers=sent)


def _with_v2_error(error: DistinferError) -> DistinferError:
    error.extra.setdefault("error", error.detail)
    return error
