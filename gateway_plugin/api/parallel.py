"""`POST /inference/parallel`: the same input through several models at once, aggregated.

Answer (CONTRACT §4)::

    {"aggregation", "output": [tensors] | null, "label", "votes", "answered", "requested",
     "min_responses", "winner", "contributions", "timed_out", "latency_ms",
     "responses": [{"model", "status": "ok" | "error" | "cancelled", "response" | "error"}]}

When no model answers, or fewer than `min_responses` do (agree, for votes) before the deadline,
the answer is a problem (503, or 504 when time ran out) that still lists every model's response.
"""

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from gateway_plugin.admission import admitted
from gateway_plugin.api.disconnect import unless_disconnected
from gateway_plugin.api.inference import build_call, model_info, outcome_body, unknown_model
from gateway_plugin.api.routing import ProblemRoute, request_id_of
from gateway_plugin.api.schemas import InferenceRequest
from gateway_plugin.api.served import INFERENCE_TAG, served_headers, serving
from gateway_plugin.dispatch import InferenceCall
from gateway_plugin.errors import (
    BadRequest,
    DeadlineExceeded,
    DistinferError,
    NoCapacity,
    NoConsensus,
    Unprocessable,
    from_worker,
    problem_body,
)
from gateway_plugin.inputs import is_tensor_list, to_tensors
from gateway_plugin.orchestration import Aggregation, Answer, aggregate, fan_out
from gateway_plugin.orchestration.aggregations import quorum_met, quorum_reached
from gateway_plugin.parameters import ClientParameters
from gateway_plugin.services import Services, ServicesDependency
from worker.errors import WorkerError
from worker.protocol import Tensor, dumps
from worker.protocol.codec import json_tensor

__all__ = ["ParallelRequest", "check_parallel", "parallel_router", "run_parallel"]

_MODEL = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_WEIGHTED = frozenset({"weighted_average", "ensemble"})
_READS_OUTPUT = frozenset({"majority_vote", "ensemble"})  # `output` names the tensor they read


class ParallelRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "models": ["digits_a", "digits_b", "digits_c"],
                    "inputs": [[0.0] * 8] * 8,
                    "aggregation": "majority_vote",
                    "min_responses": 2,
                    "timeout_ms": 2000,
                }
            ]
        },
    )

    models: list[Annotated[str, Field(min_length=1, max_length=128, pattern=_MODEL)]] = Field(min_length=1)
    inputs: Any
    aggregation: Aggregation = "all"
    # Finite and bounded: weights of 1e308 summed to inf, and the average came out NaN.
    weights: dict[str, Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]] = Field(
        default={}, description="per model; default 1"
    )
    min_responses: int | None = Field(default=None, ge=1, description="quorum: answer once k answered (votes: agree)")
    timeout_ms: int | None = Field(default=None, gt=0, description="deadline for the whole fan-out")
    output: str | None = Field(default=None, description="output tensor that votes and ensembles read (default first)")
    parameters: ClientParameters = {}
    strategy: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ParallelRequest":
        if len(set(self.models)) != len(self.models):
            raise ValueError("models must not repeat")
        if unknown := sorted(set(self.weights) - set(self.models)):
            raise ValueError(f"weights name models that are not in `models`: {unknown}")
        if self.min_responses is not None and self.min_responses > len(self.models):
            raise ValueError("min_responses cannot exceed the number of models")
        if self.aggregation in _WEIGHTED and sum(self.weights.get(m, 1.0) for m in self.models) <= 0:
            # Known before anything runs (it was a 422 after every model had been called).
            raise ValueError(f"the weights of the models add up to 0: {self.aggregation} has nothing to weigh")
        return self


def _prepare(
    svc: Services, body: ParallelRequest, request_id: str, timeout_ms: int
) -> tuple[dict[str, InferenceCall], dict[str, DistinferError]]:
    calls: dict[str, InferenceCall] = {}
    failed: dict[str, DistinferError] = {}
    # v2 tensors decode alike for every model: once, not once per model (16 models held 16 copies).
    # Plain values take their shape and type from each model, so they are read per model.
    shared: list[Tensor] | None = None
    unreadable: DistinferError | None = None
    if is_tensor_list(body.inputs):
        try:
            shared = to_tensors(body.inputs, None, svc.limits)
        except DistinferError as exc:  # each model's error, as if each had read them
            unreadable = exc
        except WorkerError as exc:
            unreadable = from_worker(exc)
    for model in body.models:
        if (missing := unknown_model(svc, model)) is not None:
            failed[model] = missing
            continue
        if unreadable is not None:
            failed[model] = unreadable
            continue
        item = InferenceRequest(
            model=model,
            inputs=body.inputs,
            parameters=body.parameters,
            strategy=body.strategy,
            timeout_ms=timeout_ms,
        )
        try:
            calls[model] = build_call(svc, item, f"{request_id}-{model}", decoded=shared)
        except DistinferError as exc:
            failed[model] = exc
        except WorkerError as exc:
            failed[model] = from_worker(exc)
    return calls, failed


