"""PyTorch models (`torch_export`, a saved `torch.export` program): its graph as an `OpGraph`, and its stages.

The exported program's graph is flat ATen ops whose parameters come in as placeholders. A stage
is the ops of its range copied into a new `torch.fx` graph, with the parameters it uses attached
to a fresh module, then exported again with `torch.export` (batch and other symbolic dimensions
left dynamic) and saved as the stage's `model.pt2`. Example inputs for that export are real
activations: the model's example input run through the stages before it.

Graph inputs and outputs take the names the model's config.json gives them (by position), so a
pipeline description reads the same as for an ONNX model; activations keep their FX node names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config import TensorSpec
from worker.protocol import datatype_of
from worker.sharding.errors import GraphError, SplitError
from worker.sharding.graph import Op, OpGraph
from worker.sharding.plan import ShardPlan
from worker.sharding.source import ModelSource

__all__ = ["TorchExport", "export_graph", "write_torch_stages"]

_MATMUL = ("linear", "mm", "addmm", "matmul", "bmm", "baddbmm")
_CONV = ("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose2d")
StageSpecs = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]
EXAMPLE_BATCH = 3  # dynamic dimensions must not be 0 or 1 in an example, or export specialises them
EXAMPLE_DIM = 5


@dataclass
class TorchExport:
    program: Any  # torch.export.ExportedProgram
    graph: OpGraph
    nodes: list[Any]  # the fx nodes behind graph.ops, in order
    names: dict[Any, str]  # fx node -> tensor name in the OpGraph
    params: dict[Any, str]  # placeholder node of a parameter/buffer/constant -> its state key
    free_nodes: list[Any]  # nodes computed from parameters alone, recomputed by each stage that needs them


def _node_args(node: Any) -> Iterator[Any]:
    import torch.fx

    found: list[Any] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    yield from found


def _shape(value: Any) -> list[int | None]:
    return [int(d) if isinstance(d, int) else None for d in getattr(value, "shape", ())]


def _numel(value: Any) -> int:
    return math.prod(d or 1 for d in _shape(value))


def _flops(node: Any) -> float:
    out = node.meta.get("val")
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    if name in _MATMUL and node.args:
        first = _shape(node.args[0 if name not in ("addmm", "baddbmm") else 1].meta.get("val"))
        return 2.0 * _numel(out) * (first[-1] or 1 if first else 1)
    if name in _CONV and len(node.args) > 1:
        weight = _shape(node.args[1].meta.get("val"))
        return 2.0 * _numel(out) * math.prod(d or 1 for d in weight[1:])
    return float(_numel(out)) if hasattr(out, "shape") else 0.0


def _nbytes(tensor: Any) -> int:
    return int(tensor.numel() * tensor.element_size())


def export_graph(source: ModelSource) -> TorchExport:
    import torch
    from torch.export.graph_signature import InputKind

    try:
        program = torch.export.load(str(source.weights))
    except Exception as exc:  # torch's own errors: not a program this torch can read
        raise GraphError(f"{source.weights}: not a torch.export program ({type(exc).__name__}: {exc})") from exc
    signature = program.graph_signature
    user_inputs = [spec.arg.name for spec in signature.input_specs if spec.kind == InputKind.USER_INPUT]
    if len(user_inputs) != len(source.config.inputs):
        raise GraphError(f"the program takes {len(user_inputs)} inputs, config.json names {len(source.config.inputs)}")
    state = {**program.state_dict, **program.constants}
    params: dict[str, str] = {
        spec.arg.name: spec.target
        for spec in signature.input_specs
        if spec.kind != InputKind.USER_INPUT and spec.target
    }
    by_name = {node.name: node for node in program.graph.nodes}
    names: dict[Any, str] = {by_name[p]: spec.name for p, spec in zip(user_inputs, source.config.inputs, strict=True)}
    output_node = next(node for node in program.graph.nodes if node.op == "output")
    returned = list(output_node.args[0]) if isinstance(output_node.args[0], (tuple, list)) else [output_node.args[0]]
    if len(returned) != len(source.config.outputs):
        raise GraphError(f"the program returns {len(returned)} outputs, config.json names {len(source.config.outputs)}")
    names.update({node: spec.name for node, spec in zip(returned, source.config.outputs, strict=True)})
    param_nodes = {by_name[name]: key for name, key in params.items()}
    free: set[Any] = set()
    ops: list[Op] = []
    nodes: list[Any] = []
    uncuttable: set[str] = set()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        reads = list(dict.fromkeys(_node_args(node)))
        if all(arg in param_nodes or arg in free for arg in reads):
            free.add(node)
        name = names.setdefault(node, node.name)
        if not isinstance(node.meta.get("val"), torch.Tensor):
            uncuttable.add(name)  # tuples of tensors, symbolic ints: read where they are made
        nodes.append(node)
        ops.append(
            Op(
                name=name,
                op_type=str(node.target),
                inputs=tuple(names.setdefault(arg, arg.name) for arg in reads if arg not in param_nodes),
                outputs=(name,),
                params=tuple(param_nodes[arg] for arg in reads if arg in param_nodes),
                flops=_flops(node),
            )
        )
    row_bytes = {
        names[node]: _numel(node.meta["val"]) * node.meta["val"].element_size()
        for node in nodes
        if isinstance(node.meta.get("val"), torch.Tensor)
    }
    graph = OpGraph(
        inputs=tuple(spec.name for spec in source.config.inputs),
        outputs=tuple(spec.name for spec in source.config.outputs),
        ops=tuple(ops),
        param_bytes={key: _nbytes(state[key]) for key in param_nodes.values()},
        tensor_row_bytes=row_bytes,
        free=frozenset(names[node] for node in free),
        uncuttable=frozenset(uncuttable),
    )
    return TorchExport(program, graph, nodes, names, param_nodes, [n for n in nodes if n in free])


def _example(spec: TensorSpec) -> Any:
    import torch

    shape = [EXAMPLE_BATCH if i == 0 and d == -1 else (EXAMPLE_DIM if d == -1 else d) for i, d in enumerate(spec.shape)]
    if spec.datatype in ("FP32", "FP64", "FP16"):
        dtype = {"FP32": torch.float32, "FP64": torch.float64, "FP16": torch.float16}[spec.datatype]
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    dtype = {"INT64": torch.int64, "INT32": torch.int32, "BOOL": torch.bool}.get(spec.datatype, torch.int64)
    return torch.ones(*shape, dtype=dtype)


def _spec(name: str, value: Any, dynamic: list[bool]) -> TensorSpec:
    dims = tuple(-1 if dyn else int(d) for d, dyn in zip(value.shape, dynamic, strict=True))
    return TensorSpec(name=name, datatype=datatype_of(value.detach().numpy().dtype), shape=dims)


def _stage_module(loaded: TorchExport, start: int, end: int, inputs: list[str], outputs: list[str]) -> Any:
    import torch
    from torch import fx

    state = {**loaded.program.state_dict, **loaded.program.constants}
    graph = fx.Graph()
    root = torch.nn.Module()
    env: dict[Any, Any] = {}
    by_name = {name: node for node, name in loaded.names.items()}
    for name in inputs:
        env[by_name[name]] = graph.placeholder(re.sub(r"\W", "_", name))
    body = loaded.nodes[start:end]
    needed = {arg for node in body for arg in _node_args(node)}
    for node in reversed(loaded.free_nodes):  # free nodes feeding the stage, and those feeding them
        if node in needed or any(user in needed for user in node.users):
            needed.add(node)
            needed.update(_node_args(node))
    for index, (node, key) in enumerate(sorted(loaded.params.items(), key=lambda item: item[1])):
        if node in needed:
            attr = f"w{index}"
            tensor = state[key]
            if isinstance(tensor, torch.nn.Parameter):
                root.register_parameter(attr, torch.nn.Parameter(tensor.detach(), requires_grad=False))
            else:
                root.register_buffer(attr, tensor)
            env[node] = graph.get_attr(attr)
    for node in [n for n in loaded.free_nodes if n in needed and n not in body] + body:
        env[node] = graph.node_copy(node, lambda arg: env[arg])
    graph.output(tuple(env[by_name[name]] for name in outputs))
    return fx.GraphModule(root, graph)


def write_torch_stages(source: ModelSource, plan: ShardPlan, folders: list[Path]) -> list[StageSpecs]:
    """Export each stage of `plan` as `folders[i]/model.pt2`; returns each stage's input and output specs."""
    import torch

    loaded = export_graph(source)
    graph = loaded.graph
    values: dict[str, Any] = {spec.name: _example(spec) for spec in source.config.inputs}
    dynamic: dict[str, list[bool]] = {
        spec.name: [d == -1 for d in spec.shape] for spec in (*source.config.inputs, *source.config.outputs)
    }
    for node, name in loaded.names.items():
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            dynamic.setdefault(name, [not isinstance(d, int) for d in value.shape])
    specs: list[StageSpecs] = []
    for stage, folder in zip(plan.stages, folders, strict=True):
        inputs, outputs = graph.stage_inputs(stage.start, stage.end), graph.stage_outputs(stage.start, stage.end)
        if list(stage.inputs) != inputs or list(stage.outputs) != outputs:
            raise SplitError(f"stage {stage.index} of the plan does not match this program: made for another model")
        module = _stage_module(loaded, stage.start, stage.end, inputs, outputs)
        args = tuple(values[name] for name in inputs)
        shapes = tuple({i: torch.export.Dim.AUTO for i, dyn in enumerate(dynamic[name]) if dyn} for name in inputs)
        try:
            with torch.no_grad():
                exported = torch.export.export(module, args, dynamic_shapes=shapes)
                results = exported.module()(*args)
        except Exception as exc:  # torch's own errors: the cut cannot be re-exported
            raise SplitError(
                f"stage {stage.index}: torch.export of the stage failed: {type(exc).__name__}: {exc}"
            ) from exc
        folder.mkdir(parents=True, exist_ok=True)
        torch.export.save(exported, str(folder / "model.pt2"))
        results = results if isinstance(results, (tuple, list)) else (results,)
        values.update(zip(outputs, results, strict=True))
        specs.append(
            (
                tuple(_spec(name, values[name], dynamic[name]) for name in inputs),
                tuple(_spec(name, values[name], dynamic[name]) for name in outputs),
            )
        )
    return specs
