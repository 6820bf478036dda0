"""The data plane: check a decoded request against the model and run it off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np

from worker.batching import BatchPolicy, DynamicBatcher, RunObserver
from worker.config import ModelConfig, TensorSpec
from worker.errors import InferenceFailed, InvalidInput, WorkerError
from worker.protocol import Tensor, dtype_of
from worker.protocol.checked import TensorMeta
from worker.repository import ModelRepository

__all__ = ["InferenceEngine", "batch_policy", "check_inputs", "check_signature"]


def _check_one(spec: TensorSpec, tensor: TensorMeta, max_batch_size: int) -> None:
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"input {spec.name!r}: datatype {tensor.datatype}, model expects {spec.datatype}")
    shape = list(tensor.shape)
    if len(shape) != len(spec.shape) or any(
        want != -1 and got != want for got, want in zip(shape, spec.shape, strict=True)
    ):
        raise InvalidInput(f"input {spec.name!r}: shape {shape}, model expects {list(spec.shape)}")
    if max_batch_size and spec.shape and spec.shape[0] == -1 and shape[0] > max_batch_size:
        raise InvalidInput(f"input {spec.name!r}: batch of {shape[0]} is over max_batch_size {max_batch_size}")


def check_signature(
    model: str, specs: Sequence[TensorSpec], inputs: Sequence[TensorMeta], *, max_batch_size: int = 0
) -> None:
    """InvalidInput unless `inputs` have exactly the names, datatypes and shapes that `specs` ask for."""
    given = {tensor.name: tensor for tensor in inputs}
    expected = {spec.name for spec in specs}
    if unknown := sorted(set(given) - expected):
        raise InvalidInput(f"model {model!r} has no input {unknown[0]!r}; inputs are {sorted(expected)}")
    rows: dict[int, str] = {}  # batch size -> the first input that has it
    for spec in specs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise InvalidInput(f"model {model!r} needs input {spec.name!r}")
        _check_one(spec, tensor, max_batch_size)
        if max_batch_size and spec.shape[:1] == (-1,):
            rows.setdefault(tensor.shape[0], spec.name)
    if len(rows) > 1:  # a batching model's leading -1 is its batch: every input carries the same rows
        (a_rows, a_name), (b_rows, b_name) = list(rows.items())[:2]
        raise InvalidInput(f"inputs {a_name!r} and {b_name!r} disagree on the batch size ({a_rows} and {b_rows})")


def check_inputs(
    model: str, specs: Sequence[TensorSpec], inputs: Sequence[Tensor], *, max_batch_size: int = 0
) -> dict[str, np.ndarray[Any, Any]]:
    """Named arrays for the runtime, after `check_signature` and, for BYTES inputs, `check_text`."""
    check_signature(model, specs, inputs, max_batch_size=max_batch_size)
    for tensor in inputs:
        if tensor.datatype == "BYTES":
            check_text(model, tensor)
    return {tensor.name: tensor.data for tensor in inputs}


def check_text(model: str, tensor: Tensor) -> None:
    """Every element of a BYTES input is UTF-8 text: the runtimes take strings (ONNX's tensor(string)).

    Checked per request, before a batcher stacks it with others: a runtime's decode error was a 500
    for a bad value of the caller's, which the gateway counted against the node.
    """
    for value in tensor.data.flat:
        if isinstance(value, bytes):
            try:
                value.decode()
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"model {model!r} input {tensor.name!r}: a BYTES element is not UTF-8 text "
                    f"(byte {exc.start}), and the model takes text"
                ) from None


class InferenceEngine:
    """Runs models from a repository in a bounded executor, so the event loop never blocks.

    Models with a `DynamicBatcher` go through it; the others run one request per call.
    """

    def __init__(
        self,
        repository: ModelRepository,
        executor: Executor,
        batchers: Mapping[str, DynamicBatcher] | None = None,
        observers: Mapping[str, RunObserver] | None = None,
    ) -> None:
        self.repository = repository
        self._executor = executor
        self.batchers = dict(batchers or {})
        self._observers = dict(observers or {})  # runtime calls of unbatched models (metrics)

    def attach(self, name: str, batcher: DynamicBatcher | None, observer: RunObserver) -> None:
        """Route `name`'s calls through `batcher` (None: one runtime call per request) from now on."""
        self._observers[name] = observer
        if batcher is None:
            self.batchers.pop(name, None)
        else:
            self.batchers[name] = batcher

    def detach(self, name: str) -> DynamicBatcher | None:
        """`name`'s batcher, no longer given new calls; None if it had none."""
        return self.batchers.pop(name, None)

    async def infer(
        self, model_name: str, inputs: Sequence[Tensor], outputs: Sequence[str] | None = None
    ) -> tuple[ModelConfig, list[Tensor]]:
        model = self.repository.get(model_name)
        config = model.config
        feeds = check_inputs(config.name, config.inputs, inputs, max_batch_size=config.max_batch_size)
        known = [spec.name for spec in config.outputs]
        wanted = list(outputs) if outputs else known
        if missing := [name for name in wanted if name not in known]:
            raise InvalidInput(f"model {config.name!r} has no output {missing[0]!r}; outputs are {known}")
        if len(set(wanted)) < len(wanted):  # as Triton: one answer tensor per name
            twice = next(name for name in wanted if wanted.count(name) > 1)
            raise InvalidInput(f"output {twice!r} is requested more than once")
        batcher = self.batchers.get(config.name)
        try:
            if batcher is not None:
                results = await batcher.submit(feeds)
            else:
                started = time.monotonic()
                results = await asyncio.get_running_loop().run_in_executor(self._executor, model.runtime.run, feeds)
                if (observer := self._observers.get(config.name)) is not None:
                    rows = next(iter(feeds.values())).shape[0] if config.max_batch_size and feeds else 1
                    observer.runtime_call(int(rows), time.monotonic() - started)
        except WorkerError:  # a runtime that could tell the input was at fault (InvalidInput: 400)
            raise
        except Exception as exc:  # the runtime's own failure
            raise InferenceFailed(f"model {config.name!r} failed: {type(exc).__name__}") from exc
        specs = {spec.name: spec for spec in config.outputs}
        return config, [Tensor(name, specs[name].datatype, _as_dtype(results[name], specs[name])) for name in wanted]


def _as_dtype(array: np.ndarray[Any, Any], spec: TensorSpec) -> np.ndarray[Any, Any]:
    return array if spec.datatype == "BYTES" else np.asarray(array, dtype=dtype_of(spec.datatype))


def batch_policy(config: ModelConfig, mode: str, *, max_concurrent: int) -> BatchPolicy | None:
    """The model's batching policy: `auto` follows config.json, `on` batches every batchable model."""
    batchable = config.max_batch_size > 0 and all(spec.shape[:1] == (-1,) for spec in (*config.inputs, *config.outputs))
    if mode == "off" or not batchable or (mode == "auto" and config.dynamic_batching is None):
        return None
    tuning = config.dynamic_batching
    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        max_queue_delay_s=(tuning.max_queue_delay_ms if tuning else 2.0) / 1000,
        preferred_batch_sizes=tuning.preferred_batch_sizes if tuning else (),
        max_concurrent_batches=max_concurrent,
    )
