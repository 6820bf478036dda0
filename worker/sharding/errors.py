"""Errors of planning and splitting a model into stages, one tree::

    ShardingError            anything the shard commands cannot do; the CLI prints it and exits 2
    ├── GraphError           the model's graph cannot be read or cut (unsupported format, no cut point)
    ├── PlanError            no plan fits: too few layers for the nodes, a stage over a node's memory
    └── SplitError           a plan does not match the model it is applied to, or a stage fails to extract

Foreign errors (onnx, onnxruntime, torch, pydantic) are mapped into it where they are caught.
"""

from __future__ import annotations

__all__ = ["GraphError", "PlanError", "ShardingError", "SplitError"]


class ShardingError(Exception):
    """Base of the sharding errors; the message is meant for the person at the terminal."""


class GraphError(ShardingError):
    pass


class PlanError(ShardingError):
    pass


class SplitError(ShardingError):
    pass
