"""The graph reader and the planner: cut points, layers, sizing to nodes, and errors that say why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.shard_model import write_mlp
from worker.bundled import bundled_models
from worker.sharding.errors import PlanError, ShardingError
from worker.sharding.graph import Op, OpGraph
from worker.sharding.plan import NodeCapacity, PipelineSpec, ShardPlan, read_model_file
from worker.sharding.planner import make_plan, stage_memory
from worker.sharding.source import open_source, sha256_of
from worker.sharding.split import load_graph

MB = 1024 * 1024
DIGITS = bundled_models() / "digits"


def nodes(*memory_mb: float, speeds: tuple[float, ...] | None = None) -> list[NodeCapacity]:
    return [
        NodeCapacity(name=f"n{i}", memory_bytes=int(mb * MB), speed=(speeds[i] if speeds else 1.0))
        for i, mb in enumerate(memory_mb)
    ]


def plan_for(folder: Path, capacities: list[NodeCapacity], **options: object) -> ShardPlan:
    source = open_source(folder)
    return make_plan(
        load_graph(source),
        capacities,
        model=source.config.name,
        source=str(source.weights),
        sha256=sha256_of(source.weights),
        **options,  # type: ignore[arg-type]
    )


def test_a_residual_branch_keeps_two_activations_crossing() -> None:
    # x -> a -> b -> add(a, b) -> y: between a and add, both a and b are alive.
    graph = OpGraph(
        inputs=("x",),
        outputs=("y",),
        ops=(
            Op("a", "MatMul", ("x",), ("a",), ("w1",)),
            Op("b", "MatMul", ("a",), ("b",), ("w2",)),
            Op("add", "Add", ("a", "b"), ("s",)),
            Op("c", "MatMul", ("s",), ("y",), ("w3",)),
        ),
        param_bytes={"w1": 4000, "w2": 4000, "w3": 4000},
    )
    assert graph.activations(1) == ["a"]
    assert sorted(graph.activations(2)) == ["a", "b"]
    assert graph.activations(3) == ["s"]
    assert graph.activation_counts() == [0, 1, 2, 1, 1]  # the last: the output leaving
    # The parameter-free add joins the layer before it: three layers, whichever cuts are admissible.
    assert [(u.start, u.end) for u in graph.units(1)] == [(0, 1), (1, 3), (3, 4)]
    assert [u.param_bytes for u in graph.units(2)] == [4000, 4000, 4000]


def test_digits_has_four_layers_and_plans_on_two_to_four_nodes() -> None:
    for count in (2, 3, 4):
        plan = plan_for(DIGITS, nodes(*[1.0] * count))
        assert len(plan.stages) == count
        assert plan.layers == 4
        assert all(stage.layers >= 1 for stage in plan.stages)
        assert plan.stages[0].inputs == ("image",)
        assert plan.stages[-1].outputs == ("logits",)
        for before, after in zip(plan.stages, plan.stages[1:], strict=False):
            assert before.end == after.start
            assert before.outputs == after.inputs  # one activation crosses each cut


def test_too_many_nodes_for_the_layers_is_a_clear_error() -> None:
    with pytest.raises(PlanError, match=r"4 layer\(s\).*too few for 5 stages"):
        plan_for(DIGITS, nodes(*[1.0] * 5))


def test_a_model_that_fits_no_node_set_says_what_it_needs(tmp_path: Path) -> None:
    mlp = write_mlp(tmp_path / "mlp", width=256, depth=4, inputs=64)  # ~0.6 MB of parameters
    with pytest.raises(PlanError, match=r"no plan fits: .* need .* MB in all, the nodes offer 0\.6 MB"):
        plan_for(mlp, nodes(0.3, 0.3))


def test_memory_decides_where_the_big_layers_go(tmp_path: Path) -> None:
    # Four equal layers; the first node can hold only one of them.
    mlp = write_mlp(tmp_path / "mlp", width=512, depth=4, inputs=512, outputs=512)
    layer = 512 * 512 * 4 + 512 * 4
    plan = plan_for(mlp, nodes(stage_memory(layer) / MB + 0.01, 100.0))
    assert [stage.layers for stage in plan.stages] == [1, 3]
    assert plan.stages[0].memory_bytes <= plan.stages[0].node.memory_bytes


def test_speed_shifts_compute_to_the_faster_node(tmp_path: Path) -> None:
    mlp = write_mlp(tmp_path / "mlp", width=512, depth=4, inputs=512, outputs=512)
    even = plan_for(mlp, nodes(100, 100))
    fast_second = plan_for(mlp, nodes(100, 100, speeds=(1.0, 3.0)))
    assert [s.layers for s in even.stages] == [2, 2]
    assert even.bottleneck == pytest.approx(1.0, abs=0.01)
    assert [s.layers for s in fast_second.stages] == [1, 3]


def test_fixed_starts_are_checked() -> None:
    assert [s.layers for s in plan_for(DIGITS, nodes(1, 1), starts=[3]).stages] == [3, 1]
    with pytest.raises(PlanError, match="increasing layer indices"):
        plan_for(DIGITS, nodes(1, 1, 1), starts=[2, 1])
    with pytest.raises(PlanError, match="only 4 layers"):
        plan_for(DIGITS, nodes(1, 1), starts=[4])


def test_plan_and_pipeline_files_are_validated(tmp_path: Path) -> None:
    plan = plan_for(DIGITS, nodes(1, 1))
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json(), "utf-8")
    assert read_model_file(ShardPlan, path) == plan
    broken = plan.model_dump()
    broken["stages"][1]["start"] += 1
    path.write_text(json.dumps(broken), "utf-8")
    with pytest.raises(ShardingError, match="does not start where stage 0 ends"):
        read_model_file(ShardPlan, path)
    spec = {
        "name": "m",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "stages": [{"model": "m.s1", "inputs": ["h"], "outputs": ["y"]}],
    }
    with pytest.raises(ValueError, match="reads 'h', which nothing before it makes"):
        PipelineSpec.model_validate(spec)
