"""Local fallback: the gateway runs a model itself, with the node's own repository and engine code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from discovery.node import ModelInfo
from worker.config import ModelConfig
from worker.engine import InferenceEngine
from worker.generate import TextGenerator
from worker.protocol import Tensor
from worker.repository import ModelRepository
from worker.streaming import generators_for

__all__ = ["LocalInference", "model_info"]


def model_info(config: ModelConfig) -> ModelInfo:
    return ModelInfo(
        name=config.name,
        version=config.version,
        platform=config.platform_name,
        inputs=config.inputs,
        outputs=config.outputs,
        max_batch_size=config.max_batch_size,
        labels=config.labels,
    )


class LocalInference:
    def __init__(self, engine: InferenceEngine, generators: dict[str, TextGenerator] | None = None) -> None:
        self._engine = engine
        self._generators = dict(generators or {})
        self._infos = {model.config.name: model_info(model.config) for model in engine.repository}

    @classmethod
    @asynccontextmanager
    async def open(cls, root: Path, *, threads: int = 1, workers: int = 1) -> AsyncIterator[LocalInference]:
        """Load the repository off the event loop, and close it when the context ends."""
        repository = await asyncio.to_thread(ModelRepository.load, root, threads=threads)
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="local-infer") as executor:
                yield cls(InferenceEngine(repository, executor), generators_for(repository, executor))
        finally:
            repository.close()

    def has(self, model: str) -> bool:
        return model in self._infos

    def info(self, model: str) -> ModelInfo | None:
        return self._infos.get(model)

    def generator(self, model: str) -> TextGenerator | None:
        """The model's text generator, when it is a generative (step-function) model."""
        return self._generators.get(model)

    def models(self) -> list[ModelInfo]:
        return list(self._infos.values())

    async def infer(
        self, model: str, inputs: Sequence[Tensor], outputs: Sequence[str] | None
    ) -> tuple[ModelConfig, list[Tensor]]:
        return await self._engine.infer(model, inputs, outputs)
