"""Sharded models the gateway serves: pipeline descriptions read at start, and the dispatcher wrapper.

`DISTINFER_SHARDED_MODELS` lists pipeline descriptions (`<name>.pipeline.json`, written by
`distinfer shard split`) or folders holding them. A request for a sharded model's name is run by
its `ShardRunner`, stage by stage through the real dispatcher; every other request goes to the
dispatcher as before. Wrapping the dispatcher (rather than one endpoint) lets `/inference`, the
v2 relay, batch, pipeline and tasks all serve sharded models alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from balancer.pool import NodePool
from discovery.node import ModelInfo
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.services import InferenceDispatcher
from gateway_plugin.settings import ShardingSettings
from gateway_plugin.shard_runner import ShardRunner
from worker.sharding.errors import ShardingError
from worker.sharding.plan import PipelineSpec, read_model_file
from worker.sharding.split import PIPELINE_SUFFIX

__all__ = ["ShardedDispatcher", "ShardedModels", "read_pipelines", "sharded_models"]

MAX_PIPELINES = 1024


def read_pipelines(paths: Sequence[Path]) -> list[PipelineSpec]:
    """Every pipeline description in `paths` (files, or folders of `*.pipeline.json`); ValueError if bad."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(path.glob(f"*{PIPELINE_SUFFIX}")))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"DISTINFER_SHARDED_MODELS: {path} is neither a pipeline description nor a folder")
    if len(files) > MAX_PIPELINES:
        raise ValueError(f"DISTINFER_SHARDED_MODELS: more than {MAX_PIPELINES} pipeline descriptions")
    specs: list[PipelineSpec] = []
    for file in files:
        try:
            specs.append(read_model_file(PipelineSpec, file))
        except ShardingError as exc:
            raise ValueError(f"DISTINFER_SHARDED_MODELS: {exc}") from exc
    names = [spec.name for spec in specs]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"DISTINFER_SHARDED_MODELS: two pipeline descriptions serve {duplicated[0]!r}")
    return specs


class ShardedModels:
    """The runners of the sharded models, by name."""

    def __init__(self, runners: Sequence[ShardRunner]) -> None:
        self._runners = {runner.spec.name: runner for runner in runners}

    @classmethod
    def build(
        cls,
        specs: Sequence[PipelineSpec],
        stages: InferenceDispatcher,
        pool: NodePool,
        *,
        micro_batch: int = 0,
        forwarding: bool = False,
    ) -> ShardedModels:
        return cls([ShardRunner(s, stages, pool, micro_batch=micro_batch, forwarding=forwarding) for s in specs])

    def get(self, model: str) -> ShardRunner | None:
        return self._runners.get(model)

    def info(self, model: str) -> ModelInfo | None:
        runner = self._runners.get(model)
        return runner.info if runner is not None else None

    def names(self) -> list[str]:
        return sorted(self._runners)

    def runners(self) -> list[ShardRunner]:
        return [self._runners[name] for name in sorted(self._runners)]


class ShardedDispatcher:
    """An `InferenceDispatcher`: sharded models go to their runner, everything else to `inner`."""

    def __init__(self, inner: InferenceDispatcher, models: ShardedModels) -> None:
        self._inner = inner
        self.models = models

    async def infer(self, call: InferenceCall) -> Outcome:
        runner = self.models.get(call.model)
        if runner is None:
            return await self._inner.infer(call)
        return await runner.infer(call)


def sharded_models(settings: ShardingSettings, stages: InferenceDispatcher, pool: NodePool) -> ShardedModels | None:
    """The sharded models of `DISTINFER_SHARDED_MODELS`, run through `stages`; None when there are none."""
    if not settings.models:
        return None
    return ShardedModels.build(
        read_pipelines(settings.models),
        stages,
        pool,
        micro_batch=settings.micro_batch,
        forwarding=settings.forwarding,
    )
