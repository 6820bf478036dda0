"""The node: Open Inference Protocol (KServe v2) REST over a model repository.

Endpoints (KServe v2 + Triton's model repository index extension)::

    GET  /v2                                  server metadata (extensions: binary_tensor_data, ...)
    GET  /v2/health/live | /v2/health/ready   200 when true, empty body
    POST /v2/repository/index                 models and their state
    POST /v2/repository/models/{m}/load       (re)load a model folder (--model-control-mode explicit)
    POST /v2/repository/models/{m}/unload     stop serving it (--model-control-mode explicit)
    GET  /v2/models/{m}[/versions/{v}]        model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready  200 when ready
    POST /v2/models/{m}[/versions/{v}]/infer  JSON or binary tensors, both ways
    GET  /metrics                             Prometheus metrics (worker.telemetry)
    POST /v2/models/{m}/generate_stream       SSE tokens of a generative model (worker.streaming)

With a node token, every call but health and /metrics must bear it (worker.nodeauth).

Errors are v2 error JSON, `{"error": "..."}`, with a 4xx status for anything the request got wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from worker.bodies import read_body
from worker.concurrency import SLOT_RELEASE, ConcurrencyLimiter, InferenceSlots
from worker.engine import InferenceEngine
from worker.errors import InvalidInput, ModelNotFound, WorkerError
from worker.fast_lane import FastLane
from worker.faults import FaultInjector, FaultSpec, FaultState
from worker.model_control import ModelControl
from worker.nodeauth import NodeTokenMiddleware
from worker.protocol import (
    HEADER_LENGTH,
    Limits,
    binary_outputs,
    decode_request,
    encode_response,
    parse_header_length,
)
from worker.protocol.models import MetadataTensor, ModelMetadata, RepositoryEntry, ServerMetadata
from worker.registration import ConsulRegistration, consul_registration
from worker.repository import ModelRepository
from worker.sharding.forward import FORWARD_PARAMETER, Forwarder
from worker.streaming import GenerationService, generate_router
from worker.telemetry import NodeTelemetry

__all__ = ["EXTENSIONS", "NodeConfig", "create_node_app"]

log = logging.getLogger(__name__)

SERVER_NAME = "distinfer"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data", "model_repository"]


@dataclass(frozen=True)
class NodeConfig:
    model_repository: Path
    node_id: str
    threads: int = 0
    workers: int = 2
    max_body_bytes: int = 64 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    models: frozenset[str] | None = None
    batching: str = "auto"  # auto: as config.json says; on: every batchable model; off: none
    labels: Mapping[str, str] = field(default_factory=dict)  # advertised in GET /v2 (worker.hardware)
    faults: FaultSpec | None = None  # test knobs (worker.faults); None: no fault middleware
    fault_control: bool = False  # serve GET|PUT /v2/faults
    fault_seed: int | None = None
    node_token: str | None = None  # when set, every call but health and /metrics must bear it
    max_new_tokens: int = 65_536  # per generate_stream call (the gateway's own limit is lower by default)
    consul: ConsulRegistration | None = None  # register with this Consul agent while serving
    memory_cap_bytes: int | None = None  # models over it are refused (worker.repository); sharding: issue 10
    forward_peers: frozenset[str] | None = None  # node-to-node hops of sharded models (worker.sharding.forward)
    max_concurrency: int = 0  # inference requests served at once, the rest wait in order (worker.concurrency); 0: any
    model_control: str = "none"  # explicit: load and unload models while serving (worker.model_control)


class _State:
    """What the lifespan builds and the handlers use; one per app, never global."""

    engine: InferenceEngine | None = None
    generation: GenerationService | None = None
    control: ModelControl | None = None


# Load and unload bodies carry a few parameters; a config or file override, which is refused, could be large.
_CONTROL_BODY_BYTES = 1024 * 1024

# Bodies above this are decoded in a thread: a 10 MB nested JSON body took 1.3 s of the event loop,
# long enough for the gateway's 1 s health probes to fail. Below it a thread hop costs more than it saves.
_DECODE_OFF_LOOP_BYTES = 256 * 1024


def _error(exc: WorkerError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=dict(exc.headers) or None)


def _metadata(engine: InferenceEngine, name: str) -> ModelMetadata:
    config = engine.repository.get(name).config
    return ModelMetadata(
        name=config.name,
        versions=[config.version],
        platform=config.platform_name,
        inputs=[MetadataTensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in config.inputs],
        outputs=[MetadataTensor(name=s.name, datatype=s.datatype, shape=list(s.shape)) for s in config.outputs],
        parameters={"max_batch_size": config.max_batch_size, "labels": list(config.labels)},
    )


def create_node_app(config: NodeConfig, *, telemetry: NodeTelemetry | None = None) -> FastAPI:
    state = _State()
    forwarder = Forwarder(config.forward_peers, token=config.node_token)
    telemetry = telemetry or NodeTelemetry(node_id=config.node_id)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Models load here, once, never per request.
        repository = ModelRepository.load(
            config.model_repository,
            threads=config.threads,
            only=config.models,
            memory_cap_bytes=config.memory_cap_bytes,
        )
        with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="infer") as executor:
            engine = state.engine = InferenceEngine(repository, executor)
            # Every folder gets its own metric label, so that a model loaded later is not `unknown`.
            names = {m.config.name for m in repository} | set(repository.folder_names())
            telemetry.serve(names, lambda: {n: b.depth for n, b in engine.batchers.items()})
            state.generation = GenerationService({}, max_tokens=config.max_new_tokens)
            control = ModelControl(
                repository,
                engine,
                state.generation,
                executor,
                telemetry,
                batching=config.batching,
                workers=config.workers,
                explicit=config.model_control == "explicit",
            )
            control.start()
            state.control = control
            log.info(
                "node %s serving %s (batching %s)",
                config.node_id,
                sorted(m.config.name for m in repository),
                sorted(engine.batchers),
            )
            try:

                def served() -> dict[str, str]:
                    return {m.config.name: m.config.runtime for m in repository}

                async with consul_registration(config.consul, config.node_id, served) as registration:
                    if registration is not None:
                        control.on_change = registration.refresh  # a load or unload updates tags and Meta
                    yield
            finally:
                state.engine = None
                state.generation = None
                state.control = None
                await control.close()
                repository.close()
                await forwarder.close()

    app = FastAPI(title="distinfer node", version=SERVER_VERSION, lifespan=lifespan)

    async def infer_response(model: str, version: str | None, request: Request) -> Response:
        with telemetry.request(model, request.headers.get("x-request-id"), request.headers.get("traceparent")):
            eng = engine()
            _check_version(_metadata(eng, model), version)
            body = await read_body(request, config.max_body_bytes)
            header_length = parse_header_length(request.headers.get(HEADER_LENGTH))
            if len(body) > _DECODE_OFF_LOOP_BYTES:  # tens of MB of JSON take seconds: not on the loop
                decoded = await asyncio.to_thread(decode_request, body, header_length, config.limits)
            else:
                decoded = decode_request(body, header_length, config.limits)
            wanted = [out.name for out in decoded.outputs] if decoded.outputs else None
            if FORWARD_PARAMETER in decoded.parameters:  # a sharded model's stage that hands on to the next node
                model_config, outputs = await forwarder.infer(
                    eng, model, decoded, local_done=request.scope.get(SLOT_RELEASE), incoming=request.headers
                )
            else:
                model_config, outputs = await eng.infer(model, decoded.inputs, wanted)
            encoded = encode_response(
                model_name=model_config.name,
                model_version=model_config.version,
                request_id=decoded.id,
                outputs=outputs,
                binary=binary_outputs(decoded),
            )
        headers = {HEADER_LENGTH: str(encoded.header_length)} if encoded.header_length is not None else None
        return Response(encoded.body, media_type=encoded.content_type, headers=headers)

    async def infer_lane(scope: Scope, receive: Receive, send: Send) -> None:
        """`infer` as plain ASGI in the fast lane; errors as the app's WorkerError handler renders them."""
        request = Request(scope, receive)
        params = scope["path_params"]
        try:
            response = await infer_response(params["model"], params.get("version"), request)
        except WorkerError as exc:
            response = _error(exc)
        await response(scope, receive, send)

    # Added first, so innermost: the node token, faults, the concurrency limit and spans still wrap it.
    lane = [("/v2/models/{model}/infer", infer_lane), ("/v2/models/{model}/versions/{version}/infer", infer_lane)]
    app.add_middleware(FastLane, routes=lane)
    telemetry.instrument(app)

    @app.exception_handler(WorkerError)
    async def _on_worker_error(_: Request, exc: WorkerError) -> JSONResponse:
        return _error(exc)

    # v2 clients read `{"error": ...}` from every failed call (tritonclient fails on FastAPI's `detail`).
    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())) or "request"
        return JSONResponse({"error": f"invalid request: {where}: {first.get('msg', 'invalid')}"}, status_code=400)

    def engine() -> InferenceEngine:
        if state.engine is None:
            raise WorkerError("node is not started")
        return state.engine

    def model_control() -> ModelControl:
        if state.control is None:
            raise WorkerError("node is not started")
        return state.control

    def generation() -> GenerationService:
        if state.generation is None:
            raise WorkerError("node is not started")
        return state.generation

    app.include_router(generate_router(generation, lambda name: name in engine().repository, config.max_body_bytes))

    @app.get("/v2")
    async def server_metadata() -> dict[str, object]:
        meta = ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)
        return {**meta.model_dump(), "node_id": config.node_id, "labels": dict(config.labels)}

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if state.engine is not None else 503)

    @app.post("/v2/repository/index")
    async def repository_index() -> list[dict[str, object]]:
        repo = engine().repository
        rows = [RepositoryEntry(name=m.config.name, version=m.config.version, state="READY") for m in repo]
        rows += [RepositoryEntry(name=n, state="UNAVAILABLE", reason=why) for n, why in repo.unavailable.items()]
        control = model_control()
        if control.explicit:  # what `load` can bring in, as Triton lists a repository's models
            rows += [RepositoryEntry(name=n, state="UNAVAILABLE", reason="not loaded") for n in control.not_loaded()]
        return [row.model_dump(exclude_none=True) for row in sorted(rows, key=lambda row: row.name)]

    @app.post("/v2/repository/models/{model}/load")
    async def load_model(model: str, request: Request) -> Response:
        """Load the repository's model folder `model`, or reload it from disk (`--model-control-mode explicit`)."""
        parameters = await _control_parameters(request)
        if overrides := sorted(k for k in parameters if k == "config" or k.startswith("file:")):
            raise InvalidInput(f"load parameter {overrides[0]!r} is not supported: change the model's folder instead")
        await model_control().load(model)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{model}/unload")
    async def unload_model(model: str, request: Request) -> Response:
        """Stop serving `model`; calls already running finish (`--model-control-mode explicit`)."""
        await _control_parameters(request)  # unload_dependents: no model here depends on another
        await model_control().unload(model)
        return Response(status_code=200)

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str | None = None) -> ModelMetadata:
        meta = _metadata(engine(), model)
        _check_version(meta, version)
        return meta

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None) -> Response:
        _check_version(_metadata(engine(), model), version)
        return Response(status_code=200)

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: Request, version: str | None = None) -> Response:
        """JSON or binary tensors, both ways. Requests are served by `infer_lane` (FastLane); this documents them."""
        return await infer_response(model, version, request)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = telemetry.exposition.render()
        return Response(body, media_type=content_type)

    if config.faults is not None and (config.faults.active or config.fault_control):
        faults = FaultState(config.faults, rng=random.Random(config.fault_seed))
        app.add_middleware(FaultInjector, state=faults, control=config.fault_control)
    if config.max_concurrency:  # outside the faults: an injected latency counts as model time in the slot
        app.add_middleware(ConcurrencyLimiter, slots=InferenceSlots(config.max_concurrency))
    if config.node_token:  # added last, so outermost: nothing (fault control, a slot) before the token check
        app.add_middleware(NodeTokenMiddleware, token=config.node_token)
    return app


async def _control_parameters(request: Request) -> dict[str, object]:
    """The `parameters` of a load or unload body (tritonclient sends none, `{}` or a few)."""
    body = await read_body(request, _CONTROL_BODY_BYTES)
    if not body.strip():
        return {}
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise InvalidInput(f"the body is not JSON: {exc}") from None
    parameters = message.get("parameters", {}) if isinstance(message, dict) else None
    if not isinstance(parameters, dict):
        raise InvalidInput("the body must be a JSON object whose `parameters` is an object")
    return parameters


def _check_version(meta: ModelMetadata, version: str | None) -> None:
    if version is not None and version not in (meta.versions or []):
        raise ModelNotFound(f"model {meta.name!r} has no version {version!r}")
