"""`/tasks`: any request kind, run asynchronously with a priority (CONTRACT §4).

    POST   /tasks        {"kind", "request", "priority"} -> 202 {"task_id", "status"} + Location; 429 when full
    GET    /tasks        ?status=&limit= -> {"tasks": [...], "queue": {...}}   (newest first, no results)
    GET    /tasks/{id}   the task: status, result or error, attempts, timings
    DELETE /tasks/{id}   cancel (a running task's node calls are cancelled); the task as it is now

The request is checked when it is submitted (422/400/404 then, not later in the task). A task is
visible only to its submitter (the token's `sub`), and to callers with the `admin` scope.
"""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from gateway_plugin.api.batch import BatchRequest, check_batch, run_batch
from gateway_plugin.api.inference import build_call, outcome_body
from gateway_plugin.api.parallel import ParallelRequest, check_parallel, run_parallel
from gateway_plugin.api.pipeline import PipelineRequest, plan_pipeline, run_pipeline
from gateway_plugin.api.routing import ProblemRoute
from gateway_plugin.api.schemas import InferenceRequest, Priority
from gateway_plugin.auth import Principal
from gateway_plugin.errors import Forbidden, NoCapacity, Unprocessable
from gateway_plugin.services import Services, ServicesDependency
from gateway_plugin.tasks import ANONYMOUS, Caller, TaskRunner, TaskService, TaskStatus
from worker.protocol import dumps

__all__ = ["TaskRequest", "caller_of", "task_runner", "tasks_router"]

TaskKind = Literal["inference", "batch", "parallel", "pipeline"]
_SCHEMAS: dict[str, type[BaseModel]] = {
    "inference": InferenceRequest,
    "batch": BatchRequest,
    "parallel": ParallelRequest,
    "pipeline": PipelineRequest,
}
PrincipalDependency = Callable[..., Awaitable[Principal]]


class TaskRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"kind": "inference", "request": {"model": "digits", "inputs": [[0.0] * 8] * 8}}]
        },
    )

    kind: TaskKind = "inference"
    request: dict[str, Any] = Field(description="the body the synchronous endpoint of this kind takes")
    priority: Priority | None = Field(
        default=None, description="high, normal or low (default: the request's, else normal)"
    )


def caller_of(principal: Principal) -> Caller:
    """Tasks belong to the token's subject; with auth disabled everyone is one anonymous caller.

    A verified token without a `sub` names nobody: were such tokens one shared caller, every
    holder of one would see and cancel the others' tasks. They are refused here instead.
    """
    if principal.anonymous:
        return Caller(ANONYMOUS.subject, admin=principal.is_admin)
    if not principal.sub:
        raise Forbidden("tasks belong to a token's subject, and this token has no 'sub' claim")
    return Caller(principal.sub, admin=principal.is_admin)


def _parse(kind: str, request: dict[str, Any]) -> BaseModel:
    try:
        return _SCHEMAS[kind].model_validate(request)
    except ValidationError as exc:
        errors = [
            {"loc": ["request", *err["loc"]], "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_url=False)
        ]
        where = ".".join(str(part) for part in errors[0]["loc"])
        raise Unprocessable(f"{where}: {errors[0]['msg']}", errors=errors[:20]) from exc


def _check(svc: Services, parsed: BaseModel) -> None:
    """What the synchronous endpoint would refuse at once, refused at submission."""
    if isinstance(parsed, InferenceRequest):
        build_call(svc, parsed, "check")
    elif isinstance(parsed, BatchRequest):
        check_batch(svc, parsed)
    elif isinstance(parsed, ParallelRequest):
        check_parallel(svc, parsed, inputs=True)
    elif isinstance(parsed, PipelineRequest):
        plan_pipeline(svc, parsed, "check")


async def run_task(svc: Services, kind: str, request: dict[str, Any], task_id: str) -> dict[str, Any]:
    parsed = _parse(kind, request)
    if isinstance(parsed, InferenceRequest):
        request_id = parsed.request_id or task_id
        return outcome_body(await svc.dispatcher.infer(build_call(svc, parsed, request_id)), request_id)
    if isinstance(parsed, BatchRequest):
        return await run_batch(svc, parsed, task_id)
    if isinstance(parsed, ParallelRequest):
        return await run_parallel(svc, parsed, task_id)
    assert isinstance(parsed, PipelineRequest)
    return await run_pipeline(svc, parsed, task_id)


def task_runner(services: ServicesDependency) -> TaskRunner:
    """What the task workers call; the services are looked up when a task runs."""

    async def run(kind: str, request: dict[str, Any], task_id: str) -> dict[str, Any]:
        return await run_task(await services(), kind, request, task_id)

    return run


def _tasks(svc: Services) -> TaskService:
    if svc.tasks is None:
        raise NoCapacity("tasks are not available on this gateway")
    return svc.tasks


def tasks_router(
    services: ServicesDependency, principal: PrincipalDependency, route_class: type[ProblemRoute] = ProblemRoute
) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=["tasks"])

    async def caller(who: Annotated[Principal, Depends(principal)]) -> Caller:
        return caller_of(who)

    SvcDep = Annotated[Services, Depends(services)]
    CallerDep = Annotated[Caller, Depends(caller)]
    TaskId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]

    @router.post(
        "/tasks",
        status_code=202,
        summary="Submit a request of any kind to run asynchronously, with a priority",
        responses={202: {}, 400: {}, 403: {}, 404: {}, 422: {}, 429: {}, 503: {}},
    )
    async def submit(body: TaskRequest, request: Request, svc: SvcDep, who: CallerDep) -> Response:
        tasks = _tasks(svc)
        parsed = _parse(body.kind, body.request)
        _check(svc, parsed)
        inner = parsed.priority if isinstance(parsed, InferenceRequest) and "priority" in body.request else None
        size = len(await request.body())  # read already (under the body cap): Starlette keeps it
        record = await tasks.submit(body.kind, body.request, body.priority or inner or "normal", who, size=size)
        location = f"{request.url.path.rstrip('/')}/{record.task_id}"
        return Response(
            dumps({"task_id": record.task_id, "status": record.status.value}),
            status_code=202,
            media_type="application/json",
            headers={"Location": location},
        )

    @router.get("/tasks", summary="Tasks of the caller (all of them for admins), newest first")
    async def list_tasks(
        svc: SvcDep,
        who: CallerDep,
        status: Annotated[TaskStatus | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Response:
        tasks = _tasks(svc)
        found = await tasks.find(who, status=status, limit=limit)
        queue = (await tasks.stats()).as_dict()
        body = {"tasks": [record.public(full=False) for record in found], "queue": queue}
        return Response(dumps(body), media_type="application/json")

    @router.get("/tasks/{task_id}", summary="One task: status, result or error, attempts, timings")
    async def get_task(task_id: TaskId, svc: SvcDep, who: CallerDep) -> Response:
        record = await _tasks(svc).get(task_id, who)
        return Response(dumps(record.public()), media_type="application/json")

    @router.delete("/tasks/{task_id}", summary="Cancel a pending or running task")
    async def cancel_task(task_id: TaskId, svc: SvcDep, who: CallerDep) -> Response:
        record = await _tasks(svc).cancel(task_id, who)
        return Response(dumps(record.public()), media_type="application/json")

    return router
