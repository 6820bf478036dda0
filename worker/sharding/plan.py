"""The two files sharding writes: a plan (`distinfer shard plan`) and a pipeline description (`split`).

A *plan* says where a model is cut (op positions), what crosses each cut and which node each
stage is sized for. A *pipeline description* (`<name>.pipeline.json` beside the stage folders) is
what the gateway reads to serve the sharded model: the model's own inputs and outputs, then the
stage models in order, each with the tensors it reads and the tensors it hands on. Both are
validated on load: a plan or description is user input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.config import TensorSpec
from worker.sharding.errors import ShardingError

__all__ = [
    "PIPELINE_FORMAT",
    "PLAN_FORMAT",
    "NodeCapacity",
    "PipelineSpec",
    "PipelineStage",
    "ShardPlan",
    "StagePlan",
    "read_model_file",
]

PLAN_FORMAT = "distinfer-shard-plan/1"
PIPELINE_FORMAT = "distinfer-pipeline/1"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_M = TypeVar("_M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeCapacity(_Strict):
    """One node a plan is sized for: memory its stage may take, and relative speed."""

    name: str = Field(min_length=1, max_length=256)
    memory_bytes: int = Field(gt=0)
    speed: float = Field(default=1.0, gt=0)


class StagePlan(_Strict):
    index: int = Field(ge=0)
    node: NodeCapacity
    start: int = Field(ge=0, description="first op of the stage, in the graph's topological order")
    end: int = Field(gt=0, description="one past the last op")
    layers: int = Field(ge=1)
    first_op: str
    last_op: str
    param_bytes: int = Field(ge=0)
    memory_bytes: int = Field(ge=0, description="what the stage needs on its node: parameters plus a margin")
    flops: float = Field(ge=0, description="estimated operations per batch row")
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_row_bytes: int = Field(ge=0, description="bytes handed to the next stage per batch row (estimate)")


class ShardPlan(_Strict):
    format: Literal["distinfer-shard-plan/1"] = "distinfer-shard-plan/1"
    model: str = Field(pattern=_NAME, max_length=100)
    source: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    runtime: Literal["onnx", "torch_export"]
    max_activations: int = Field(ge=1)
    dims: dict[str, int] = {}
    param_bytes: int = Field(ge=0)
    flops: float = Field(ge=0)
    layers: int = Field(ge=1)
    bottleneck: float = Field(ge=0, description="the busiest node's load relative to its fair share (1 = perfect)")
    stages: tuple[StagePlan, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _contiguous(self) -> ShardPlan:
        position = 0
        for index, stage in enumerate(self.stages):
            if stage.index != index or stage.start != position or stage.end <= stage.start:
                raise ValueError(f"stage {index} does not start where stage {index - 1} ends")
            position = stage.end
        return self


class PipelineStage(_Strict):
    model: str = Field(pattern=_NAME, max_length=128)
    inputs: tuple[str, ...] = Field(min_length=1)
    outputs: tuple[str, ...] = Field(min_length=1)
    param_bytes: int = Field(default=0, ge=0)
    flops: float = Field(default=0.0, ge=0)
    planned_node: str | None = None


class PipelineSpec(_Strict):
    """A sharded model as the gateway serves it: requested by `name`, run stage after stage."""

    format: Literal["distinfer-pipeline/1"] = "distinfer-pipeline/1"
    name: str = Field(pattern=_NAME, max_length=128)
    version: str = "1"
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    max_batch_size: int = Field(default=0, ge=0)
    labels: tuple[str, ...] = ()
    stages: tuple[PipelineStage, ...] = Field(min_length=1, max_length=256)
    source_sha256: str | None = None

    @model_validator(mode="after")
    def _wired(self) -> PipelineSpec:
        """Every stage reads only what the request or an earlier stage provides; the outputs get made."""
        available = {spec.name for spec in self.inputs}
        for index, stage in enumerate(self.stages):
            if missing := [name for name in stage.inputs if name not in available]:
                raise ValueError(f"stage {index} ({stage.model}) reads {missing[0]!r}, which nothing before it makes")
            available.update(stage.outputs)
        if missing := [spec.name for spec in self.outputs if spec.name not in available]:
            raise ValueError(f"output {missing[0]!r} is made by no stage")
        if len({stage.model for stage in self.stages}) != len(self.stages):
            raise ValueError("two stages name the same model")
        return self

    @property
    def batchable(self) -> bool:
        """Whether requests may be cut into micro-batches along the first dimension."""
        return self.max_batch_size > 0 and all(spec.shape[:1] == (-1,) for spec in (*self.inputs, *self.outputs))


def read_model_file(kind: type[_M], path: Path) -> _M:
    """Read and validate a plan or a pipeline description; a ShardingError says what is wrong."""
    try:
        return kind.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise ShardingError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "file"
        raise ShardingError(f"{path}: {where}: {first['msg']}") from exc
