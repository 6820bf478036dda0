"""`POST /v2/models/{m}/infer`: the Open Inference Protocol relayed through the gateway.

v2 clients (tritonclient, KServe's client) point at `{prefix}` as if it were one v2 server;
requests are routed like `/inference` (balancer, retries, local fallback) and answered in v2 form,
JSON or binary as the client asked. Errors stay problem+json, with the v2 `error` member added so
that v2 clients show the message.
"""

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway_plugin.api.inference import model_info
from gateway_plugin.api.routing import V2_TAG, ProblemRoute, problem_error, raw_route, scope_request_id, with_v2_error
from gateway_plugin.api.served import node_header, not_served
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import DistinferError, UnknownModel, from_worker, problem
from gateway_plugin.parameters import check_client_parameters
from gateway_plugin.services import Services, ServicesDependency
from gateway_plugin.signature import SignatureChecks
from gateway_plugin.telemetry.recorder import defer_bookkeeping
from worker.bodies import receive_body
from worker.client import RawMessage
from worker.errors import WorkerError
from worker.protocol import (
    HEADER_LENGTH,
    binary_outputs,
    encode_response,
    parse_header_length,
)
from worker.protocol.checked import check_request

__all__ = ["RelayEndpoint", "relay_router", "with_v2_error"]

log = logging.getLogger(__name__)

# Parameters about the client↔gateway encoding; the gateway chooses its own towards the node.
_ENCODING_PARAMETERS = frozenset({"binary_data_output"})
# The request headers the relay reads; ASGI servers give header names in lower case.
_LENGTH = HEADER_LENGTH.lower()
_LENGTH_BYTES = _LENGTH.encode("latin-1")
_READ = tuple(
    (name.encode(), name)
    for name in ("authorization", "x-request-id", "content-type", "content-length", "content-encoding", _LENGTH)
)

# What the router's dependencies do for other routes (the flag, a token with `infer`), for an
# `Authorization` header value.
Guard = Callable[[str | None], Awaitable[object]]


class RelayEndpoint:
    """The relay as plain ASGI (see `RawRoute`): guard, body under the cap, route, answer in v2 form.

    Reads the scope and sends the answer itself, without Starlette's Request and Response: on the
    hottest path those objects cost a measurable share of the gateway's time per request.
    """

    def __init__(self, services: ServicesDependency, guard: Guard, max_body_bytes: int | None) -> None:
        self._services = services
        self._guard = guard
        self._limit = max_body_bytes
        self._signatures = SignatureChecks()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        defer_bookkeeping()  # one call per request: its metrics may wait for the answer
        headers = _headers(scope)
        request_id = scope_request_id(scope, headers.get("x-request-id"))
        try:
            await self._guard(headers.get("authorization"))
            svc = await self._services()
            limit = self._limit if self._limit is not None else svc.settings.limits.max_body_bytes
            # Decoded here if the client compressed it (tritonclient's request_compression_algorithm):
            # the check reads it, and the node gets it plain.
            body = await receive_body(receive, limit, headers.get("content-length"), headers.get("content-encoding"))
            # 429 beyond DISTINFER_MAX_INFLIGHT, like every synchronous route: counted once the body
            # is in, so that slow uploads cannot hold every place.
            limiter = svc.admission
            if limiter is not None:
                limiter.enter()
            try:
                params = scope["path_params"]
                model, version = params["model"], params.get("version")
                answer, outcome = await _relay(svc, self._signatures, model, version, body, headers, request_id)
            finally:
                if limiter is not None:
                    limiter.leave()
            start = _response_start(answer, outcome, request_id)  # a header we cannot send is a problem, not a crash
        except WorkerError as exc:
            response: Response = problem(with_v2_error(not_served(from_worker(exc))), request_id)
        except DistinferError as exc:
            response = problem(with_v2_error(not_served(exc)), request_id)
        except Exception as exc:  # CONTRACT §4's headers and the v2 member, as on every other error here
            response = problem(with_v2_error(not_served(problem_error(exc, request_id))), request_id)
        else:
            await send(start)
            await send({"type": "http.response.body", "body": answer.data})
            return
        await response(scope, receive, send)


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers the relay reads, by lower-case name; the first of repeated ones, as Starlette."""
    # Built from the last to the first, so that the first of repeated ones wins (ASGI allows any
    # iterable); one C pass over them all, then a lookup per name read.
    given = dict(reversed(list(scope["headers"])))
    return {name: given[key].decode("latin-1") for key, name in _READ if key in given}


@lru_cache(maxsize=1024)  # node ids are few
def _node_value(node_id: str | None) -> bytes:
    return node_header(node_id).encode("latin-1")


def _response_start(answer: RawMessage, outcome: Outcome, request_id: str) -> Message:
    """The 200's status and headers: the node's content type and framing, and CONTRACT §4's routing headers."""
    raw = [
        (b"content-type", answer.content_type.encode("latin-1")),
        (b"content-length", str(len(answer.data)).encode("latin-1")),
        (b"x-request-id", request_id.encode("latin-1")),
        (b"x-inference-node", _node_value(outcome.node_id)),
        (b"x-inference-mode", outcome.mode.encode("latin-1")),
    ]
    if answer.header_length is not None:
        raw.append((_LENGTH_BYTES, str(answer.header_length).encode("latin-1")))
    return {"type": "http.response.start", "status": 200, "headers": raw}


