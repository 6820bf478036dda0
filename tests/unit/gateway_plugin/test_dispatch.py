"""The dispatcher over a real pool and a fake node client: retries, budget, deadline, hedging, feedback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from balancer import BreakerState, EjectionPolicy, HedgePolicy, NodePool, RetryBudget, RetryPolicy
from discovery.node import ModelInfo
from gateway_plugin.dispatch import Dispatcher, InferenceCall
from gateway_plugin.errors import BadRequest, DeadlineExceeded, NoCapacity
from tests.unit.balancer.conftest import static_pool
from worker.config import TensorSpec
from worker.errors import NodeRejected, NodeServerError, NodeTimeout, NodeUnreachable
from worker.protocol import DecodedResponse, Tensor

INFO = ModelInfo(
    "m",
    "1",
    "onnx",
    (TensorSpec(name="x", datatype="FP32", shape=(-1, 1)),),
    (TensorSpec(name="y", datatype="FP32", shape=(-1, 1)),),
)
INPUT = [Tensor.of("x", np.zeros((1, 1), np.float32))]

Behaviour = Callable[[], Any]  # returns seconds to wait then answer, or raises


class FakeClient:
    """Per node URL: a delay before answering, or an error to raise; records every call."""

    def __init__(self) -> None:
        self.delay: dict[str, float] = {}
        self.error: dict[str, Exception] = {}
        self.calls: list[str] = []
        self.fail_once: dict[str, bool] = {}

    async def infer(self, url: str, model: str, inputs: Any, *, timeout_s: float, **_: Any) -> DecodedResponse:
        self.calls.append(url)
        if url in self.error:
            raise self.error[url]
        if self.fail_once.pop(url, None) is not None:
            raise NodeTimeout(f"{url}: a hiccup", node_url=url)
        delay = self.delay.get(url, 0.0)
        if delay > timeout_s:
            await asyncio.sleep(timeout_s)
            raise NodeTimeout(f"{url}: no answer", node_url=url)
        await asyncio.sleep(delay)
        return DecodedResponse(model, "1", None, {}, [Tensor.of("y", np.ones((1, 1), np.float32))])


def cluster(count: int, **pool_config: Any) -> tuple[NodePool, list[str]]:
    ejection = EjectionPolicy(consecutive_failures=2, base_ejection_s=60)
    _, pool, urls = static_pool(count, ejection=ejection, models={"m": INFO}, **pool_config)
    return pool, urls


def call(timeout_s: float = 2.0, **fields: Any) -> InferenceCall:
    return InferenceCall(model="m", inputs=INPUT, request_id="r", timeout_s=timeout_s, **fields)


async def test_server_errors_retry_on_another_node_and_feed_the_breaker() -> None:
    pool, (a, _) = cluster(2)
    client = FakeClient()
    client.error[a] = NodeServerError("500", node_url=a, status=500)
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=3))  # type: ignore[arg-type]
    outcomes = [await dispatcher.infer(call()) for _ in range(6)]
    assert {o.node_id for o in outcomes} == {"n1"}
    assert pool.breaker(a).state is BreakerState.OPEN  # two failures in a row: ejected
    assert client.calls.count(a) == 2  # and no more traffic after that
    assert max(o.attempts for o in outcomes) == 2


async def test_rejections_are_never_retried() -> None:
    pool, (a, b) = cluster(2)
    client = FakeClient()
    client.error[a] = client.error[b] = NodeRejected("bad shape", node_url=a, status=400)
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=5))  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        await dispatcher.infer(call())
    assert len(client.calls) == 1


async def test_unreachable_node_is_taken_offline_and_retried() -> None:
    pool, (a, b) = cluster(2)
    client = FakeClient()
    client.error[a] = NodeUnreachable("refused", node_url=a)
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=2))  # type: ignore[arg-type]
    outcomes = [await dispatcher.infer(call()) for _ in range(4)]
    assert all(o.node_id == "n1" for o in outcomes)
    assert [n.key for n in pool.candidates("m")] == [b]


async def test_retry_budget_caps_retries_across_requests() -> None:
    pool, urls = cluster(3)
    client = FakeClient()
    for url in urls:
        client.error[url] = NodeServerError("503", node_url=url, status=503)
    budget = RetryBudget(time.monotonic, ratio=0.0, min_per_s=0.2, window_s=10)  # two retries in all
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=3), budget=budget)  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(NoCapacity):
            await dispatcher.infer(call())
    assert len(client.calls) == 3 + 2  # one attempt each, plus the two retries the budget had
    assert budget.refused >= 1


async def test_the_budget_pays_only_for_retries_that_are_sent() -> None:
    """Regression (audit): the retry was withdrawn before the deadline check, so requests that timed
    out spent the budget on retries never sent, and later requests that could retry were refused."""
    pool, (a, b) = cluster(2)
    client = FakeClient()
    client.delay[a] = client.delay[b] = 5.0
    budget = RetryBudget(time.monotonic, ratio=0.0, min_per_s=0.1, window_s=10)  # one retry in all
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=3), budget=budget)  # type: ignore[arg-type]
    with pytest.raises(DeadlineExceeded):
        await dispatcher.infer(call(timeout_s=0.05))
    assert len(client.calls) == 1
    assert budget.refused == 0
    assert budget.withdraw()  # the one retry is still there


async def test_deadline_is_kept_across_attempts() -> None:
    pool, (a, b) = cluster(2)
    client = FakeClient()
    client.delay[a] = client.delay[b] = 5.0
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=3))  # type: ignore[arg-type]
    began = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        await dispatcher.infer(call(timeout_s=0.2))
    assert time.perf_counter() - began < 0.6
    assert len(client.calls) == 1  # the first attempt spent the whole deadline


async def test_attempt_timeout_leaves_room_for_a_retry() -> None:
    pool, (a, _) = cluster(2)
    client = FakeClient()
    client.delay[a] = 5.0
    dispatcher = Dispatcher(
        pool,
        client,  # type: ignore[arg-type]
        retry=RetryPolicy(max_attempts=2),
        attempt_timeout_s=0.1,
    )
    outcomes = [await dispatcher.infer(call(timeout_s=1.0)) for _ in range(2)]
    assert {o.node_id for o in outcomes} == {"n1"}
    assert max(o.attempts for o in outcomes) == 2


async def test_a_callers_too_short_deadline_is_not_held_against_healthy_nodes() -> None:
    """Regression: every timeout counted as a node failure, so a caller asking 5 ms of a model that takes
    20 ms opened every healthy node's breaker within a few requests: panic mode for everyone."""
    pool, urls = cluster(3)
    client = FakeClient()
    for url in urls:
        client.delay[url] = 0.02
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=3))  # type: ignore[arg-type]
    for _ in range(60):  # their latency is known: a p95 of 20 ms
        await dispatcher.infer(call())
    assert all(pool.p95_s(url) for url in urls)
    for _ in range(9):  # 5 ms is less than they usually take: no verdict on them
        with pytest.raises(DeadlineExceeded):
            await dispatcher.infer(call(timeout_s=0.005))
    assert [pool.breaker(url).state for url in urls] == [BreakerState.CLOSED] * 3
    assert not (await dispatcher.infer(call())).panic


