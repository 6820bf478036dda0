"""The model a shard command works on: a model folder (config.json + weights) or a bare weights file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from worker.config import ModelConfig
from worker.repository import RepositoryError, read_config
from worker.runtimes.onnx import describe_onnx
from worker.sharding.errors import GraphError

__all__ = ["ModelSource", "open_source", "sha256_of"]

_RUNTIMES_BY_SUFFIX = {".onnx": "onnx", ".pt2": "torch_export"}


@dataclass(frozen=True, slots=True)
class ModelSource:
    config: ModelConfig
    weights: Path

    @property
    def runtime(self) -> str:
        return self.config.runtime


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_source(path: Path) -> ModelSource:
    """A model folder is read like a node reads it; a lone `.onnx` file is described from its graph."""
    if path.is_dir():
        try:
            config = read_config(path)
        except RepositoryError as exc:
            raise GraphError(str(exc)) from exc
        weights = path / config.weights_file
    elif path.is_file() and path.suffix == ".onnx":
        try:
            inputs, outputs = describe_onnx(path)
        except Exception as exc:  # onnxruntime's own errors: not a model it can load
            raise GraphError(f"{path}: not an ONNX model ONNX Runtime can load: {exc}") from exc
        name = path.parent.name if path.stem == "model" else path.stem
        config = ModelConfig(name=name, runtime="onnx", inputs=inputs, outputs=outputs)
        weights = path
    elif path.is_file():
        raise GraphError(f"{path}: give a model folder (config.json + weights) or an .onnx file")
    else:
        raise GraphError(f"{path}: no such model folder or file")
    if config.runtime not in _RUNTIMES_BY_SUFFIX.values():
        raise GraphError(
            f"{path}: runtime {config.runtime!r} cannot be cut; sharding reads onnx and torch_export models"
        )
    return ModelSource(config, weights)
