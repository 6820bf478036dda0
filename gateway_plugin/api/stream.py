"""`GET|POST /inference/stream/{model}`: server-sent events (sse-starlette), relayed from a node.

With a `prompt` (the `?prompt=` query of a GET, or `"prompt"` in a POST body) the model generates
and every token is an event; with `"inputs"` (POST) the model runs once and its answer is one
`result` event. Events::

    event: token    data: {"index": 0, "text": "T"}
    event: result   data: {"request_id", "model", "model_version", "node_id", "mode", "attempts",
                           "text", "tokens", "finish_reason", "latency_ms"}   (or the /inference body)
    event: error    data: <problem+json object>       the stream failed after it began
    event: done     data: {"request_id": ...}         always last

Failures before the first token (unknown model, no node, bad parameters) are plain problem+json
answers with their status, because the relay opens the node stream before answering. Pings keep
idle connections alive; a client that disconnects cancels the relay, which closes the node
connection, which cancels the generation on the node.
"""

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.types import Receive

from gateway_plugin.admission import Place, admitted
from gateway_plugin.api.disconnect import unless_disconnected
from gateway_plugin.api.inference import build_call, outcome_body
from gateway_plugin.api.routing import ProblemRoute, request_id_of
from gateway_plugin.api.schemas import InferenceRequest
from gateway_plugin.api.served import INFERENCE_TAG, node_header
from gateway_plugin.errors import DistinferError, NoCapacity, problem_body
from gateway_plugin.parameters import ClientParameters
from gateway_plugin.services import Services, ServicesDependency
from gateway_plugin.streaming import StreamCall, StreamEnd, TokenStream

__all__ = ["StreamRequest", "stream_router"]