def _response(answer: Answer, request_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": answer.model, "status": answer.status}
    if answer.outcome is not None:
        entry["response"] = outcome_body(answer.outcome, f"{request_id}-{answer.model}")
    if answer.error is not None:
        entry["error"] = problem_body(answer.error, request_id)
    return entry


def check_parallel(svc: Services, body: ParallelRequest, *, inputs: bool = False) -> None:
    """Refuse what the endpoint refuses before it calls a node; `inputs`: also every model's reading
    of the inputs (for a task, checked at submission: the endpoint reads them as it runs)."""
    limit = svc.settings.orchestration.max_parallel_models
    if len(body.models) > limit:
        raise Unprocessable(f"at most {limit} models at once (DISTINFER_MAX_PARALLEL_MODELS)")
    if body.output is not None and body.aggregation in _READS_OUTPUT:
        # A name no model has was found only after the fan-out. Only when no model can have it: one
        # that lacks it may still be left out (it fails, or the quorum is met without it).
        infos = [model_info(svc, model) for model in body.models]
        if all(info is not None and body.output not in {spec.name for spec in info.outputs} for info in infos):
            raise Unprocessable(f"none of the models {body.models} has an output {body.output!r}")
    if inputs:
        calls, failed = _prepare(svc, body, "check", svc.settings.dispatch.default_timeout_ms)
        if not calls:
            _raise_if_refused(list(failed.values()), {})


def _raise_if_refused(errors: list[DistinferError], facts: dict[str, Any]) -> None:
    """Every model refused the request: a client error, which retrying will not mend (not a 503)."""
    if errors and all(e.status < 500 for e in errors):
        if len({e.status for e in errors}) == 1:
            errors[0].extra.update(facts)  # refused alike: that is the answer
            raise errors[0]
        raise BadRequest(f"every model refused the request ({len(errors)} errors; see responses)", **facts)


async def run_parallel(svc: Services, body: ParallelRequest, request_id: str) -> dict[str, Any]:
    """Fan out, wait for the quorum or the deadline, aggregate (the endpoint's body, and a task's result)."""
    check_parallel(svc, body)
    dispatch = svc.settings.dispatch
    timeout_ms = min(body.timeout_ms or dispatch.default_timeout_ms, dispatch.max_timeout_ms)
    started = time.perf_counter()
    calls, failed = _prepare(svc, body, request_id, timeout_ms)
    labels = {model: info.labels for model in body.models if (info := model_info(svc, model)) is not None}

    def reached(answers: list[Answer]) -> bool:
        return quorum_reached(
            body.aggregation,
            answers,
            expected=len(body.models),
            min_responses=body.min_responses,
            output=body.output,
            labels=labels,
        )

    fanned = await fan_out(
        svc.dispatcher.infer, body.models, calls, failed, reached=reached, timeout_s=timeout_ms / 1000
    )
    responses = [_response(answer, request_id) for answer in fanned.answers]
    answered = sum(1 for answer in fanned.answers if answer.status == "ok")
    facts: dict[str, Any] = {"answered": answered, "requested": len(body.models), "responses": responses}
    met = quorum_met(
        body.aggregation,
        fanned.answers,
        min_responses=body.min_responses,
        output=body.output,
        labels=labels,
        final=True,
    )
    errors = [answer.error for answer in fanned.answers if answer.error is not None]
    if answered == 0:
        _raise_if_refused(errors, facts)
    if not met:
        detail = f"{answered} of {len(body.models)} models answered"
        if body.min_responses is not None:
            detail += f"; the quorum is {body.min_responses}"
            detail += " agreeing" if body.aggregation == "majority_vote" else ""
        # Out of time, whether the fan-out's own deadline ended it or each call's ran out first.
        late = fanned.timed_out or (answered == 0 and errors and all(e.status == 504 for e in errors))
        if not late and body.min_responses is not None and answered >= body.min_responses:
            # Enough answers for the quorum, but they disagree: asking again gets the same votes,
            # so not the 503 that clients retry.
            raise NoConsensus(detail, **facts)
        raise (DeadlineExceeded if late else NoCapacity)(detail, **facts)
    result = aggregate(
        body.aggregation, fanned.answers, order=body.models, weights=body.weights, output=body.output, labels=labels
    )
    return {
        "aggregation": body.aggregation,
        "output": None if result.output is None else [json_tensor(t) for t in result.output],
        "label": result.label,
        "votes": result.votes,
        "winner": result.winner,
        "contributions": result.contributions,
        "min_responses": body.min_responses,
        "timed_out": fanned.timed_out,
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        **facts,
    }


def parallel_router(services: ServicesDependency, route_class: type[ProblemRoute] = ProblemRoute) -> APIRouter:
    router = APIRouter(route_class=route_class, tags=[INFERENCE_TAG])

    @router.post(
        "/inference/parallel",
        summary="Run one input through several models at once and aggregate the answers",
        responses={400: {}, 409: {}, 422: {}, 429: {}, 503: {}, 504: {}},
    )
    async def parallel(
        body: ParallelRequest, request: Request, svc: Annotated[Services, Depends(services)]
    ) -> Response:
        request_id = request_id_of(request)
        with serving(), admitted(svc.admission):
            answer = await unless_disconnected(request.receive, run_parallel(svc, body, request_id))
        served = served_headers(request_id, (entry.get("response") for entry in answer["responses"]))
        return Response(dumps(answer), media_type="application/json", headers=served)

    return router
