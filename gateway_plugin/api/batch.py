"""`POST /inference/batch`: many requests spread over the nodes; `?stream=true` for SSE progress.

Every item is checked and converted on its own (`build_call`), so a malformed item is an error
result, not a failed batch. Items for one model are coalesced into multi-row node requests when
the model has a batch dimension (`coalesce`, default from `DISTINFER_BATCH_COALESCE`).

SSE events (`?stream=true`), one per item as it finishes, then a summary::

    event: item      data: {"index": 3, "status": "ok", "response": {...}}   (or "error": <problem>)
    event: summary   data: {"succeeded": n, "failed": m, "total": n + m, "latency_ms": t}

A client that disconnects cancels the items still in flight.
"""

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from gateway_plugin.admission import admitted
from gateway_plugin.api.disconnect import unless_disconnected
from gateway_plugin.api.inference import SESSION_HEADER, build_call, outcome_body, unknown_model
from gateway_plugin.api.routing import ProblemRoute, request_id_of
from gateway_plugin.api.schemas import InferenceRequest
from gateway_plugin.api.served import INFERENCE_TAG, served_headers, serving
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import DistinferError, PayloadTooLarge, UnknownModel, from_worker, problem_body
from gateway_plugin.orchestration import BatchRunner, ItemResult
from gateway_plugin.services import Services, ServicesDependency
from worker.errors import WorkerError
from worker.protocol import dumps

__all__ = ["BatchRequest", "batch_router", "check_batch", "max_rows_of", "run_batch", "unknown_model"]

PING_S = 15
SEND_TIMEOUT_S = 30.0


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"requests": [{"model": "digits", "inputs": [[0.0] * 8] * 8}], "max_concurrency": 8}]
        },
    )

    requests: list[InferenceRequest] = Field(min_length=1, description="each as for POST /inference")
    max_concurrency: int | None = Field(default=None, ge=1, le=1024, description="node requests at once")
    coalesce: bool | None = Field(default=None, description="merge items for one model into multi-row requests")
    timeout_ms: int | None = Field(
        default=None,
        gt=0,
        description="deadline for the whole batch, waits included (at most, and by default,"
        " DISTINFER_MAX_BATCH_PIPELINE_TIMEOUT_MS); each item keeps its own timeout_ms within it",
    )


def max_rows_of(svc: Services, model: str) -> int:
    """Rows one request for `model` may carry; 0 when it has no batch dimension (or is unknown)."""
    info = svc.catalog.info(model)
    if info is None or info.max_batch_size <= 0 or not info.inputs:
        return 0
    return info.max_batch_size if all(spec.shape[:1] == (-1,) for spec in info.inputs) else 0


def check_batch(svc: Services, body: BatchRequest) -> None:
    """What refuses the whole batch (413), before any item is looked at."""
    limit = svc.settings.limits.max_batch_size
    if len(body.requests) > limit:
        raise PayloadTooLarge(f"a batch holds at most {limit} requests (DISTINFER_MAX_BATCH_SIZE)")


def _prepare(
    svc: Services, body: BatchRequest, batch_id: str, session: str | None
) -> tuple[list[InferenceCall | DistinferError], list[str]]:
    """Each item as a call, or its own error; and each item's request id (its own, else batch id + index)."""
    check_batch(svc, body)
    items: list[InferenceCall | DistinferError] = []
    ids: list[str] = []
    missing_models: dict[str, UnknownModel | None] = {}
    for index, request in enumerate(body.requests):
        request_id = request.request_id or f"{batch_id}-{index}"
        ids.append(request_id)
        if request.model not in missing_models:
            missing_models[request.model] = unknown_model(svc, request.model)
        if (missing := missing_models[request.model]) is not None:
            items.append(missing)
            continue
        try:
            items.append(build_call(svc, request, request_id, affinity_key=session))
        except DistinferError as exc:
            items.append(exc)
        except WorkerError as exc:
            items.append(from_worker(exc))
    return items, ids


def _item(index: int, result: ItemResult, request_id: str) -> dict[str, Any]:
    if isinstance(result, Outcome):
        return {"index": index, "status": "ok", "response": outcome_body(result, request_id)}
    return {"index": index, "status": "error", "error": problem_body(result, request_id)}


def _runner(svc: Services) -> BatchRunner:
    return BatchRunner(svc.dispatcher.infer, max_rows=lambda model: max_rows_of(svc, model))


