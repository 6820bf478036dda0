"""The sharded-model runner alone, over a fake stage dispatcher: order of rows, options, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import BadRequest, NoCapacity
from gateway_plugin.shard_runner import ShardRunner
from worker.protocol import Tensor
from worker.sharding.plan import PipelineSpec

SPEC = PipelineSpec.model_validate(
    {
        "name": "m",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "max_batch_size": 64,
        "stages": [
            {"model": "m.stage0of2", "inputs": ["x"], "outputs": ["h"]},
            {"model": "m.stage1of2", "inputs": ["h"], "outputs": ["y"]},
        ],
    }
)


class FakeStages:
    """Stage 0 doubles, stage 1 adds one; optionally fails a stage."""

    def __init__(self, fail: str | None = None) -> None:
        self.calls: list[InferenceCall] = []
        self.fail = fail

    async def infer(self, call: InferenceCall) -> Outcome:
        self.calls.append(call)
        if call.model == self.fail:
            raise NoCapacity(f"model {call.model!r} cannot be served now")
        data = call.inputs[0].data
        name, value = ("h", data * 2) if call.model.endswith("stage0of2") else ("y", data + 1)
        return Outcome(call.model, "1", [Tensor.of(name, value)], f"node-{call.model[-4]}", "distributed", 1, 1.0)


class LocalStages(FakeStages):
    """Every stage answered by the gateway's local fallback (mode local, no node call)."""

    def __init__(self, local: frozenset[str]) -> None:
        super().__init__()
        self.local = local

    async def infer(self, call: InferenceCall) -> Outcome:
        outcome = await super().infer(call)
        if call.model in self.local:
            return replace(outcome, node_id=None, mode="local", attempts=0)
        return outcome


@pytest.mark.parametrize(
    ("local", "mode"),
    [
        (frozenset({"m.stage0of2", "m.stage1of2"}), "local"),
        (frozenset({"m.stage1of2"}), "distributed"),
        (frozenset(), "distributed"),
    ],
)
async def test_a_model_whose_every_stage_ran_locally_says_local(local: frozenset[str], mode: str) -> None:
    """Regression: local stages make no node call (attempts 0), so 'all local' was never seen."""
    runner = ShardRunner(SPEC, LocalStages(local), NoNodes(), micro_batch=3)  # type: ignore[arg-type]
    outcome = await runner.infer(_call(8))
    assert outcome.mode == mode


class NoNodes:
    def pick(self, model: str, **_: Any) -> None:
        return None


def _call(rows: int, parameters: Mapping[str, Any] | None = None) -> InferenceCall:
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    return InferenceCall("m", [Tensor.of("x", x)], "req", 5.0, parameters=dict(parameters or {}))


async def test_micro_batches_come_back_in_row_order() -> None:
    stages = FakeStages()
    runner = ShardRunner(SPEC, stages, NoNodes(), micro_batch=3)  # type: ignore[arg-type]
    outcome = await runner.infer(_call(8))
    expected = np.arange(16, dtype=np.float32).reshape(8, 2) * 2 + 1
    np.testing.assert_array_equal(outcome.outputs[0].data, expected)
    assert len(stages.calls) == 3 * 2  # 3 micro-batches (3+3+2 rows), 2 stages each
    assert outcome.attempts == 6
    assert outcome.node_id == "node-0>node-1"
    assert {call.request_id for call in stages.calls} >= {"req.m0.s0", "req.m2.s1"}


class SlowStages(FakeStages):
    """Counts the stage calls in flight at once."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.now = self.most = 0
        self.fail_after = fail_after

    async def infer(self, call: InferenceCall) -> Outcome:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.001)
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise NoCapacity("a stage failed")
            return await super().infer(call)
        finally:
            self.now -= 1


async def test_micro_batches_run_a_few_per_stage_at_once() -> None:
    """Regression: every micro-batch ran at once: 64 rows cut into rows of 1 made 64 calls at a time,
    from one request holding one admission place."""
    stages = SlowStages()
    runner = ShardRunner(SPEC, stages, NoNodes())  # type: ignore[arg-type]
    outcome = await runner.infer(_call(64, {"shard_micro_batch": 1}))
    np.testing.assert_array_equal(outcome.outputs[0].data, np.arange(128, dtype=np.float32).reshape(64, 2) * 2 + 1)
    assert len(stages.calls) == 128
    assert stages.most == 8  # two stages: at most four pieces each in flight
    failing = SlowStages(fail_after=5)
    with pytest.raises(NoCapacity):  # a failure cancels the pieces still waiting for their turn, cleanly
        await ShardRunner(SPEC, failing, NoNodes()).infer(_call(64, {"shard_micro_batch": 1}))  # type: ignore[arg-type]


async def test_runner_parameters_are_not_passed_to_stages_and_are_checked() -> None:
    stages = FakeStages()
    runner = ShardRunner(SPEC, stages, NoNodes())  # type: ignore[arg-type]
    await runner.infer(_call(2, {"shard_micro_batch": 1, "keep": "me"}))
    assert all(call.parameters == {"keep": "me"} for call in stages.calls)
    with pytest.raises(BadRequest, match="shard_micro_batch"):
        await runner.infer(_call(2, {"shard_micro_batch": -1}))
    with pytest.raises(BadRequest, match="shard_forwarding"):
        await runner.infer(_call(2, {"shard_forwarding": "yes"}))


async def test_forwarding_without_nodes_for_later_stages_runs_relayed() -> None:
    stages = FakeStages()
    runner = ShardRunner(SPEC, stages, NoNodes(), forwarding=True)  # type: ignore[arg-type]
    outcome = await runner.infer(_call(2))
    assert [call.model for call in stages.calls] == ["m.stage0of2", "m.stage1of2"]
    assert outcome.attempts == 2


async def test_a_stage_that_cannot_be_served_is_named() -> None:
    runner = ShardRunner(SPEC, FakeStages(fail="m.stage1of2"), NoNodes())  # type: ignore[arg-type]
    with pytest.raises(NoCapacity, match=r"stage 1 \(m.stage1of2\) of sharded model 'm'"):
        await runner.infer(_call(2))


async def test_inputs_are_checked_against_the_pipeline() -> None:
    runner = ShardRunner(SPEC, FakeStages(), NoNodes())  # type: ignore[arg-type]
    wrong = InferenceCall("m", [Tensor.of("z", np.ones((1, 2), dtype=np.float32))], "r", 1.0)
    with pytest.raises(BadRequest, match="has no input 'z'"):
        await runner.infer(wrong)
    shaped = InferenceCall("m", [Tensor.of("x", np.ones((1, 3), dtype=np.float32))], "r", 1.0)
    with pytest.raises(BadRequest, match="shape"):
        await runner.infer(shaped)


async def test_default_micro_batches_only_while_the_pipeline_has_room() -> None:
    stages = FakeStages()
    runner = ShardRunner(SPEC, stages, NoNodes(), micro_batch=1)  # type: ignore[arg-type]
    await runner.infer(_call(4))
    assert len(stages.calls) == 4 * 2  # alone: cut into 4 micro-batches
    stages.calls.clear()
    runner._in_flight = 2  # as many requests in flight as there are stages
    await runner.infer(_call(4))
    assert len(stages.calls) == 2  # whole
    await runner.infer(_call(4, {"shard_micro_batch": 2}))
    assert len(stages.calls) == 2 + 2 * 2  # asked for explicitly: always
