"""A model repository entry made of one ONNX operator, built by the tests that need a model the bundle lacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_one_op_model"]


def write_one_op_model(
    folder: Path,
    *,
    name: str,
    op: str,
    tensors: tuple[str, str],
    datatype: str,
    shape: list[int],
    max_batch_size: int = 0,
    **attributes: Any,
) -> None:
    """`folder`/model.onnx (`op` from input `tensors[0]` to output `tensors[1]`, both of `datatype`
    and `shape`, -1 for a free dimension) and its config.json."""
    import onnx
    from onnx import TensorProto, helper

    element = {"FP32": TensorProto.FLOAT, "BYTES": TensorProto.STRING}[datatype]
    dims: list[str | int] = [f"d{axis}" if size < 0 else size for axis, size in enumerate(shape)]
    source, result = (helper.make_tensor_value_info(tensor, element, dims) for tensor in tensors)
    node = helper.make_node(op, [tensors[0]], [tensors[1]], **attributes)
    model = helper.make_model(
        helper.make_graph([node], name, [source], [result]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    folder.mkdir()
    onnx.save(model, str(folder / "model.onnx"))
    specs = [{"name": tensor, "datatype": datatype, "shape": shape} for tensor in tensors]
    config: dict[str, Any] = {"name": name, "runtime": "onnx", "inputs": specs[:1], "outputs": specs[1:]}
    if max_batch_size:
        config["max_batch_size"] = max_batch_size
    (folder / "config.json").write_text(json.dumps(config))
