"""A batch's or pipeline's whole deadline bounds every call made for it, and what comes after it.

Regression (audit, session 13): items and stages had only their own timeouts, so a batch run one
item at a time, or a chain of retried stages, held its request (or its task worker) for as long as
their sum. The fake model honours the deadline it is given, as the dispatcher does, unless it is
told to ignore it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import DeadlineExceeded, DistinferError, NoCapacity
from gateway_plugin.orchestration import BatchRunner, PipelineRunner, Stage
from worker.protocol import Tensor


class SlowModel:
    """Each call takes `seconds`, or fails at its own deadline as the dispatcher would."""

    def __init__(self, seconds: float, *, honours_deadline: bool = True, fails: bool = False) -> None:
        self.seconds = seconds
        self.honours_deadline = honours_deadline
        self.fails = fails
        self.timeouts: dict[str, list[float]] = {}

    async def infer(self, call: InferenceCall) -> Outcome:
        self.timeouts.setdefault(call.request_id, []).append(call.timeout_s)
        if self.honours_deadline and call.timeout_s < self.seconds:
            await asyncio.sleep(call.timeout_s)
            raise DeadlineExceeded(f"deadline of {call.timeout_s * 1000:.0f} ms spent after 1 attempts")
        await asyncio.sleep(self.seconds)
        if self.fails:
            raise NoCapacity("the node is down")
        return Outcome(call.model, "1", [Tensor.of("y", np.ones((1, 2), np.float32))], "n", "distributed", 1, 1.0)


def _call(request_id: str, timeout_s: float = 30.0) -> InferenceCall:
    return InferenceCall("m", [Tensor.of("x", np.ones((1, 2), np.float32))], request_id, timeout_s)


async def test_items_waiting_for_a_slot_after_the_batch_deadline_are_504_without_a_node_call() -> None:
    model = SlowModel(0.4)
    items: list[InferenceCall | DistinferError] = [_call(f"r{i}") for i in range(8)]
    began = time.perf_counter()
    results = await BatchRunner(model.infer, max_rows=lambda m: 0).run(items, max_concurrency=1, timeout_s=1.0)
    elapsed = time.perf_counter() - began
    assert isinstance(results[0], Outcome)
    assert all(max(seen) <= 1.0 for seen in model.timeouts.values())  # each call's deadline was cut to the batch's
    assert isinstance(results[-1], DeadlineExceeded)
    assert "batch's deadline of 1000 ms" in results[-1].detail
    assert "r7" not in model.timeouts  # never sent
    assert len(model.timeouts) < 8
    assert elapsed < 2.5  # one at a time, the eight items alone take 3.2 s


async def test_a_merged_call_gets_the_batch_deadline_too() -> None:
    model = SlowModel(5.0)
    items: list[InferenceCall | DistinferError] = [_call(f"r{i}") for i in range(4)]
    results = await BatchRunner(model.infer, max_rows=lambda m: 8).run(items, max_concurrency=1, timeout_s=0.3)
    assert all(isinstance(result, DeadlineExceeded) for result in results)
    [timeouts] = model.timeouts.values()  # one multi-row call, not four alone afterwards
    assert len(timeouts) == 1
    assert timeouts[0] <= 0.3


async def test_a_call_that_ignores_its_deadline_is_cut_off_soon_after_the_batch_deadline() -> None:
    model = SlowModel(30.0, honours_deadline=False)
    began = time.perf_counter()
    results = await BatchRunner(model.infer, max_rows=lambda m: 0).run([_call("r0")], max_concurrency=1, timeout_s=0.2)
    assert isinstance(results[0], DeadlineExceeded)
    assert time.perf_counter() - began < 5  # not the 30 s the call would take


async def test_without_a_whole_deadline_items_keep_their_own() -> None:
    model = SlowModel(0.01)
    results = await BatchRunner(model.infer, max_rows=lambda m: 0).run([_call("r0", 7.0)], max_concurrency=1)
    assert isinstance(results[0], Outcome)
    assert model.timeouts == {"r0": [7.0]}


def _stage(sid: str, *, depends_on: tuple[str, ...] = (), retries: int = 0, soft: bool = False) -> Stage:
    return Stage(sid, _call(f"p-{sid}"), depends_on, {}, retries=retries, soft=soft)


async def test_a_stage_whose_turn_comes_after_the_pipeline_deadline_does_not_run() -> None:
    model = SlowModel(30.0)
    stages = [_stage("slow"), _stage("after", depends_on=("slow",), soft=True)]
    began = time.perf_counter()
    results = await PipelineRunner(model.infer).run(stages, timeout_s=0.3)
    assert time.perf_counter() - began < 5
    slow, after = results["slow"], results["after"]
    assert slow.status == "error"
    assert isinstance(slow.error, DeadlineExceeded)
    assert model.timeouts["p-slow"][0] <= 0.3
    assert after.status == "skipped"
    assert isinstance(after.error, DeadlineExceeded)
    assert "pipeline's deadline of 300 ms" in after.error.detail
    assert "p-after" not in model.timeouts
    assert after.attempts == 0


async def test_retries_stop_at_the_pipeline_deadline_and_the_error_counts_the_stages_tries() -> None:
    model = SlowModel(0.2, fails=True)
    results = await PipelineRunner(model.infer).run([_stage("down", retries=5)], timeout_s=0.5)
    down = results["down"]
    assert down.status == "error"
    assert 2 <= down.attempts < 6  # five retries were allowed; the deadline ended them
    assert down.error is not None
    # Regression: the error said "after 1 attempts" (the dispatcher's count for its last call) while
    # the stage reported six.
    assert down.error.detail.startswith(f"stage 'down' failed {down.attempts} times, the last: ")
    assert len(model.timeouts["p-down"]) == down.attempts
    assert all(seen <= 0.5 for seen in model.timeouts["p-down"])