@pytest.mark.parametrize(("usual_s", "budget_s"), [(0.0, 0.15), (0.1, 0.3)], ids=["fast-model", "slow-model"])
async def test_a_node_that_hangs_past_its_usual_latency_is_ejected(usual_s: float, budget_s: float) -> None:
    """Within the caller's deadline but past what the node usually takes: the node's fault. (A first
    version asked for 4x the p95, so callers of a slow model never ejected a hung node.)"""
    pool, (a, b) = cluster(2)
    client = FakeClient()
    client.delay[a] = client.delay[b] = usual_s
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=1))  # type: ignore[arg-type]
    for _ in range(40):  # a p95 over 16 samples or more
        await dispatcher.infer(call())
    client.delay[a] = 5.0  # then node a hangs
    for _ in range(4):
        with contextlib.suppress(DeadlineExceeded, NoCapacity):
            await dispatcher.infer(call(timeout_s=budget_s))
    assert pool.breaker(a).state is BreakerState.OPEN
    assert pool.breaker(b).state is BreakerState.CLOSED


async def test_a_half_open_trial_that_times_out_always_counts() -> None:
    """Regression: a trial's timeout within a short deadline went unreported, which freed its trial
    slot, and a hung half-open node took every next request (each a timeout)."""
    ejection = EjectionPolicy(consecutive_failures=2, base_ejection_s=0.05)
    _, pool, (a, b) = static_pool(2, ejection=ejection, models={"m": INFO})
    client = FakeClient()
    client.delay[a] = client.delay[b] = 0.05
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=1))  # type: ignore[arg-type]
    for _ in range(40):  # a p95 of 50 ms for both
        await dispatcher.infer(call())
    client.error[a] = NodeServerError("500", node_url=a, status=500)
    while pool.breaker(a).state is not BreakerState.OPEN:
        with contextlib.suppress(NoCapacity):
            await dispatcher.infer(call())
    del client.error[a]
    client.delay[a], client.delay[b] = 5.0, 0.001  # a hangs now; b answers at once
    await asyncio.sleep(0.06)  # half-open: the next request is a's trial
    client.calls.clear()
    for _ in range(10):  # 20 ms: less than a's usual 50 ms, but a trial has nothing to be unfair to
        with contextlib.suppress(DeadlineExceeded):
            await dispatcher.infer(call(timeout_s=0.02))
    assert client.calls.count(a) == 1
    assert pool.breaker(a).state is BreakerState.OPEN