def relay_router(
    services: ServicesDependency, guard: Guard, route_class: type[ProblemRoute] = ProblemRoute
) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=[V2_TAG])
    served = raw_route(route_class, RelayEndpoint(services, guard, route_class.max_body_bytes))

    async def relay(model: str, request: Request, version: str | None = None) -> Response:
        """Describes the route to OpenAPI; `RelayEndpoint` serves its requests."""
        raise AssertionError("served by RelayEndpoint")  # pragma: no cover

    router.add_api_route(
        "/v2/models/{model}/infer",
        relay,
        methods=["POST"],
        summary="Open Inference Protocol (KServe v2) inference, routed over the cluster",
        responses={400: {}, 404: {}, 413: {}, 429: {}, 503: {}, 504: {}},
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
    svc: Services,
    signatures: SignatureChecks,
    model: str,
    version: str | None,
    body: bytes,
    headers: Mapping[str, str],
    request_id: str,
) -> tuple[RawMessage, Outcome]:
    """Checked like `/inference` (decoding is cheap next to a node call); the body goes to the node as sent."""
    header_length = parse_header_length(headers.get(_LENGTH))
    # Checked from the header; the tensors are built only if something must read them (local
    # fallback, the cache key, a node without the binary extension): the body goes on as sent.
    decoded, inputs = check_request(body, header_length, svc.limits)
    check_client_parameters(decoded.parameters)  # the body goes on as sent: a reserved one must not
    info = model_info(svc, model)  # a sharded model's whole signature, as /inference checks it
    if info is not None:
        if version is not None and version != info.version:
            raise UnknownModel(f"model {model!r} has no version {version!r}")
        signatures.check(info, inputs, svc.settings.limits.max_batch_size)
    dispatch = svc.settings.dispatch
    outcome = await svc.dispatcher.infer(
        InferenceCall(
            model=model,
            inputs=decoded.inputs,
            request_id=request_id,
            timeout_s=dispatch.default_timeout_ms / 1000,
            outputs=[out.name for out in decoded.outputs] if decoded.outputs else None,
            parameters=_node_parameters(decoded.parameters),
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
    return answer, outcome


def _node_parameters(parameters: Mapping[str, Any]) -> Mapping[str, Any]:
    """The request's parameters without those about the client's own encoding."""
    if _ENCODING_PARAMETERS.isdisjoint(parameters):
        return parameters
    return {k: v for k, v in parameters.items() if k not in _ENCODING_PARAMETERS}
