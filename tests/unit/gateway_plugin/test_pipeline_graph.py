"""Pipelines: graph validation before anything runs, and how failures travel (hard vs soft)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pytest
from pydantic import ValidationError

from discovery.node import ModelInfo
from gateway_plugin.api.pipeline import PipelineRequest
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import BadRequest, DistinferError, NoCapacity, Unprocessable
from gateway_plugin.orchestration import PipelineRunner, Stage, validate
from worker.config import TensorSpec
from worker.protocol import Tensor


def _info(name: str, inputs: tuple[str, ...] = ("x",), outputs: tuple[str, ...] = ("y",)) -> ModelInfo:
    specs = tuple(TensorSpec(name=i, datatype="FP32", shape=(-1, 2)) for i in inputs)
    outs = tuple(TensorSpec(name=o, datatype="FP32", shape=(-1, 2)) for o in outputs)
    return ModelInfo(name=name, version="1", platform="fake", inputs=specs, outputs=outs, max_batch_size=8)


MODELS: Mapping[str, ModelInfo] = {
    "double": _info("double"),
    "fails": _info("fails"),
    "flaky": _info("flaky"),
    "pair": _info("pair", inputs=("x", "z")),
}


def _stage(
    sid: str,
    model: str = "double",
    *,
    given: bool = True,
    depends_on: tuple[str, ...] = (),
    input_map: Mapping[str, str] | None = None,
    soft: bool = False,
    retries: int = 0,
) -> Stage:
    inputs = [Tensor.of("x", np.ones((1, 2), np.float32))] if given else []
    call = InferenceCall(model, inputs, f"p-{sid}", 5.0)
    return Stage(sid, call, depends_on, dict(input_map or {}), retries=retries, soft=soft)


def _problems(stages: list[Stage]) -> list[str]:
    with pytest.raises(Unprocessable) as caught:
        validate(stages, MODELS.get)
    return [e["msg"] for e in caught.value.extra["errors"]]


def test_a_valid_dag_passes() -> None:
    validate(
        [_stage("a"), _stage("b"), _stage("c", given=False, input_map={"x": "a.y"}, depends_on=("b",))],
        MODELS.get,
    )


def test_cycles_unknown_references_and_missing_inputs_are_all_reported_at_once() -> None:
    problems = _problems(
        [
            _stage("a", given=False, input_map={"x": "c.y"}),
            _stage("b", depends_on=("a", "ghost")),
            _stage("c", given=False, input_map={"x": "b.y"}),
            _stage("d", "pair"),  # needs z too
            _stage("e", given=False, input_map={"x": "a.nope"}),
            _stage("f", given=False),
            _stage("g", input_map={"x": "a.y"}),  # x given twice
            _stage("a"),
        ]
    )
    text = "\n".join(problems)
    assert "stage ids ['a'] are used more than once" in text
    assert "depends on unknown stage 'ghost'" in text
    assert "the stages form a cycle" in text
    assert "needs inputs ['z']" in text
    assert "has no output 'nope'" in text
    assert "stage 'f': no inputs and no input_map" in text
    assert "stage 'g': inputs ['x'] are given more than once" in text


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ([_stage("a", depends_on=("a",))], "depends on itself"),
        ([_stage("a", given=False, input_map={"x": "nodot"})], "is not '<stage>.<output>'"),
        ([_stage("a", given=False, input_map={"x": "ghost.y"})], "unknown stage 'ghost'"),
        ([_stage("a", depends_on=("b",)), _stage("b", depends_on=("a",))], "cycle: a -> b -> a"),
    ],
)
def test_single_problems(stages: list[Stage], expected: str) -> None:
    assert any(expected in p for p in _problems(stages))


class FakeCluster:
    def __init__(self) -> None:
        self.flaky_failures = 1
        self.seen: dict[str, list[str]] = {}

    async def infer(self, call: InferenceCall) -> Outcome:
        self.seen[call.request_id] = sorted(t.name for t in call.inputs)
        await asyncio.sleep(0.05)
        if call.model == "fails":
            raise BadRequest("this model refuses everything")
        if call.model == "flaky" and self.flaky_failures:
            self.flaky_failures -= 1
            raise NoCapacity("try again")
        total = sum(t.data for t in call.inputs)
        return Outcome(call.model, "1", [Tensor.of("y", total * 2)], "n", "distributed", 1, 50.0)


def test_outputs_that_cannot_feed_the_input_they_are_mapped_to_are_422_before_anything_runs() -> None:
    """Regression (audit): a datatype or shape the next model refuses, or an output the upstream stage
    filtered out, ran the first stage and failed the second at its node (a 200 `partial`)."""
    models = {
        **MODELS,
        "ints": ModelInfo("ints", "1", "fake", (TensorSpec(name="x", datatype="INT64", shape=(-1, 2)),), (), 8),
        "wide": ModelInfo("wide", "1", "fake", (TensorSpec(name="x", datatype="FP32", shape=(-1, 3)),), (), 8),
        "flat": ModelInfo("flat", "1", "fake", (TensorSpec(name="x", datatype="FP32", shape=(-1,)),), (), 8),
        "any": ModelInfo("any", "1", "fake", (TensorSpec(name="x", datatype="FP32", shape=(-1, -1)),), (), 8),
    }
    for model, says in (("ints", "datatype FP32, model expects INT64"), ("wide", "shape [-1, 2]"), ("flat", "shape")):
        stages = [_stage("a"), _stage("b", model, given=False, input_map={"x": "a.y"})]
        with pytest.raises(Unprocessable) as caught:
            validate(stages, models.get)
        assert says in caught.value.extra["errors"][0]["msg"], model
    validate([_stage("a"), _stage("b", "any", given=False, input_map={"x": "a.y"})], models.get)  # -1 fits any size

    two = {**models, "two": _info("two", outputs=("y", "w"))}
    filtered = _stage("a", "two")
    filtered = Stage("a", replace(filtered.call, outputs=["y"]), (), {})
    with pytest.raises(Unprocessable) as caught:
        validate([filtered, _stage("b", given=False, input_map={"x": "a.w"})], two.get)
    assert "leaves out of its outputs ['y']" in caught.value.extra["errors"][0]["msg"]
    validate([filtered, _stage("b", given=False, input_map={"x": "a.y"})], two.get)


def test_a_chain_far_deeper_than_the_recursion_limit_is_checked() -> None:
    """Regression: the cycle walk recursed per stage; a chain of 1,200 (DISTINFER_MAX_PIPELINE_STAGES
    has no upper bound) raised RecursionError, a 500."""
    count = 3 * 1200
    chain = [_stage("s0")] + [_stage(f"s{n}", given=False, input_map={"x": f"s{n - 1}.y"}) for n in range(1, count)]
    validate(list(reversed(chain)), MODELS.get)  # listed downstream first: the deepest walk
    looped = [_stage("s0", given=False, input_map={"x": f"s{count - 1}.y"}), *chain[1:]]
    problems = _problems(looped)
    assert any("cycle" in problem for problem in problems)


def test_repeated_names_are_found_among_many_tensors_and_references() -> None:
    many = [Tensor.of(f"t{k}", np.ones((1, 2), np.float32)) for k in range(5000)]
    many.append(Tensor.of("t7", np.ones((1, 2), np.float32)))
    stage = Stage("a", InferenceCall("unknown-model", many, "p-a", 5.0), input_map={"t9": "b.y"})
    problems = _problems([stage, _stage("b")])
    assert problems[0] == "stage 'a': inputs ['t7', 't9'] are given more than once"
    references = _stage("c", given=False, input_map={f"x{k}": f"b{k % 3}.y" for k in range(3000)})
    assert references.upstreams() == ("b0", "b1", "b2")


@pytest.mark.parametrize("field", ["depends_on", "input_map", "outputs"])
def test_a_stages_lists_are_bounded_by_the_schema(field: str) -> None:
    """The graph is checked on the event loop before anything runs: one stage cannot list without end."""
    values = {"depends_on": [f"s{k}" for k in range(257)], "outputs": [f"o{k}" for k in range(257)]}
    values["input_map"] = {f"x{k}": f"s{k}.y" for k in range(257)}  # type: ignore[assignment]
    stage = {"id": "a", "model": "double", field: values[field]}
    with pytest.raises(ValidationError, match="at most 256"):
        PipelineRequest.model_validate({"stages": [stage]})
    fits = {**stage, field: values[field][:256] if field != "input_map" else dict(list(values[field].items())[:256])}
    PipelineRequest.model_validate({"stages": [fits]})


async def test_independent_stages_overlap_and_outputs_feed_inputs() -> None:
    cluster = FakeCluster()
    stages = [
        _stage("a"),
        _stage("b"),
        _stage("c", "pair", given=False, input_map={"x": "a.y", "z": "b.y"}),
    ]
    results = await PipelineRunner(cluster.infer).run(stages)
    assert [results[s].status for s in "abc"] == ["ok", "ok", "ok"]
    a, b, c = results["a"], results["b"], results["c"]
    assert a.started_s < b.finished_s
    assert b.started_s < a.finished_s
    assert c.started_s >= max(a.finished_s, b.finished_s)
    assert c.outcome is not None
    np.testing.assert_array_equal(c.outcome.outputs[0].data, np.full((1, 2), 8.0))
    assert cluster.seen["p-c"] == ["x", "z"]


async def test_a_failure_skips_hard_dependants_only_and_soft_ones_run_without_its_inputs() -> None:
    cluster = FakeCluster()
    stages = [
        _stage("bad", "fails"),
        _stage("sibling"),
        _stage("hard", given=False, input_map={"x": "bad.y"}),
        _stage("after_hard", depends_on=("hard",)),
        _stage("soft", "pair", input_map={"z": "bad.y"}, soft=True),
        _stage("retried", "flaky", retries=1),
    ]
    results = await PipelineRunner(cluster.infer).run(stages)
    status = {sid: r.status for sid, r in results.items()}
    assert status == {
        "bad": "error",
        "sibling": "ok",
        "hard": "skipped",
        "after_hard": "skipped",
        "soft": "ok",
        "retried": "ok",
    }
    error = results["hard"].error
    assert isinstance(error, DistinferError)
    assert error.code == "upstream_failed"
    assert error.status == 424
    assert cluster.seen["p-soft"] == ["x"]  # ran without z, which its failed upstream would have given
    assert results["retried"].attempts == 2
    assert "p-hard" not in cluster.seen


async def test_a_soft_stage_whose_model_needs_a_lost_input_is_skipped_not_sent() -> None:
    """Regression (audit): a soft dependant went to its node without an input its model declares,
    which the node could only refuse (a 400 blamed on the stage). It runs only when its model may go
    without the lost input (metadata unknown here: `declared` empty)."""
    cluster = FakeCluster()
    needs = replace(_stage("needs", "pair", input_map={"z": "bad.y"}, soft=True), declared=frozenset({"x", "z"}))
    results = await PipelineRunner(cluster.infer).run([_stage("bad", "fails"), needs])
    skipped = results["needs"]
    assert skipped.status == "skipped"
    assert isinstance(skipped.error, DistinferError)
    assert skipped.error.code == "upstream_failed"
    assert "needs inputs ['z']" in skipped.error.detail
    assert "p-needs" not in cluster.seen
