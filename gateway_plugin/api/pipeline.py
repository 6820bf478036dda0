"""`POST /inference/pipeline`: a DAG of stages, outputs feeding inputs (CONTRACT §4).

The whole graph is checked before any node is called (422 with every problem listed; 400 for a
malformed explicit input; 404 for a model nobody has). Answer::

    {"status": "completed" | "partial" | "failed",
     "stages": {"<id>": {"status": "ok" | "error" | "skipped", "response" | "error", "model",
                         "latency_ms", "started_ms", "finished_ms", "attempts"}},
     "output": <the last listed stage's response, or null>, "latency_ms": t}

`started_ms` / `finished_ms` count from the start of the pipeline, so overlapping stages show.
"""

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from balancer.pool import UnknownStrategy
from gateway_plugin.admission import admitted
from gateway_plugin.api.disconnect import unless_disconnected
from gateway_plugin.api.inference import model_info, outcome_body, unknown_model
from gateway_plugin.api.routing import ProblemRoute, request_id_of
from gateway_plugin.api.served import INFERENCE_TAG, served_headers, serving
from gateway_plugin.dispatch import InferenceCall
from gateway_plugin.errors import UnknownModel, Unprocessable, problem_body
from gateway_plugin.inputs import check_batch_size, to_tensors
from gateway_plugin.orchestration import PipelineRunner, Stage, StageResult, validate
from gateway_plugin.parameters import ClientParameters
from gateway_plugin.services import Services, ServicesDependency
from worker.engine import check_inputs
from worker.protocol import Tensor, dumps

__all__ = ["PipelineRequest", "StageRequest", "pipeline_router", "plan_pipeline", "run_pipeline"]

_ID = r"^[A-Za-z0-9_\-]{1,64}$"
_MODEL = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_MAX_EDGES = 256  # per stage: dependencies, mapped inputs, requested outputs


class StageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=_ID)
    model: str = Field(min_length=1, max_length=128, pattern=_MODEL)
    inputs: Any = Field(default=None, description="explicit inputs: v2 tensors, or a plain value (one-input model)")
    # Bounded: the graph is checked on the event loop before anything runs.
    depends_on: list[Annotated[str, Field(pattern=_ID)]] = Field(default=[], max_length=_MAX_EDGES)
    input_map: dict[str, str] = Field(default={}, max_length=_MAX_EDGES, description='{"<input>": "<stage>.<output>"}')
    timeout_ms: int | None = Field(default=None, gt=0, description="per attempt")
    retries: int = Field(default=0, ge=0, le=5, description="further attempts after a 5xx/timeout")
    dependency: Literal["hard", "soft"] = Field(
        default="hard", description="soft: run even when an upstream failed, without its inputs"
    )
    outputs: list[str] | None = Field(default=None, max_length=_MAX_EDGES)
    parameters: ClientParameters = {}
    strategy: str | None = None


class PipelineRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "stages": [
                        {"id": "a", "model": "digits_a", "inputs": [[0.0] * 8] * 8},
                        {"id": "b", "model": "digits_b", "inputs": [[0.0] * 8] * 8},
                    ]
                }
            ]
        },
    )

    stages: list[StageRequest] = Field(min_length=1)
    timeout_ms: int | None = Field(
        default=None,
        gt=0,
        description="deadline for the whole pipeline, retries included (at most, and by default,"
        " DISTINFER_MAX_BATCH_PIPELINE_TIMEOUT_MS); a stage whose turn comes after it does not run",
    )


