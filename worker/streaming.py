"""`POST /v2/models/{m}/generate_stream`: token streaming over SSE (Triton's generate extension).

Request: `{"text_input": "...", "parameters": {"max_tokens", "temperature", "top_k", "seed", "stop"}}`.
Every event is `data: <json>`: one per token `{"model_name", "model_version", "text_output",
"index"}`, then a last one with `"finish_reason"` (`length` or `stop`) and `"tokens"`; a failure
after the stream started is `{"error": "..."}`. A stream without its last event was cut off.
A client that disconnects cancels the generation (sse-starlette watches for the disconnect).

`GET /v2/models/{m}/generate_stream/stats` counts streams (active, started, completed,
cancelled, failed) and tokens, so operators and tests can see that cancelled work stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from worker.bodies import read_body
from worker.errors import InvalidInput, ModelNotFound, WorkerError
from worker.generate import GenerateParams, TextGenerator, generation_problem
from worker.repository import LoadedModel

__all__ = ["GenerationService", "StreamStats", "generate_router", "generators_for"]

log = logging.getLogger(__name__)

PING_S = 5.0
SEND_TIMEOUT_S = 30.0


@dataclass
class StreamStats:
    active: int = 0
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    tokens: int = 0


def generators_for(models: Iterable[LoadedModel], executor: Executor) -> dict[str, TextGenerator]:
    """A generator for every model whose config asks for one and describes it well."""
    generators = {}
    for model in models:
        if model.config.generation is None:
            continue
        problem = generation_problem(model.config)
        if problem is not None:
            log.warning("not streaming %s: %s", model.config.name, problem)
            continue
        generators[model.config.name] = TextGenerator(model.config, model.runtime, executor)
    return generators


class GenerationService:
    """The node's generators by model name, and per-model stream counters."""

    def __init__(
        self, generators: Mapping[str, TextGenerator], *, max_tokens: int = 65_536, max_prompt: int = 16_384
    ) -> None:
        self.generators = dict(generators)
        self.max_tokens = max_tokens
        self.max_prompt = max_prompt
        self.stats: dict[str, StreamStats] = {name: StreamStats() for name in self.generators}

    def add(self, name: str, generator: TextGenerator) -> None:
        """Serve `generator` for `name` from now on (a model loaded or reloaded while the node serves)."""
        self.generators[name] = generator
        self.stats.setdefault(name, StreamStats())

    def get(self, model: str, known: Callable[[str], bool]) -> TextGenerator:
        generator = self.generators.get(model)
        if generator is None:
            if known(model):
                raise InvalidInput(f"model {model!r} is not generative: use /v2/models/{model}/infer")
            raise ModelNotFound(f"unknown model {model!r}")
        return generator

    async def events(self, generator: TextGenerator, params: GenerateParams) -> AsyncIterator[ServerSentEvent]:
        config = generator.config
        stats = self.stats[config.name]
        stats.active += 1
        stats.started += 1
        head = {"model_name": config.name, "model_version": config.version}
        text, count, finish = "", 0, "length"
        try:
            async for token in generator.stream(params):
                stats.tokens += 1
                text += token
                yield ServerSentEvent(json.dumps({**head, "text_output": token, "index": count}), id=str(count))
                count += 1
                if params.stop and any(text.endswith(stop) for stop in params.stop):
                    finish = "stop"
            yield ServerSentEvent(json.dumps({**head, "text_output": "", "finish_reason": finish, "tokens": count}))
            stats.completed += 1
        except (asyncio.CancelledError, GeneratorExit):  # the client went away (disconnect, failed send)
            stats.cancelled += 1
            raise
        except WorkerError as exc:
            stats.failed += 1
            log.warning("generation on %s failed: %s", config.name, exc.message)
            yield ServerSentEvent(json.dumps({"error": exc.message}))
        except Exception as exc:  # a bug of ours: still a well-formed stream that says so, not a cut
            stats.failed += 1
            log.exception("generation on %s failed", config.name)
            yield ServerSentEvent(json.dumps({"error": f"generation failed: {type(exc).__name__}"}))
        finally:
            stats.active -= 1


def generate_router(
    service: Callable[[], GenerationService], known: Callable[[str], bool], max_body_bytes: int
) -> APIRouter:
    """The routes, given how to reach the service (built by the node's lifespan) and the model list."""
    router = APIRouter()

    @router.post("/v2/models/{model}/generate_stream")
    @router.post("/v2/models/{model}/versions/{version}/generate_stream")
    async def generate_stream(model: str, request: Request, version: str | None = None) -> EventSourceResponse:
        svc = service()
        generator = svc.get(model, known)
        if version is not None and version != generator.config.version:
            raise ModelNotFound(f"model {model!r} has no version {version!r}")
        try:
            body = json.loads(await read_body(request, max_body_bytes) or b"{}")
        except ValueError as exc:
            raise InvalidInput("request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise InvalidInput("request body must be a JSON object")
        params = GenerateParams.parse(
            body.get("text_input", ""), body.get("parameters"), max_tokens=svc.max_tokens, max_prompt=svc.max_prompt
        )
        return EventSourceResponse(svc.events(generator, params), ping=PING_S, send_timeout=SEND_TIMEOUT_S)

    @router.get("/v2/models/{model}/generate_stream/stats")
    async def stream_stats(model: str) -> dict[str, Any]:
        svc = service()
        stats = svc.stats.get(model)
        if stats is None:
            raise ModelNotFound(f"no generative model {model!r}")
        return asdict(stats)

    return router
