"""Model configuration: the `config.json` beside a model's weights in a model repository.

Layout of a repository (CONTRACT §7)::

    DIR/<model>/config.json     optional; without it an ONNX model is described by its graph
    DIR/<model>/model.onnx      runtime "onnx"
    DIR/<model>/model.pt        runtime "torchscript"  (torch.jit.save)
    DIR/<model>/model.pt2       runtime "torch_export" (torch.export.save)

Shapes are full tensor shapes, batch dimension included; ``-1`` marks a dynamic dimension.
A model whose first dimension is dynamic and whose ``max_batch_size`` is above 0 can be
batched along that dimension.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.protocol.datatypes import DATATYPES

__all__ = [
    "DEFAULT_WEIGHTS",
    "DynamicBatching",
    "Generation",
    "ModelConfig",
    "Runtime",
    "TensorSpec",
    "load_config",
]

Runtime = Literal["onnx", "torchscript", "torch_export"]

DEFAULT_WEIGHTS: dict[str, str] = {
    "onnx": "model.onnx",
    "torchscript": "model.pt",
    "torch_export": "model.pt2",
}


class TensorSpec(BaseModel):
    """One input or output of a model, as v2 model metadata describes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    datatype: str
    shape: tuple[int, ...]

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; one of {sorted(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _valid_dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(dim < -1 or dim == 0 for dim in value):
            raise ValueError("dimensions are positive, or -1 for a dynamic one")
        return value


class DynamicBatching(BaseModel):
    """How the node stacks concurrent requests for one model into one runtime call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=1000)
    preferred_batch_sizes: tuple[int, ...] = ()


class Generation(BaseModel):
    """A generative model served as a step function with explicit state (streamed token by token).

    Each step takes one token id per row ([B, 1] INT64) and the state, and returns the logits
    over the vocabulary and the next state; the logits' `labels` are the vocabulary (the text of
    each token id).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    token_input: str
    state_input: str
    logits_output: str
    state_output: str


class ModelConfig(BaseModel):
    """What a node knows about one model before loading it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    version: str = "1"
    runtime: Runtime = "onnx"
    weights: str | None = None
    platform: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = Field(default=0, ge=0)
    dynamic_batching: DynamicBatching | None = None
    labels: tuple[str, ...] = ()
    generation: Generation | None = None

    @property
    def weights_file(self) -> str:
        return self.weights or DEFAULT_WEIGHTS[self.runtime]

    @property
    def platform_name(self) -> str:
        """The v2 `platform` string, as Triton names its backends."""
        if self.platform:
            return self.platform
        return {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}.get(self.runtime, "pytorch_export")


def load_config(path: Path) -> ModelConfig:
    """Read and validate one `config.json`; raises pydantic's ValidationError when invalid."""
    return ModelConfig.model_validate_json(path.read_bytes())