def _stage(svc: Services, spec: StageRequest, request_id: str) -> Stage:
    if (missing := unknown_model(svc, spec.model)) is not None:
        raise UnknownModel(f"stage {spec.id!r}: {missing.detail}")
    info = model_info(svc, spec.model)
    tensors: list[Tensor] = [] if spec.inputs is None else to_tensors(spec.inputs, info, svc.limits)
    if info is not None and tensors:
        # As /inference checks its inputs, before anything runs (400, 413); the inputs a stage takes
        # from others are checked by `validate` (422) and by their node.
        check_batch_size(info, tensors, svc.settings.limits.max_batch_size)
        given = {tensor.name for tensor in tensors}
        specs = [input_spec for input_spec in info.inputs if input_spec.name in given]
        named = {input_spec.name for input_spec in specs}
        check_inputs(info.name, specs, [t for t in tensors if t.name in named], max_batch_size=info.max_batch_size)
    try:
        svc.pool.check_strategy(spec.strategy)
    except UnknownStrategy as exc:
        raise Unprocessable(f"stage {spec.id!r}: {exc}") from exc
    dispatch = svc.settings.dispatch
    timeout_ms = min(spec.timeout_ms or dispatch.default_timeout_ms, dispatch.max_timeout_ms)
    call = InferenceCall(
        model=spec.model,
        inputs=tensors,
        request_id=f"{request_id}-{spec.id}",
        timeout_s=timeout_ms / 1000,
        outputs=spec.outputs,
        parameters=spec.parameters,
        strategy=spec.strategy,
    )
    return Stage(
        id=spec.id,
        call=call,
        depends_on=tuple(spec.depends_on),
        input_map=dict(spec.input_map),
        retries=spec.retries,
        soft=spec.dependency == "soft",
        declared=frozenset() if info is None else frozenset(input_spec.name for input_spec in info.inputs),
    )


def _stage_body(spec: StageRequest, result: StageResult, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": result.status,
        "model": spec.model,
        "latency_ms": round((result.finished_s - result.started_s) * 1000, 3),
        "started_ms": round(result.started_s * 1000, 3),
        "finished_ms": round(result.finished_s * 1000, 3),
        "attempts": result.attempts,
    }
    stage_request_id = f"{request_id}-{spec.id}"
    if result.outcome is not None:
        body["response"] = outcome_body(result.outcome, stage_request_id)
    if result.error is not None:
        body["error"] = problem_body(result.error, stage_request_id)
    return body


def plan_pipeline(svc: Services, body: PipelineRequest, request_id: str) -> list[Stage]:
    """The stages, checked as a whole; raises before anything runs (also when a task is submitted)."""
    limit = svc.settings.limits.max_pipeline_stages
    if len(body.stages) > limit:
        raise Unprocessable(f"a pipeline has at most {limit} stages (DISTINFER_MAX_PIPELINE_STAGES)")
    stages = [_stage(svc, spec, request_id) for spec in body.stages]
    validate(stages, lambda model: model_info(svc, model))
    return stages


async def run_pipeline(svc: Services, body: PipelineRequest, request_id: str) -> dict[str, Any]:
    """Validate the whole graph, then run it (the endpoint's body, and a task's result)."""
    stages = plan_pipeline(svc, body, request_id)
    timeout_s = svc.settings.dispatch.whole_timeout_s(body.timeout_ms)
    started = time.perf_counter()
    results = await PipelineRunner(svc.dispatcher.infer).run(stages, timeout_s=timeout_s)
    bodies = {spec.id: _stage_body(spec, results[spec.id], request_id) for spec in body.stages}
    ok = sum(1 for result in results.values() if result.status == "ok")
    status = "completed" if ok == len(results) else ("failed" if ok == 0 else "partial")
    last = bodies[body.stages[-1].id]
    return {
        "status": status,
        "stages": bodies,
        "output": last.get("response"),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
    }


def pipeline_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=[INFERENCE_TAG])

    @router.post(
        "/inference/pipeline",
        summary="Run a DAG of stages; independent stages run at the same time",
        responses={400: {}, 404: {}, 422: {}, 429: {}},
    )
    async def pipeline(
        body: PipelineRequest, request: Request, svc: Annotated[Services, Depends(services)]
    ) -> Response:
        request_id = request_id_of(request)
        with serving(), admitted(svc.admission):
            answer = await unless_disconnected(request.receive, run_pipeline(svc, body, request_id))
        served = served_headers(request_id, (stage.get("response") for stage in answer["stages"].values()))
        return Response(dumps(answer), media_type="application/json", headers=served)

    return router