def _options(svc: Services, body: BatchRequest, items: list[InferenceCall | DistinferError]) -> dict[str, Any]:
    # The operator's setting bounds a batch; a client may ask for less, never for more (one request
    # asking 1,024 once fanned out past DISTINFER_BATCH_CONCURRENCY, admission counting it as one).
    most = svc.settings.orchestration.batch_concurrency
    concurrency = min(body.max_concurrency or most, most)
    models = {item.model for item in items if isinstance(item, InferenceCall)}
    nodes = max((len(svc.pool.candidates(model)) for model in models), default=1)
    return {
        "max_concurrency": concurrency,
        "coalesce": svc.settings.orchestration.coalesce if body.coalesce is None else body.coalesce,
        "spread": max(1, min(concurrency, 2 * nodes)),  # two requests per node keep each one busy
        "timeout_s": svc.settings.dispatch.whole_timeout_s(body.timeout_ms),
    }


async def run_batch(svc: Services, body: BatchRequest, batch_id: str, session: str | None = None) -> dict[str, Any]:
    """The whole batch, answered in request order (the endpoint's body, and a task's result)."""
    items, ids = _prepare(svc, body, batch_id, session)
    results = await _runner(svc).run(items, batch_id=batch_id, **_options(svc, body, items))
    answers = [_item(i, result, ids[i]) for i, result in enumerate(results)]
    for answer in answers:
        del answer["index"]
    succeeded = sum(1 for answer in answers if answer["status"] == "ok")
    return {"results": answers, "succeeded": succeeded, "failed": len(answers) - succeeded}


# An event of the stream, with the response of the item it reports when that item succeeded.
_Event = tuple[ServerSentEvent, Mapping[str, Any] | None]


async def _events(
    svc: Services, items: list[InferenceCall | DistinferError], ids: list[str], options: dict[str, Any], batch_id: str
) -> AsyncGenerator[_Event, None]:
    """Each item's event as it finishes, then the summary; with the item's response when it succeeded."""
    started = time.perf_counter()
    succeeded = failed = 0
    limiter = svc.admission
    if limiter is not None:
        limiter.enter(force=True)  # checked before the answer began; held while the stream runs
    try:
        async for index, result in _runner(svc).stream(items, batch_id=batch_id, **options):
            if isinstance(result, Outcome):
                succeeded += 1
            else:
                failed += 1
            item = _item(index, result, ids[index])
            yield ServerSentEvent(dumps(item).decode(), event="item", id=str(index)), item.get("response")
        summary = {
            "succeeded": succeeded,
            "failed": failed,
            "total": len(items),
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        yield ServerSentEvent(json.dumps(summary), event="summary"), None
    finally:
        if limiter is not None:
            limiter.leave()


async def _first(events: AsyncIterator[_Event]) -> _Event:
    return await anext(events)


async def _sse(first: ServerSentEvent, rest: AsyncIterator[_Event]) -> AsyncIterator[ServerSentEvent]:
    yield first
    async for event, _ in rest:
        yield event


def batch_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=[INFERENCE_TAG])

    @router.post(
        "/inference/batch",
        summary="Run many inferences over the cluster; ?stream=true answers SSE, one event per item",
        responses={200: {"content": {"text/event-stream": {}}}, 413: {}, 422: {}, 429: {}},
    )
    async def batch(
        body: BatchRequest,
        request: Request,
        svc: Annotated[Services, Depends(services)],
        stream: Annotated[bool, Query(description="answer SSE: one event per finished item, then a summary")] = False,
    ) -> Response:
        batch_id = request_id_of(request)
        session = request.headers.get(SESSION_HEADER)
        if stream:
            with serving():
                items, ids = _prepare(svc, body, batch_id, session)
                if svc.admission is not None:
                    svc.admission.check()  # a 429 must come before the 200 of an event stream
            events = _events(svc, items, ids, _options(svc, body, items), batch_id)
            # CONTRACT §4's routing headers leave with the stream's start: they wait for the first
            # item to finish and say who served it (`none` if it failed); each event names its own.
            try:
                first, response = await unless_disconnected(request.receive, _first(events))
            except BaseException:
                await events.aclose()
                raise
            return EventSourceResponse(
                _sse(first, events),
                ping=PING_S,
                send_timeout=SEND_TIMEOUT_S,
                headers=served_headers(batch_id, [response]),
            )
        with serving(), admitted(svc.admission):
            answer = await unless_disconnected(request.receive, run_batch(svc, body, batch_id, session))
        served = served_headers(batch_id, (result.get("response") for result in answer["results"]))
        return Response(dumps(answer), media_type="application/json", headers=served)

    return router