async def test_hedge_takes_the_fast_answer_and_cancels_the_slow_one() -> None:
    pool, (a, b) = cluster(2)
    client = FakeClient()
    client.delay[a] = 1.0
    dispatcher = Dispatcher(
        pool,
        client,  # type: ignore[arg-type]
        retry=RetryPolicy(max_attempts=2),
        hedge=HedgePolicy(enabled=True, after_s=0.02),
    )
    began = time.perf_counter()
    outcomes = [await dispatcher.infer(call()) for _ in range(2)]  # round robin: one of them starts on a
    assert time.perf_counter() - began < 0.5
    assert {o.node_id for o in outcomes} == {"n1"}
    assert any(o.hedged and o.attempts == 2 for o in outcomes)
    assert pool.in_flight(a) == pool.in_flight(b) == 0  # the cancelled attempt released its slot
    assert pool.breaker(a).state is BreakerState.CLOSED  # a cancelled hedge is not a failure


async def test_panic_mode_still_serves_and_says_so() -> None:
    pool, (a, b) = cluster(2)
    client = FakeClient()
    client.error[a] = client.error[b] = NodeServerError("500", node_url=a, status=500)
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=2))  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(NoCapacity):
            await dispatcher.infer(call())
    assert pool.panic_models() == ["m"]
    client.error.clear()  # the nodes heal, but both are ejected for a minute
    outcome = await dispatcher.infer(call())
    assert outcome.panic
    assert outcome.mode == "distributed"


async def test_with_no_other_node_left_the_retry_goes_to_the_same_one() -> None:
    pool, (a,) = cluster(1)
    client = FakeClient()
    client.fail_once[a] = True
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=2))  # type: ignore[arg-type]
    outcome = await dispatcher.infer(call())
    assert (outcome.node_id, outcome.attempts) == ("n0", 2)
    assert client.calls == [a, a]


class DeferringObserver:
    """Like the route hook on a single-call route: work passed to `later` waits for `run_later()`."""

    def __init__(self) -> None:
        from gateway_plugin.telemetry.observer import NO_OBSERVER

        self._quiet = NO_OBSERVER
        self.pending: list[Callable[[], None]] = []

    def dispatch(self, model: str, request_id: str, strategy: str) -> Any:
        return self._quiet.dispatch(model, request_id, strategy)

    def attempt(self, model: str, node_id: str, number: int, *, hedge: bool = False) -> Any:
        return self._quiet.attempt(model, node_id, number, hedge=hedge)

    def later(self, work: Callable[[], None]) -> None:
        self.pending.append(work)

    def run_later(self) -> None:
        pending, self.pending = self.pending, []
        for work in pending:
            work()


async def test_a_success_frees_its_slot_at_once_and_reports_its_latency_once_the_answer_is_out() -> None:
    """Regression (review): the slot was once released with the deferred report, after the answer had
    gone out: a slow client's download, or a sharded model's later stages, then counted as load on
    the node (busy at its limit, shunned by least_loaded)."""
    pool, (a,) = cluster(1)
    observer = DeferringObserver()
    dispatcher = Dispatcher(pool, FakeClient(), retry=RetryPolicy(), observer=observer)  # type: ignore[arg-type]
    await dispatcher.infer(call())
    assert pool.in_flight(a) == 0
    assert pool.latency_ewma_s(a) is None  # the report waits for the answer
    observer.run_later()
    assert pool.latency_ewma_s(a) is not None


async def test_a_failed_attempt_frees_its_slot_even_when_its_report_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    pool, (a,) = cluster(1)
    client = FakeClient()
    client.error[a] = NodeServerError("500", node_url=a, status=500)
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=1))  # type: ignore[arg-type]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("report failed")

    monkeypatch.setattr(pool, "_report", broken)
    with pytest.raises(RuntimeError, match="report failed"):
        await dispatcher.infer(call())
    assert pool.in_flight(a) == 0


async def test_shadow_copies_retry_without_drawing_on_the_budget() -> None:
    """Regression (review): shadow copies paid nothing into the budget but took retries out of it,
    so in shadow mode a real request's retry could be refused for a shadow copy's."""
    pool, (a, b) = cluster(2)
    client = FakeClient()
    budget = RetryBudget(time.monotonic, ratio=0.0, min_per_s=0.1, window_s=10)  # one retry in all
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=3), budget=budget)  # type: ignore[arg-type]
    client.fail_once = {a: True, b: True}
    shadow = await dispatcher.infer(call(shadow=True))
    assert shadow.attempts == 3  # both nodes hiccuped once: the third attempt answered
    assert budget.refused == 0
    assert budget.withdraw()  # the one retry of the budget is still there for real traffic


async def test_a_round_robin_retry_on_a_node_already_tried_takes_no_turn() -> None:
    """Regression (review): the last-resort retry on an already-tried node took a turn, so the next
    request started on the same node again."""
    pool, (a, b) = cluster(2)
    client = FakeClient()
    dispatcher = Dispatcher(pool, client, retry=RetryPolicy(max_attempts=3))  # type: ignore[arg-type]
    client.fail_once = {a: True, b: True}
    assert (await dispatcher.infer(call())).attempts == 3
    first = client.calls[0]
    client.calls.clear()
    await dispatcher.infer(call())
    assert client.calls[0] != first
