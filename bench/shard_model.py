"""A wide MLP written straight as ONNX: a model where compute dominates, for sharding benches and tests.

`depth` dense layers of `width` units (MatMul + Add + Relu), or the layer sizes `sizes` spell out
(`[64, 2048, 2048, 64, ...]`: input first, output last), deterministic weights from `seed`, a
dynamic batch dimension. No training and no torch: the point is the arithmetic, not the answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["write_mlp"]


def write_mlp(
    folder: Path,
    *,
    name: str | None = None,
    width: int = 1024,
    depth: int = 8,
    inputs: int = 256,
    outputs: int = 16,
    seed: int = 0,
    max_batch_size: int = 1024,
    sizes: Sequence[int] | None = None,
) -> Path:
    """Write `folder/model.onnx` and `folder/config.json`; returns the folder."""
    if sizes is None:
        sizes = [inputs, *([width] * (depth - 1)), outputs]
    if len(sizes) < 2:
        raise ValueError("sizes: the input size, then at least one layer's")
    inputs, outputs, depth = sizes[0], sizes[-1], len(sizes) - 1
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    previous, fan_in = "x", inputs
    for layer in range(depth):
        fan_out = sizes[layer + 1]
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        initializers += [numpy_helper.from_array(weight, f"w{layer}"), numpy_helper.from_array(bias, f"b{layer}")]
        matmul, added = f"mm{layer}", f"add{layer}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [matmul], name=f"dense{layer}/MatMul"))
        out = "y" if layer == depth - 1 else added
        nodes.append(helper.make_node("Add", [matmul, f"b{layer}"], [out], name=f"dense{layer}/Add"))
        if layer < depth - 1:
            nodes.append(helper.make_node("Relu", [added], [f"relu{layer}"], name=f"dense{layer}/Relu"))
            previous = f"relu{layer}"
        fan_in = fan_out
    graph = helper.make_graph(
        nodes,
        "wide_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="distinfer-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    config = {
        "name": name or folder.name,
        "runtime": "onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, inputs]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, outputs]}],
        "max_batch_size": max_batch_size,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    return folder
