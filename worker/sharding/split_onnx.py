"""ONNX stages: each stage is the subgraph between its input and output tensors, extracted from the original.

`onnx.utils.Extractor` walks back from a stage's outputs and stops at its inputs, so a stage
holds exactly its ops, the initializers they use, and any constant-only ops they depend on.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.utils import Extractor

from worker.config import TensorSpec
from worker.runtimes.onnx import describe_onnx
from worker.sharding.errors import SplitError
from worker.sharding.onnx_graph import infer_value_info, load_onnx, onnx_graph
from worker.sharding.plan import ShardPlan

__all__ = ["StageSpecs", "write_onnx_stages"]

# Protobuf cannot hold a message over 2 GB; larger stages keep their weights in an external file.
_MAX_INLINE = 1_900_000_000


StageSpecs = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]


def write_onnx_stages(weights: Path, plan: ShardPlan, folders: list[Path]) -> list[StageSpecs]:
    """Write `folders[i]/model.onnx` for every stage; returns each stage's input and output specs."""
    model = load_onnx(weights)
    graph = onnx_graph(model, plan.dims)
    for stage in plan.stages:
        inputs, outputs = graph.stage_inputs(stage.start, stage.end), graph.stage_outputs(stage.start, stage.end)
        if list(stage.inputs) != inputs or list(stage.outputs) != outputs:
            raise SplitError(
                f"stage {stage.index} of the plan reads {list(stage.inputs)} and writes {list(stage.outputs)}, "
                f"but in this model ops {stage.start}..{stage.end} read {inputs} and write {outputs}: "
                "the plan was made for another model"
            )
    known = {value.name for value in model.graph.value_info}
    model.graph.value_info.extend(value for value in infer_value_info(model) if value.name not in known)
    extractor = Extractor(model)
    specs: list[StageSpecs] = []
    for stage, folder in zip(plan.stages, folders, strict=True):
        try:
            sub = extractor.extract_model(list(stage.inputs), list(stage.outputs))
        except ValueError as exc:
            raise SplitError(f"stage {stage.index}: cannot extract the subgraph: {exc}") from exc
        sub.graph.name = f"{plan.model} stage {stage.index} of {len(plan.stages)}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "model.onnx"
        if sub.ByteSize() > _MAX_INLINE:
            onnx.save(sub, str(path), save_as_external_data=True, location="model.onnx.data")
        else:
            onnx.save(sub, str(path))
        try:
            stage_inputs, stage_outputs = describe_onnx(path)
        except Exception as exc:  # onnxruntime refusing the stage is a bug in the cut, said plainly
            raise SplitError(f"stage {stage.index}: ONNX Runtime cannot load the extracted subgraph: {exc}") from exc
        specs.append((stage_inputs, stage_outputs))
    return specs
