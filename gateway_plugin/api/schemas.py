"""Request and response bodies of the HTTP API (CONTRACT §4)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway_plugin.parameters import ClientParameters

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "ModelEntry",
    "NodeEntry",
    "OutputTensor",
    "Priority",
]

Priority = Literal["high", "normal", "low"]


class InferenceRequest(BaseModel):
    """One inference. `inputs` is a list of v2 tensors, or a plain JSON value for a one-input model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"model": "digits", "inputs": [[0.0] * 8] * 8},
                {
                    "model": "digits",
                    "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}],
                },
            ]
        },
    )

    model: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    inputs: Any
    outputs: list[str] | None = Field(default=None, description="names of the outputs to return; all when absent")
    parameters: ClientParameters = {}
    priority: Priority = "normal"
    strategy: str | None = None
    timeout_ms: int | None = Field(default=None, gt=0)
    request_id: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]


class InferenceResponse(BaseModel):
    request_id: str
    model: str
    model_version: str | None
    outputs: list[OutputTensor]
    node_id: str | None
    mode: Literal["distributed", "local"]
    attempts: int
    latency_ms: float


class ModelEntry(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    nodes: list[str] = Field(description="ids of the nodes that list the model")
    ready_nodes: int = Field(description="how many of them are online now")
    local: bool = Field(description="whether the gateway can run it itself as a fallback")
    stages: list[str] | None = Field(
        default=None, description="a sharded model's stage models, in order (the nodes list these, not it)"
    )


class NodeEntry(BaseModel):
    node_id: str
    url: str
    status: str
    source: str
    in_flight: int
    models: list[str]
    binary: bool
    weight: float
    labels: dict[str, str]
    last_error: str | None
    breaker: Literal["closed", "open", "half_open"] = Field(
        default="closed", description="circuit breaker: open = ejected by outlier detection"
    )
    ejected_for_s: float = Field(default=0.0, description="seconds left of the current ejection")
    latency_ewma_ms: float | None = Field(default=None, description="peak EWMA of observed latency")
    trust: float = Field(default=1.0, description="trust score from result validation, 0..1")
    quarantined: bool = Field(default=False, description="excluded for disagreeing with other nodes")