PING_S = 15
SEND_TIMEOUT_S = 30.0
_MODEL = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class StreamRequest(BaseModel):
    """A POST to the stream endpoint: a `prompt` to generate from, or `inputs` for one answer."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "The return statement", "parameters": {"max_tokens": 64}}]},
    )

    prompt: str | None = Field(default=None, max_length=16_384)
    inputs: Any = None
    parameters: ClientParameters = Field(
        default={}, description="generation: max_tokens, temperature (0 = greedy), top_k, seed, stop"
    )
    strategy: str | None = None
    timeout_ms: int | None = Field(default=None, gt=0)
    request_id: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")

    @model_validator(mode="after")
    def _one_of(self) -> "StreamRequest":
        if (self.prompt is None) == (self.inputs is None):
            raise ValueError("send exactly one of `prompt` (generate tokens) or `inputs` (one result)")
        return self


def _timeout_s(svc: Services, timeout_ms: int | None) -> float:
    dispatch = svc.settings.dispatch
    return min(timeout_ms or dispatch.max_timeout_ms, dispatch.max_timeout_ms) / 1000


def _done(request_id: str) -> ServerSentEvent:
    return ServerSentEvent(json.dumps({"request_id": request_id}), event="done")


async def _token_events(
    stream: TokenStream, request_id: str, started: float, place: Place | None
) -> AsyncIterator[ServerSentEvent]:
    text: list[str] = []
    try:
        async for item in stream.items():
            if isinstance(item, StreamEnd):
                result = {
                    "request_id": request_id,
                    "model": stream.model,
                    "model_version": stream.model_version,
                    "node_id": stream.node_id,
                    "mode": stream.mode,
                    "attempts": stream.attempts,
                    "text": "".join(text),
                    "tokens": item.tokens,
                    "finish_reason": item.finish_reason,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                }
                yield ServerSentEvent(json.dumps(result), event="result")
            else:
                text.append(item.text)
                yield ServerSentEvent(
                    json.dumps({"index": item.index, "text": item.text}), event="token", id=str(item.index)
                )
    except DistinferError as exc:
        yield ServerSentEvent(json.dumps(problem_body(exc, request_id)), event="error")
    finally:
        if place is not None:
            place.release()
        with anyio.CancelScope(shield=True):  # the node connection must close even when we are cancelled
            await stream.aclose()
    yield _done(request_id)


async def _one_result(body: dict[str, Any], request_id: str) -> AsyncIterator[ServerSentEvent]:
    yield ServerSentEvent(json.dumps(body), event="result")
    yield _done(request_id)


def _response(
    events: AsyncIterator[ServerSentEvent],
    headers: dict[str, str],
    stream: TokenStream | None = None,
    place: Place | None = None,
) -> EventSourceResponse:
    # The background close covers a response whose events never start (a HEAD, an early disconnect).
    background = BackgroundTask(_close, stream, place) if stream is not None else None
    return EventSourceResponse(events, ping=PING_S, send_timeout=SEND_TIMEOUT_S, headers=headers, background=background)


async def _close(stream: TokenStream, place: Place | None) -> None:
    if place is not None:
        place.release()
    await stream.aclose()


async def _stream(
    svc: Services,
    model: str,
    prompt: str,
    parameters: dict[str, Any],
    strategy: str | None,
    timeout_ms: int | None,
    request_id: str,
    receive: Receive,
) -> EventSourceResponse:
    if svc.streams is None:
        raise NoCapacity("streaming is not available: the plugin is not started")
    # Held from before the node stream opens until the stream ends: 429 beyond DISTINFER_MAX_INFLIGHT.
    place = svc.admission.take() if svc.admission is not None else None
    started = time.perf_counter()
    call = StreamCall(model, prompt, parameters, request_id, _timeout_s(svc, timeout_ms), strategy)
    try:
        # Until the first token: a client that leaves meanwhile must not hold the node (Regression, audit).
        stream = await unless_disconnected(receive, svc.streams.open(call))
    except BaseException:
        if place is not None:
            place.release()
        raise
    headers = {
        "X-Request-ID": request_id,
        "X-Inference-Node": node_header(stream.node_id),
        "X-Inference-Mode": stream.mode,
    }
    return _response(_token_events(stream, request_id, started, place), headers, stream, place)


def stream_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=[INFERENCE_TAG])
    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"text/event-stream": {}}, "description": "token, result, error and done events"},
        400: {},
        404: {},
        413: {},
        422: {},
        429: {},
        503: {},
        504: {},
    }

    @router.get("/inference/stream/{model}", summary="Stream a generative model's tokens (SSE)", responses=responses)
    async def stream_get(
        model: Annotated[str, Path(min_length=1, max_length=128, pattern=_MODEL)],
        request: Request,
        svc: Annotated[Services, Depends(services)],
        prompt: Annotated[str, Query(max_length=16_384)] = "",
        max_tokens: Annotated[int | None, Query(gt=0)] = None,
        temperature: Annotated[float | None, Query(ge=0, le=10)] = None,
        top_k: Annotated[int | None, Query(ge=0)] = None,
        seed: Annotated[int | None, Query()] = None,
        stop: Annotated[list[str] | None, Query(max_length=4)] = None,
        strategy: str | None = None,
        timeout_ms: Annotated[int | None, Query(gt=0)] = None,
    ) -> EventSourceResponse:
        given = {"max_tokens": max_tokens, "temperature": temperature, "top_k": top_k, "seed": seed, "stop": stop}
        parameters = {key: value for key, value in given.items() if value is not None}
        request_id = request_id_of(request)
        return await _stream(svc, model, prompt, parameters, strategy, timeout_ms, request_id, request.receive)

    @router.post("/inference/stream/{model}", summary="Stream tokens, or one result, as SSE", responses=responses)
    async def stream_post(
        model: Annotated[str, Path(min_length=1, max_length=128, pattern=_MODEL)],
        body: StreamRequest,
        request: Request,
        svc: Annotated[Services, Depends(services)],
    ) -> EventSourceResponse:
        request_id = body.request_id or request_id_of(request)
        if body.prompt is not None:
            options = (body.parameters, body.strategy, body.timeout_ms, request_id, request.receive)
            return await _stream(svc, model, body.prompt, *options)
        single = InferenceRequest(
            model=model,
            inputs=body.inputs,
            parameters=body.parameters,
            strategy=body.strategy,
            timeout_ms=body.timeout_ms,
            request_id=request_id,
        )
        with admitted(svc.admission):
            call = build_call(svc, single, request_id)
            outcome = await unless_disconnected(request.receive, svc.dispatcher.infer(call))
        headers = {
            "X-Request-ID": request_id,
            "X-Inference-Node": node_header(outcome.node_id),
            "X-Inference-Mode": outcome.mode,
        }
        return _response(_one_result(outcome_body(outcome, request_id), request_id), headers)

    return router
