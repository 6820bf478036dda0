"""Reading an ONNX model as an `OpGraph`: parameters per op, activation sizes, a compute estimate.

Shapes come from ONNX shape inference; symbolic dimensions (batch, sequence) count as 1 unless
`dims` gives them a size, so compute is an estimate *per batch row* at a typical shape. Compute
is counted in multiply-adds x2 for MatMul, Gemm and Conv, and one operation per output element
for everything else; it only has to rank stages against each other, not predict a latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import onnx
from onnx import helper, shape_inference

from worker.sharding.errors import GraphError
from worker.sharding.graph import Op, OpGraph

__all__ = ["infer_value_info", "load_onnx", "onnx_graph"]

_Shape = list[int | str | None]
# Ops fed only by constants and initializers this small are shape arithmetic, recomputed per stage.
_SMALL_CONSTANT_BYTES = 1024


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's and onnx's own errors: the file is not a model
        raise GraphError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(math.prod(tensor.dims)) * int(itemsize)


def _subgraph_reads(node: onnx.NodeProto) -> Iterator[str]:
    """Names a node's subgraphs (If, Loop, Scan bodies) read from the enclosing graph."""
    for attribute in node.attribute:
        graphs = list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else [])
        for graph in graphs:
            defined = {value.name for value in graph.input} | {init.name for init in graph.initializer}
            for inner in graph.node:
                for name in (*inner.input, *_subgraph_reads(inner)):
                    if name and name not in defined:
                        yield name
                defined.update(inner.output)


def infer_value_info(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Types and shapes of the intermediate tensors, inferred on a copy without the weights' bytes.

    Shape inference serialises the model it is given; without initializer data that takes
    milliseconds instead of a second per 100 MB. Best effort: an empty list when it fails.
    """
    graph = model.graph
    weights = [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in graph.initializer]
    known = {value.name for value in graph.input}
    light = helper.make_model(
        helper.make_graph(
            list(graph.node),
            graph.name or "graph",
            [*graph.input, *(w for w in weights if w.name not in known)],
            list(graph.output),
            value_info=list(graph.value_info),
        ),
        opset_imports=list(model.opset_import),
        functions=list(model.functions),
        ir_version=model.ir_version,
    )
    try:
        return list(shape_inference.infer_shapes(light).graph.value_info)
    except Exception:  # onnx's own errors: compute then falls back to parameter counts
        return []


def _shapes(model: onnx.ModelProto) -> tuple[dict[str, _Shape], dict[str, int]]:
    shapes: dict[str, _Shape] = {}
    itemsizes: dict[str, int] = {}
    graph = model.graph
    for value in (*graph.input, *infer_value_info(model), *graph.output):
        kind = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not kind.HasField("shape"):
            continue
        shapes[value.name] = [
            dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or None) for dim in kind.shape.dim
        ]
        itemsizes[value.name] = helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize
    return shapes, itemsizes


def _size(shape: _Shape | None, dims: Mapping[str, int]) -> int | None:
    if shape is None:
        return None
    return math.prod(d if isinstance(d, int) else dims.get(d or "", 1) for d in shape)


def _flops(node: onnx.NodeProto, shapes: Mapping[str, _Shape], dims: Mapping[str, int], weights: int) -> float:
    out = _size(shapes.get(node.output[0]) if node.output else None, dims)
    if out is None:
        return 2.0 * weights  # a dense layer does about one multiply-add per weight and row
    if node.op_type in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"):
        first = shapes.get(node.input[0])
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        inner = first[-2 if trans_a else -1] if first else None
        depth = inner if isinstance(inner, int) else dims.get(inner or "", 1)
        return 2.0 * out * depth
    if node.op_type in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
        kernel = shapes.get(node.input[1])
        per_output = _size(kernel[1:], dims) if kernel else None
        return 2.0 * out * (per_output or 1)
    return float(out)


def onnx_graph(model: onnx.ModelProto, dims: Mapping[str, int] | None = None) -> OpGraph:
    """The model's `OpGraph`; `dims` sizes symbolic dimensions for the compute estimate."""
    dims = dict(dims or {})
    graph = model.graph
    initializers = {init.name: _tensor_bytes(init) for init in graph.initializer}
    elements = {init.name: math.prod(init.dims) for init in graph.initializer}
    shapes, itemsizes = _shapes(model)
    for init in graph.initializer:
        shapes.setdefault(init.name, list(init.dims))
    free: set[str] = set()
    ops: list[Op] = []
    for index, node in enumerate(graph.node):
        reads = [name for name in (*node.input, *_subgraph_reads(node)) if name]
        params = tuple(dict.fromkeys(name for name in reads if name in initializers))
        activations = tuple(dict.fromkeys(name for name in reads if name not in initializers))
        weight_bytes = sum(initializers[name] for name in params)
        # Outputs of ops fed by constants alone are recomputed by each stage that needs them.
        if weight_bytes < _SMALL_CONSTANT_BYTES and all(name in free for name in activations):
            free.update(node.output)
        weights = sum(elements[name] for name in params)
        ops.append(
            Op(
                name=node.name or f"{node.op_type}_{index}",
                op_type=node.op_type,
                inputs=activations,
                outputs=tuple(name for name in node.output if name),
                params=params,
                flops=_flops(node, shapes, dims, weights),
            )
        )
    row_bytes = {
        name: (_size(shape, dims) or 0) * itemsizes.get(name, 4) for name, shape in shapes.items() if name in itemsizes
    }
    inputs = tuple(value.name for value in graph.input if value.name not in initializers)
    return OpGraph(
        inputs=inputs,
        outputs=tuple(value.name for value in graph.output),
        ops=tuple(ops),
        param_bytes=initializers,
        tensor_row_bytes=row_bytes,
        free=frozenset(free),
    )
