"""ONNX Runtime: sessions, and model description from the graph alone (CONTRACT §7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from worker.config import TensorSpec
from worker.errors import InvalidInput
from worker.runtimes.base import Arrays

__all__ = ["OnnxRuntime", "describe_onnx"]

# ONNX Runtime's type strings to v2 datatypes.
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # 0 lets ONNX Runtime size its pool to the cores; nodes sharing a machine pass 1.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TYPES.get(arg.type)
    if datatype is None:
        raise ValueError(f"ONNX tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in arg.shape)
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def describe_onnx(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Inputs and outputs as the graph declares them; symbolic dimensions become -1."""
    session = _session(path, threads=1)
    return tuple(map(_spec, session.get_inputs())), tuple(map(_spec, session.get_outputs()))


class OnnxRuntime:
    def __init__(self, path: Path, *, threads: int = 0) -> None:
        self._session = _session(path, threads)
        self._outputs = [out.name for out in self._session.get_outputs()]
        self._bytes_inputs = {arg.name for arg in self._session.get_inputs() if arg.type == "tensor(string)"}

    def run(self, inputs: Arrays) -> dict[str, np.ndarray[Any, Any]]:
        feeds = {
            # ONNX Runtime takes strings, not bytes, for tensor(string).
            name: (np.vectorize(_text, otypes=[object])(value) if name in self._bytes_inputs else value)
            for name, value in inputs.items()
        }
        try:
            results = self._session.run(self._outputs, feeds)
        except InvalidArgument as exc:  # the values themselves (an index out of range): the caller's fault
            raise InvalidInput(f"the model refused the input values: {_short(exc)}") from exc
        return dict(zip(self._outputs, results, strict=True))

    def close(self) -> None:
        del self._session


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short(exc: Exception) -> str:
    """ONNX Runtime's message without its '[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :' prefix, bounded."""
    return str(exc).rsplit(" : ", 1)[-1][:200]
