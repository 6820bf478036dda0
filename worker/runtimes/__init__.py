"""Model runtimes, chosen by a model's config: `onnx`, `torchscript`, `torch_export`."""

from __future__ import annotations

from pathlib import Path

from worker.config import ModelConfig
from worker.runtimes.base import Arrays, Runtime

__all__ = ["Arrays", "Runtime", "open_runtime"]


def open_runtime(config: ModelConfig, folder: Path, *, threads: int = 0) -> Runtime:
    """Load the model's weights with the runtime its config names."""
    path = folder / config.weights_file
    if config.runtime == "onnx":
        from worker.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(path, threads=threads)
    from worker.runtimes.torch import TorchRuntime

    return TorchRuntime(
        path,
        kind=config.runtime,
        input_names=[spec.name for spec in config.inputs],
        output_names=[spec.name for spec in config.outputs],
        threads=threads,
    )
