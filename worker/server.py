"""The node: Open Inference Protocol (KServe v2) REST over a model repository.

Endpoints (KServe v2 + Triton's model repository index extension)::

    GET  /v2                                  server metadata (extensions: binary_tensor_data, ...)
    GET  /v2/health/live | /v2/health/ready   200 when true, empty body
    POST /v2/repository/index                 models and their state
    GET  /v2/models/{m}[/versions/{v}]        model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready  200 when ready
    POST /v2/models/{m}[/versions/{v}]/infer  JSON or binary tensors, both ways

Errors are v2 error JSON, `{"error": "..."}`, with a 4xx status for anything the request got wrong.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from worker.batching import DynamicBatcher
from worker.bodies import read_body
from worker.engine import InferenceEngine, batch_policy
from worker.errors import ModelNotFound, WorkerError
from worker.protocol import (
    HEADER_LENGTH,
    Limits,
    binary_outputs,
    decode_request,
    encode_response,
    parse_header_length,
)
from worker.protocol.models import MetadataTensor, ModelMetadata, RepositoryEntry, ServerMetadata
from worker.repository import ModelRepository

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


class _State:
    """What the lifespan builds and the handlers use; one per app, never global."""

    engine: InferenceEngine | None = None


def _error(exc: WorkerError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


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


def create_node_app(config: NodeConfig) -> FastAPI:
    state = _State()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Models load here, once, never per request.
        repository = ModelRepository.load(config.model_repository, threads=config.threads, only=config.models)
        with ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="infer") as executor:
            batchers = {}
            for model in repository:
                policy = batch_policy(model.config, config.batching, max_concurrent=config.workers)
                if policy is not None:
                    batchers[model.config.name] = DynamicBatcher(model.runtime.run, executor, policy)
            state.engine = InferenceEngine(repository, executor, batchers)
            tasks = [asyncio.create_task(b.run(), name=f"batcher-{name}") for name, b in batchers.items()]
            log.info(
                "node %s serving %s (batching %s)",
                config.node_id,
                sorted(m.config.name for m in repository),
                sorted(batchers),
            )
            try:
                yield
            finally:
                state.engine = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                repository.close()

    app = FastAPI(title="distinfer node", version=SERVER_VERSION, lifespan=lifespan)

    @app.exception_handler(WorkerError)
    async def _on_worker_error(_: Request, exc: WorkerError) -> JSONResponse:
        return _error(exc)

    def engine() -> InferenceEngine:
        if state.engine is None:
            raise WorkerError("node is not started")
        return state.engine

    @app.get("/v2")
    async def server_metadata() -> dict[str, object]:
        meta = ServerMetadata(name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)
        return {**meta.model_dump(), "node_id": config.node_id}

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
        return [row.model_dump(exclude_none=True) for row in rows]

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
        eng = engine()
        _check_version(_metadata(eng, model), version)
        body = await read_body(request, config.max_body_bytes)
        decoded = decode_request(body, parse_header_length(request.headers.get(HEADER_LENGTH)), config.limits)
        wanted = [out.name for out in decoded.outputs] if decoded.outputs else None
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

    return app


def _check_version(meta: ModelMetadata, version: str | None) -> None:
    if version is not None and version not in (meta.versions or []):
        raise ModelNotFound(f"model {meta.name!r} has no version {version!r}")
