"""`distinfer shard split`: write each stage of a plan as a model folder, plus the pipeline description.

Output, in the repository folder `OUT`::

    OUT/<name>.stage<i>of<n>/config.json    a model any node loads like another
    OUT/<name>.stage<i>of<n>/model.onnx     (or model.pt2 for torch_export models)
    OUT/<name>.pipeline.json                what the gateway serves as model <name>

The pipeline description is a file, not a folder, so a node pointed at `OUT` loads the stages
and ignores it; the gateway finds it through `DISTINFER_SHARDED_MODELS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from worker.config import ModelConfig, TensorSpec
from worker.sharding.errors import SplitError
from worker.sharding.graph import OpGraph
from worker.sharding.plan import PipelineSpec, PipelineStage, ShardPlan
from worker.sharding.source import ModelSource, sha256_of

__all__ = ["PIPELINE_SUFFIX", "load_graph", "split_model", "stage_name"]

PIPELINE_SUFFIX = ".pipeline.json"


def stage_name(name: str, index: int, count: int) -> str:
    return f"{name}.stage{index}of{count}"


def load_graph(source: ModelSource, dims: Mapping[str, int] | None = None) -> OpGraph:
    """The source model's graph, read by the reader of its runtime."""
    if source.runtime == "onnx":
        from worker.sharding.onnx_graph import load_onnx, onnx_graph

        return onnx_graph(load_onnx(source.weights), dims)
    from worker.sharding.torch_graph import export_graph

    return export_graph(source).graph


def _batchable(specs: tuple[TensorSpec, ...]) -> bool:
    return all(spec.shape[:1] == (-1,) for spec in specs)


def split_model(
    source: ModelSource, plan: ShardPlan, out: Path, *, name: str | None = None
) -> tuple[PipelineSpec, Path]:
    """Write every stage of `plan` under `out`; returns the pipeline description and where it was written."""
    name = name or plan.model
    if source.runtime != plan.runtime:
        raise SplitError(f"the plan is for a {plan.runtime} model, {source.weights} is {source.runtime}")
    digest = sha256_of(source.weights)
    if digest != plan.sha256:
        raise SplitError(
            f"the plan was made for another file (sha256 {plan.sha256[:12]}...), {source.weights} is {digest[:12]}..."
        )
    count = len(plan.stages)
    folders = [out / stage_name(name, stage.index, count) for stage in plan.stages]
    if source.runtime == "onnx":
        from worker.sharding.split_onnx import write_onnx_stages

        specs = write_onnx_stages(source.weights, plan, folders)
    else:
        from worker.sharding.torch_graph import write_torch_stages

        specs = write_torch_stages(source, plan, folders)
    original = source.config
    for stage, folder, (inputs, outputs) in zip(plan.stages, folders, specs, strict=True):
        batchable = original.max_batch_size > 0 and _batchable((*inputs, *outputs))
        config = ModelConfig(
            name=stage_name(name, stage.index, count),
            version=original.version,
            runtime=original.runtime,
            inputs=inputs,
            outputs=outputs,
            max_batch_size=original.max_batch_size if batchable else 0,
            dynamic_batching=original.dynamic_batching if batchable else None,
        )
        (folder / "config.json").write_text(config.model_dump_json(indent=2, exclude_none=True) + "\n", "utf-8")
    pipeline = PipelineSpec(
        name=name,
        version=original.version,
        inputs=original.inputs,
        outputs=original.outputs,
        max_batch_size=original.max_batch_size,
        labels=original.labels,
        stages=tuple(
            PipelineStage(
                model=stage_name(name, stage.index, count),
                inputs=stage.inputs,
                outputs=stage.outputs,
                param_bytes=stage.param_bytes,
                flops=stage.flops,
                planned_node=stage.node.name,
            )
            for stage in plan.stages
        ),
        source_sha256=digest,
    )
    path = out / f"{name}{PIPELINE_SUFFIX}"
    path.write_text(pipeline.model_dump_json(indent=2) + "\n", "utf-8")
    return pipeline, path
