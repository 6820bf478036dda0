"""PyTorch runtimes: TorchScript (`torch.jit.save`) and torch.export programs (`torch.export.save`).

torch is an optional extra, imported only when a torch model is loaded. Both formats are read
from the node's own model repository; nothing is ever unpickled from the network.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worker.errors import InvalidInput
from worker.runtimes.base import Arrays

__all__ = ["TorchRuntime", "torch_available"]


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


class TorchRuntime:
    """Runs a TorchScript module or an exported program on CPU under `torch.inference_mode()`."""

    def __init__(
        self,
        path: Path,
        *,
        kind: str,
        input_names: Sequence[str],
        output_names: Sequence[str],
        threads: int = 0,
    ) -> None:
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self._threads = threads
        # torch's intra-op thread count is per calling thread (OpenMP); set it in each executor thread
        # too, or every worker thread runs with one thread per core and spins against the others.
        self._configured = threading.local()
        self._torch = torch
        self._inputs = list(input_names)
        self._outputs = list(output_names)
        if kind == "torchscript":
            # train(False) is eval mode; the model file comes from the node's own repository, never the network.
            self._module: Any = torch.jit.load(str(path), map_location="cpu").train(False)  # type: ignore[no-untyped-call]
        elif kind == "torch_export":
            self._module = torch.export.load(str(path)).module()
        else:
            raise ValueError(f"not a torch runtime: {kind}")

    def run(self, inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        torch = self._torch
        if self._threads > 0 and not getattr(self._configured, "done", False):
            torch.set_num_threads(self._threads)
            self._configured.done = True
        with torch.inference_mode():
            args = [torch.from_numpy(_writable(inputs[name])) for name in self._inputs]
            try:
                result = self._module(*args)
            except IndexError as exc:  # an embedding index out of range: the input values, not the model
                raise InvalidInput(f"the model refused the input values: {str(exc)[:200]}") from exc
            except RuntimeError as exc:
                # TorchScript re-raises the same index error as a RuntimeError, its message last.
                reason = str(exc).strip().rsplit("\n", 1)[-1]
                if _OUT_OF_RANGE.search(reason) is None:
                    raise
                raise InvalidInput(f"the model refused the input values: {reason[:200]}") from exc
        if isinstance(result, torch.Tensor):
            result = (result,)
        elif isinstance(result, dict):
            result = tuple(result[name] for name in self._outputs)
        if len(result) != len(self._outputs):
            raise ValueError(f"model returned {len(result)} outputs, config names {len(self._outputs)}")
        return {name: value.detach().cpu().numpy() for name, value in zip(self._outputs, result, strict=True)}

    def close(self) -> None:
        del self._module


# How torch words an index beyond a table's size (eager: IndexError; TorchScript: RuntimeError).
_OUT_OF_RANGE = re.compile(r"index -?\d+ is out of bounds for dimension|index out of range in self")


def _writable(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # Arrays decoded from a binary body are read-only views; torch wants memory it may write.
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()
