"""Coalescing and splitting batches: every caller gets exactly its own rows, outputs and parameters.

The fake model is deterministic per row, so whatever calls the coalescer makes, each item's
answer can be compared with what that item alone would have got. Items whose rows contain the
poison value make any request holding them fail (as a node refuses a bad tensor); the model
`flat` answers without a batch dimension, so its merged answers cannot be split.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import BadRequest, DeadlineExceeded, DistinferError, NoCapacity
from gateway_plugin.orchestration import BatchRunner
from gateway_plugin.orchestration.coalesce import Group, coalesce_key, merge, plan, split
from worker.protocol import Tensor

POISON = -1.0
MAX_ROWS = {"m1": 5, "m2": 3, "flat": 8, "nobatch": 0}


@dataclass
class FakeModel:
    """Row-wise outputs that depend on the row, the parameters and the requested outputs."""

    calls: list[InferenceCall] = field(default_factory=list)
    unavailable: frozenset[str] = frozenset()

    def answer(self, call: InferenceCall) -> Outcome:
        x = next(t for t in call.inputs if t.name == "x").data
        if call.model in self.unavailable:
            raise NoCapacity("down")
        if np.any(x == POISON):
            raise BadRequest("poisoned row")
        scale = float(call.parameters.get("scale", 1))
        flat = x.reshape(x.shape[0], -1)
        outputs = {
            "y": Tensor.of("y", (flat * scale + 1).astype(np.float32)),
            "z": Tensor.of("z", flat.sum(axis=1).astype(np.float64)),
        }
        if call.model == "flat":
            outputs["y"] = Tensor.of("y", np.asarray(flat.sum() * scale, dtype=np.float32))
        names = call.outputs or ["y", "z"]
        return Outcome(call.model, "1", [outputs[n] for n in names], "node-1", "distributed", 1, 1.0)

    async def infer(self, call: InferenceCall) -> Outcome:
        self.calls.append(call)
        await asyncio.sleep(0)
        return self.answer(call)


@st.composite
def calls(draw: st.DrawFn) -> list[InferenceCall]:
    count = draw(st.integers(1, 14))
    items = []
    for index in range(count):
        # Mostly alike, so that many items share requests; sometimes different, so that some cannot.
        model = draw(st.sampled_from(["m1", "m1", "m1", "m2", "flat", "nobatch"]))
        rows = draw(st.integers(1, 4))
        width = draw(st.sampled_from([2, 2, 2, 3]))
        data = np.arange(rows * width, dtype=np.float32).reshape(rows, width) + index * 100
        if draw(st.integers(0, 5)) == 0:
            data[draw(st.integers(0, rows - 1)), 0] = POISON
        outputs = draw(st.sampled_from([None, None, None, ("y",), ("z", "y")]))
        items.append(
            InferenceCall(
                model=model,
                inputs=[Tensor.of("x", data)],
                request_id=f"item-{index}",
                timeout_s=5.0,
                outputs=None if outputs is None else list(outputs),
                parameters={"scale": draw(st.sampled_from([1, 1, 1, 2]))},
            )
        )
    return items


def _same(got: Outcome | DistinferError, expected: Outcome | DistinferError) -> None:
    if isinstance(expected, DistinferError):
        assert type(got) is type(expected), (got, expected)
        return
    assert isinstance(got, Outcome), got
    assert [t.name for t in got.outputs] == [t.name for t in expected.outputs]
    for mine, alone in zip(got.outputs, expected.outputs, strict=True):
        assert mine.datatype == alone.datatype
        np.testing.assert_array_equal(mine.data, alone.data)


def _alone(model: FakeModel, call: InferenceCall) -> Outcome | DistinferError:
    try:
        return model.answer(call)
    except DistinferError as exc:
        return exc


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=calls(), concurrency=st.integers(1, 4), spread=st.integers(1, 4))
def test_every_caller_gets_exactly_its_own_rows_outputs_and_errors(
    items: list[InferenceCall], concurrency: int, spread: int
) -> None:
    model = FakeModel()
    runner = BatchRunner(model.infer, max_rows=MAX_ROWS.__getitem__)
    results = asyncio.run(runner.run(items, max_concurrency=concurrency, spread=spread))
    assert len(results) == len(items)
    for item, result in zip(items, results, strict=True):
        _same(result, _alone(model, item))
    for call in model.calls:  # no request ever carries more rows than the model takes
        rows = call.inputs[0].data.shape[0]
        limit = MAX_ROWS[call.model]
        assert rows <= max(limit, max(i.inputs[0].data.shape[0] for i in items))


@settings(max_examples=100, deadline=None)
@given(items=calls(), spread=st.integers(1, 4))
def test_plan_covers_every_item_once_and_groups_only_equal_keys(items: list[InferenceCall], spread: int) -> None:
    groups = plan(items, MAX_ROWS.__getitem__, spread=spread)
    seen = sorted(index for group in groups for index in group.members)
    assert seen == list(range(len(items)))
    for group in groups:
        if group.single:
            continue
        keys = {coalesce_key(items[i]) for i in group.members}
        assert len(keys) == 1
        assert None not in keys
        model = items[group.members[0]].model
        assert MAX_ROWS[model] > 0
        assert sum(items[i].inputs[0].data.shape[0] for i in group.members) <= MAX_ROWS[model]


def _call(index: int, rows: int, **changes: object) -> InferenceCall:
    base = InferenceCall(
        model="m1",
        inputs=[Tensor.of("x", np.full((rows, 2), index, dtype=np.float32))],
        request_id=f"r{index}",
        timeout_s=1.0,
        parameters={"scale": 1},
    )
    fields = {
        "model": base.model,
        "inputs": base.inputs,
        "request_id": base.request_id,
        "timeout_s": base.timeout_s,
        "parameters": base.parameters,
    }
    fields.update(changes)  # type: ignore[arg-type]
    return InferenceCall(**fields)  # type: ignore[arg-type]


def test_items_differing_in_parameters_or_outputs_never_share_a_request() -> None:
    items = [_call(0, 1), _call(1, 1, parameters={"scale": 2}), _call(2, 1, outputs=["z"]), _call(3, 1)]
    groups = plan(items, MAX_ROWS.__getitem__)
    assert [g.members for g in groups] == [(0, 3), (1,), (2,)]


def test_merge_stacks_rows_and_split_gives_them_back() -> None:
    items = [_call(0, 2), _call(1, 1), _call(2, 3)]
    group = Group((0, 1, 2))
    merged = merge(items, group, "merged")
    assert merged.request_id == "merged"
    assert merged.inputs[0].data.shape == (6, 2)
    outcome = Outcome("m1", "1", [Tensor.of("y", merged.inputs[0].data * 10)], "n", "distributed", 1, 2.0)
    parts = split(outcome, items, group)
    assert parts is not None
    for item, part in zip(items, parts, strict=True):
        np.testing.assert_array_equal(part.outputs[0].data, item.inputs[0].data * 10)


def test_a_large_group_is_cut_to_spread_over_nodes() -> None:
    items = [_call(i, 1) for i in range(5)]
    assert [len(g.members) for g in plan(items, lambda m: 256, spread=1)] == [5]
    assert [len(g.members) for g in plan(items, lambda m: 256, spread=2)] == [3, 2]
    assert [len(g.members) for g in plan(items, lambda m: 2, spread=1)] == [2, 2, 1]


async def test_coalescing_makes_fewer_requests_and_the_stream_reports_each_item_once() -> None:
    model = FakeModel()
    items: list[InferenceCall | DistinferError] = [_call(i, 1) for i in range(10)]
    items.insert(3, BadRequest("refused before it ran"))
    runner = BatchRunner(model.infer, max_rows=lambda m: 5)
    seen = [index async for index, _ in runner.stream(items, max_concurrency=2)]
    assert sorted(seen) == list(range(11))
    assert len(model.calls) == 2  # ten one-row items in two five-row requests

    model.calls.clear()
    await runner.run(items, max_concurrency=2, coalesce=False)
    assert len(model.calls) == 10


async def test_a_poisoned_item_fails_alone_and_a_spent_deadline_fails_the_group() -> None:
    model = FakeModel()
    items = [_call(0, 1), _call(1, 1, inputs=[Tensor.of("x", np.full((1, 2), POISON, dtype=np.float32))]), _call(2, 1)]
    results = await BatchRunner(model.infer, max_rows=lambda m: 8).run(items, max_concurrency=1)
    assert isinstance(results[0], Outcome)
    assert isinstance(results[2], Outcome)
    assert isinstance(results[1], BadRequest)
    assert len(model.calls) == 4  # the merged call, then each alone

    async def too_slow(call: InferenceCall) -> Outcome:
        raise DeadlineExceeded("spent")

    results = await BatchRunner(too_slow, max_rows=lambda m: 8).run(items, max_concurrency=1)
    assert all(isinstance(r, DeadlineExceeded) for r in results)


async def test_leaving_the_stream_early_cancels_work_in_flight() -> None:
    started = asyncio.Event()
    cancelled: list[str] = []

    async def hang(call: InferenceCall) -> Outcome:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(call.request_id)
            raise
        raise AssertionError("not reached")

    runner = BatchRunner(hang, max_rows=lambda m: 0)
    stream = runner.stream([_call(0, 1), _call(1, 1), BadRequest("x")], max_concurrency=4)
    index, result = await anext(stream)
    assert index == 2
    assert isinstance(result, BadRequest)
    await started.wait()
    await stream.aclose()
    assert sorted(cancelled) == ["r0", "r1"]


@pytest.mark.parametrize("bad", [[Tensor.of("x", np.zeros((2, 2), np.float32)), Tensor.of("w", np.zeros((3,)))]])
def test_calls_whose_inputs_disagree_on_rows_are_never_merged(bad: Sequence[Tensor]) -> None:
    assert coalesce_key(_call(0, 1, inputs=list(bad))) is None
