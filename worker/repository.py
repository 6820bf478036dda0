"""The model repository: folders of `config.json` + weights, loaded at start-up (and, with
`--model-control-mode explicit`, loaded and unloaded on request: worker.model_control).

A folder with only `model.onnx` is described from its graph. A model that cannot load (torch
missing, corrupt file, over the node's memory cap) is listed as UNAVAILABLE with the reason
instead of stopping the node. A model's memory is counted as the bytes of its folder's files
(weights, external data) less config.json: what the runtime holds once the model is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from worker.config import ModelConfig, load_config
from worker.errors import ModelNotFound, ModelNotReady
from worker.runtimes import Runtime, open_runtime
from worker.runtimes.onnx import describe_onnx

__all__ = [
    "UNLOADED",
    "LoadedModel",
    "ModelRepository",
    "OverMemoryCap",
    "RepositoryError",
    "model_bytes",
    "read_config",
]

log = logging.getLogger(__name__)


UNLOADED = "unloaded"  # the index's reason for a model unloaded on request (worker.model_control)


class RepositoryError(Exception):
    """A model folder that cannot be described (no config, bad config, no weights)."""


class OverMemoryCap(RepositoryError):
    """Loading the model would take the node over its memory cap (`distinfer node --memory-cap-mb`)."""


def model_bytes(folder: Path) -> int:
    """Bytes a model holds once loaded: its folder's files (weights, external data) less config.json."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "config.json")


def _check_cap(name: str, size: int, used: int, cap: int | None, loaded: int) -> None:
    if cap is not None and used + size > cap:
        mb = 1024 * 1024
        raise OverMemoryCap(
            f"model {name!r} needs {size / mb:.1f} MB, over the node's memory cap of {cap / mb:.1f} MB "
            f"({used / mb:.1f} MB already held by {loaded} model(s)); serve it sharded (distinfer shard)"
        )


@dataclass(frozen=True, slots=True)
class LoadedModel:
    config: ModelConfig
    runtime: Runtime
    memory_bytes: int = 0


def read_config(folder: Path) -> ModelConfig:
    """The folder's config.json, completed from the ONNX graph where it leaves things out."""
    config_path = folder / "config.json"
    try:
        if config_path.exists():
            config = load_config(config_path)
        elif (folder / "model.onnx").exists():
            config = ModelConfig(name=folder.name, runtime="onnx")
        else:
            raise RepositoryError(f"{folder}: neither config.json nor model.onnx")
    except ValidationError as exc:
        raise RepositoryError(f"{config_path}: {exc}") from exc
    if not (folder / config.weights_file).exists():
        raise RepositoryError(f"{folder}: weights file {config.weights_file} is missing")
    if config.runtime == "onnx" and not (config.inputs and config.outputs):
        inputs, outputs = describe_onnx(folder / config.weights_file)
        config = config.model_copy(update={"inputs": config.inputs or inputs, "outputs": config.outputs or outputs})
    if not (config.inputs and config.outputs):
        raise RepositoryError(f"{folder}: a {config.runtime} model needs inputs and outputs in config.json")
    return config


class ModelRepository:
    """Loaded models by name, plus the ones that failed to load and why."""

    def __init__(
        self,
        models: dict[str, LoadedModel],
        unavailable: dict[str, str] | None = None,
        *,
        memory_cap_bytes: int | None = None,
        root: Path | None = None,
        threads: int = 0,
    ) -> None:
        self._models = models
        self.unavailable: dict[str, str] = dict(unavailable or {})
        self.memory_cap_bytes = memory_cap_bytes
        self.root = root  # where `open` finds model folders (None: models given, not read from disk)
        self._threads = threads

    @property
    def memory_used_bytes(self) -> int:
        return sum(model.memory_bytes for model in self._models.values())

    @classmethod
    def load(
        cls,
        root: Path,
        *,
        threads: int = 0,
        only: frozenset[str] | None = None,
        memory_cap_bytes: int | None = None,
    ) -> ModelRepository:
        if not root.is_dir():
            raise RepositoryError(f"model repository {root} is not a folder")
        repository = cls({}, memory_cap_bytes=memory_cap_bytes, root=root, threads=threads)
        for name in repository.folder_names():
            if only is not None and name not in only:
                continue
            try:
                repository.put(repository.open(name))
            except Exception as exc:  # one bad model must not take the node down
                log.warning("model %s not loaded: %s", name, exc)
                repository.unavailable[name] = f"{type(exc).__name__}: {exc}"
        return repository

    def folder_names(self) -> list[str]:
        """The model folders of the repository on disk, whether loaded or not."""
        if self.root is None:
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def open(self, name: str) -> LoadedModel:
        """The model of folder `name`, loaded and not yet served (blocking: run it off the event loop).

        A model served under that name already is left out of the memory count: it is being replaced.
        """
        if self.root is None or name not in self.folder_names():  # a folder of this repository, never a path
            raise ModelNotFound(f"the model repository has no model {name!r}")
        folder = self.root / name
        config = read_config(folder)  # its name is the model's, usually the folder's
        size = model_bytes(folder)
        others = [model for model in self._models.values() if model.config.name != config.name]
        _check_cap(config.name, size, sum(model.memory_bytes for model in others), self.memory_cap_bytes, len(others))
        return LoadedModel(config, open_runtime(config, folder, threads=self._threads), size)

    def put(self, model: LoadedModel) -> LoadedModel | None:
        """Serve `model` from now on; returns the copy it replaces, if any."""
        self.unavailable.pop(model.config.name, None)
        previous = self._models.get(model.config.name)
        self._models[model.config.name] = model
        return previous

    def drop(self, name: str, reason: str) -> LoadedModel:
        """Stop serving `name` (ModelNotFound if it is not served): listed UNAVAILABLE with `reason`.

        Its runtime is not closed here: calls that hold it finish, and it is freed with the last of them.
        """
        model = self._models.pop(name, None)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not loaded")
        self.unavailable[name] = reason
        return model

    def get(self, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is not None:
            return model
        if self.unavailable.get(name) == UNLOADED:  # deliberately: as a model it never had (a gateway tries another)
            raise ModelNotFound(f"model {name!r} is not loaded: it was unloaded")
        if name in self.unavailable:
            raise ModelNotReady(f"model {name!r} is not available: {self.unavailable[name]}")
        raise ModelNotFound(f"unknown model {name!r}")

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(self._models.values())

    def close(self) -> None:
        for model in self._models.values():
            model.runtime.close()
        self._models.clear()
