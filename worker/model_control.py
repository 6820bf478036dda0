"""Loading and unloading models while the node serves: Triton's model repository extension.

With `distinfer node --model-control-mode explicit` (Triton's explicit mode),
`POST /v2/repository/models/{m}/load` loads a model folder of the repository, or reloads it from
disk, and `POST /v2/repository/models/{m}/unload` stops serving it. In the default mode (`none`)
the models are those loaded at start and both calls are refused.

A reload swaps the new copy in once it has loaded: calls never find the model missing in
between, and a failed reload leaves the old copy serving. Calls already running on a copy that is
replaced or unloaded finish on it: its dynamic batcher drains before it stops, and its runtime is
freed with the last call that holds it. The gateway follows within a health-probe interval (it
compares the repository index every round).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from worker.batching import DynamicBatcher
from worker.engine import InferenceEngine, batch_policy
from worker.errors import InvalidInput, ModelNotFound
from worker.repository import UNLOADED, LoadedModel, ModelRepository
from worker.streaming import GenerationService, generators_for
from worker.telemetry import NodeTelemetry

__all__ = ["MODES", "ModelControl"]

log = logging.getLogger(__name__)

MODES = ("none", "explicit")


class ModelControl:
    """Owns each served model's batcher task, and swaps models in and out of the engine one at a time."""

    def __init__(
        self,
        repository: ModelRepository,
        engine: InferenceEngine,
        generation: GenerationService,
        executor: Executor,
        telemetry: NodeTelemetry,
        *,
        batching: str,
        workers: int,
        explicit: bool = False,
        drain_s: float = 30.0,
    ) -> None:
        self._repository = repository
        self._engine = engine
        self._generation = generation
        self._executor = executor
        self._telemetry = telemetry
        self._batching = batching
        self._workers = workers
        self.explicit = explicit
        self._drain_s = drain_s  # how long a retired batcher may take to finish the calls it holds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # held here: the loop keeps only weak references
        self._lock = asyncio.Lock()  # one load or unload at a time
        self.on_change: Callable[[], None] = _nothing  # told after each load or unload (Consul registration)

    def start(self) -> None:
        """Serve the models the repository loaded at start (batchers run from here on)."""
        for model in self._repository:
            self._serve(model)

    def not_loaded(self) -> list[str]:
        """Model folders neither served nor failed: what `load` could bring in (explicit mode lists them)."""
        served = {model.config.name for model in self._repository}
        return [n for n in self._repository.folder_names() if n not in served and n not in self._repository.unavailable]

    async def load(self, name: str) -> None:
        """Load (or reload) the model folder `name`; InvalidInput saying why if it cannot load."""
        self._check_enabled()
        async with self._lock:
            try:
                model = await asyncio.to_thread(self._repository.open, name)
            except ModelNotFound:
                raise
            except Exception as exc:  # a bad config or weights file, over the memory cap, torch missing
                reason = f"{type(exc).__name__}: {exc}"
                if name not in self._repository:  # a failed reload leaves the old copy serving
                    self._repository.unavailable[name] = reason
                raise InvalidInput(f"failed to load model {name!r}: {reason}") from None
            if model.config.name != name:  # as Triton: unload, the index and metrics go by the folder's name
                model.runtime.close()
                raise InvalidInput(f"folder {name!r} holds model {model.config.name!r}: a model loads by its own name")
            retiring = self._retire_batcher(model.config.name)
            self._generation.generators.pop(model.config.name, None)  # a reload may no longer generate
            self._repository.put(model)
            self._serve(model)
            log.info("model %s loaded", model.config.name)
            self.on_change()
        if retiring is not None:
            await retiring

    async def unload(self, name: str) -> None:
        """Stop serving `name`; a model that is not loaded stays so (as Triton, not an error)."""
        self._check_enabled()
        async with self._lock:
            if name not in self._repository:
                if name in self._repository.unavailable or name in self._repository.folder_names():
                    return
                raise ModelNotFound(f"unknown model {name!r}")
            self._repository.drop(name, UNLOADED)
            self._generation.generators.pop(name, None)
            retiring = self._retire_batcher(name)
            log.info("model %s unloaded", name)
            self.on_change()
        if retiring is not None:
            await retiring

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._retiring]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _check_enabled(self) -> None:
        if not self.explicit:
            raise InvalidInput(
                "model control is off: start the node with --model-control-mode explicit to load and unload models"
            )

    def _serve(self, model: LoadedModel) -> None:
        name = model.config.name
        observer = self._telemetry.model(name)
        policy = batch_policy(model.config, self._batching, max_concurrent=self._workers)
        batcher = None
        if policy is not None:
            batcher = DynamicBatcher(model.runtime.run, self._executor, policy, observer)
            self._tasks[name] = asyncio.create_task(batcher.run(), name=f"batcher-{name}")
        self._engine.attach(name, batcher, observer)
        for generative, generator in generators_for([model], self._executor).items():
            self._generation.add(generative, generator)

    def _retire_batcher(self, name: str) -> asyncio.Task[None] | None:
        """Take `name`'s batcher out of the engine now; the returned task stops it once it is idle."""
        batcher, task = self._engine.detach(name), self._tasks.pop(name, None)
        if batcher is None or task is None:
            return None
        retiring = asyncio.create_task(self._drain(batcher, task), name=f"retire-{name}")
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        return retiring

    async def _drain(self, batcher: DynamicBatcher, task: asyncio.Task[None]) -> None:
        try:
            async with asyncio.timeout(self._drain_s):
                await batcher.wait_idle()
        except TimeoutError:
            log.warning("a retired batcher still held calls after %.0f s: stopping it", self._drain_s)
        finally:  # past the deadline, or the node stops: calls still waiting get a 503 the gateway retries elsewhere
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _nothing() -> None:
    pass
