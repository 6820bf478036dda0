"""Aggregations and quorums over answers, and the fan-out that stops at the quorum."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pydantic import ValidationError

from gateway_plugin.api.parallel import ParallelRequest
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import NoCapacity, Unprocessable
from gateway_plugin.orchestration import Answer, aggregate, fan_out
from gateway_plugin.orchestration.aggregations import quorum_met, quorum_reached
from worker.protocol import Tensor

LABELS = {m: [str(i) for i in range(3)] for m in ("a", "b", "c", "d")}


def _logits(model: str, *rows: list[float], rank: int = 0) -> Answer:
    outcome = Outcome(model, "1", [Tensor.of("logits", np.asarray(rows, dtype=np.float32))], "n", "distributed", 1, 1.0)
    return Answer(model, "ok", outcome=outcome, rank=rank)


def test_majority_vote_counts_argmax_per_row_and_breaks_ties_by_model_order() -> None:
    answers = [
        _logits("a", [0, 5, 1], [9, 0, 0], rank=2),
        _logits("b", [0, 1, 7], [0, 0, 3], rank=0),
        _logits("c", [0, 4, 1], [0, 2, 1], rank=1),
    ]
    result = aggregate("majority_vote", answers, order=["a", "b", "c"], labels=LABELS)
    assert result.label == ["1", "0"]  # row 2: a 3-way tie, won by the first listed model's label
    assert result.votes == [{"1": 2, "2": 1}, {"0": 1, "2": 1, "1": 1}]
    assert result.output is not None
    assert result.output[0].data.tolist() == [b"1", b"0"]
    assert result.output[1].data.tolist() == [2, 1]


def test_ensemble_averages_softmax_probabilities_with_weights() -> None:
    answers = [_logits("a", [2.0, 0.0, 0.0]), _logits("b", [0.0, 3.0, 0.0])]
    result = aggregate("ensemble", answers, order=["a", "b"], weights={"a": 3.0, "b": 1.0}, labels=LABELS)
    pa = np.exp([2.0, 0, 0]) / np.exp([2.0, 0, 0]).sum()
    pb = np.exp([0, 3.0, 0]) / np.exp([0, 3.0, 0]).sum()
    expected = (3 * pa + pb) / 4
    assert result.output is not None
    np.testing.assert_allclose(result.output[0].data[0], expected, rtol=1e-5)
    assert result.label == "0"
    assert result.contributions is not None
    assert result.contributions["a"]["share"] == 0.75
    assert result.contributions["b"]["label"] == ["1"]


def test_ensemble_takes_probabilities_as_they_are() -> None:
    answers = [_logits("a", [0.2, 0.8, 0.0]), _logits("b", [0.6, 0.4, 0.0])]
    result = aggregate("ensemble", answers, order=["a", "b"])
    assert result.output is not None
    np.testing.assert_allclose(result.output[0].data[0], [0.4, 0.6, 0.0], rtol=1e-6)


def test_weighted_average_and_its_refusals() -> None:
    answers = [_logits("a", [1.0, 2.0]), _logits("b", [3.0, 6.0])]
    result = aggregate("weighted_average", answers, order=["a", "b"], weights={"a": 1, "b": 3})
    assert result.output is not None
    np.testing.assert_allclose(result.output[0].data, [[2.5, 5.0]])
    with pytest.raises(Unprocessable):
        aggregate("weighted_average", answers, order=["a", "b"], weights={"a": 0, "b": 0})
    with pytest.raises(Unprocessable, match="cannot be averaged"):
        aggregate("weighted_average", [*answers, _logits("c", [1.0, 2.0, 3.0])], order=["a", "b", "c"])


def test_first_is_the_earliest_success_and_failures_are_left_out() -> None:
    answers = [_logits("a", [1.0], rank=1), Answer("b", "error", error=NoCapacity("x")), _logits("c", [2.0], rank=0)]
    result = aggregate("first", answers, order=["a", "b", "c"])
    assert result.winner == "c"
    with pytest.raises(Unprocessable):
        aggregate("all", [Answer("b", "error", error=NoCapacity("x"))], order=["b"])


def test_quorums() -> None:
    agree = [_logits("a", [0, 9, 0]), _logits("b", [0, 8, 0])]
    disagree = [_logits("a", [0, 9, 0]), _logits("b", [9, 0, 0])]
    assert quorum_met("majority_vote", agree, min_responses=2)
    assert not quorum_met("majority_vote", disagree, min_responses=2)
    assert quorum_reached("majority_vote", agree, expected=3, min_responses=2)
    assert not quorum_reached("majority_vote", disagree, expected=3, min_responses=2)
    assert not quorum_reached("all", agree, expected=3, min_responses=None)  # waits for everyone
    assert quorum_reached("first", agree[:1], expected=3, min_responses=None)
    assert quorum_reached("ensemble", agree, expected=3, min_responses=2)


def _no_rows(model: str) -> Answer:
    outcome = Outcome(model, "1", [Tensor.of("logits", np.zeros((0, 3), dtype=np.float32))], "n", "distributed", 1, 1.0)
    return Answer(model, "ok", outcome=outcome)


@pytest.mark.parametrize("empty_at", [0, 1, 2])
def test_a_model_with_no_rows_cannot_vote_with_models_that_have_some(empty_at: int) -> None:
    """Regression: an empty first answer was forgotten by the next one, so the verdict hung on order."""
    answers = [_logits("b", [0, 9, 0], [9, 0, 0]), _logits("c", [0, 9, 0], [9, 0, 0])]
    answers.insert(empty_at, _no_rows("a"))
    with pytest.raises(Unprocessable, match="number of rows"):
        aggregate("majority_vote", answers, order=["a", "b", "c"], labels=LABELS)
    with pytest.raises(Unprocessable, match="number of rows"):
        quorum_met("majority_vote", answers, min_responses=2, final=True)
    everyone_empty = [_no_rows("a"), _no_rows("b")]
    assert aggregate("majority_vote", everyone_empty, order=["a", "b"], labels=LABELS).label == []


async def test_fan_out_stops_at_the_quorum_and_cancels_stragglers() -> None:
    cancelled: list[str] = []

    async def infer(call: InferenceCall) -> Outcome:
        delay = {"fast1": 0.0, "fast2": 0.01, "slow": 30.0}[call.model]
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            cancelled.append(call.model)
            raise
        return Outcome(call.model, "1", [Tensor.of("y", np.ones((1, 2), np.float32))], "n", "distributed", 1, 1.0)

    calls = {m: InferenceCall(m, [], f"r-{m}", 30.0) for m in ("fast1", "slow", "fast2")}
    order = ["fast1", "slow", "fast2", "missing"]
    failed = {"missing": NoCapacity("nobody has it")}
    fanned = await fan_out(
        infer,
        order,
        calls,
        failed,
        reached=lambda answers: quorum_reached("all", answers, expected=4, min_responses=2),
        timeout_s=10.0,
    )
    assert [a.status for a in fanned.answers] == ["ok", "cancelled", "ok", "error"]
    assert cancelled == ["slow"]
    assert not fanned.timed_out

    fanned = await fan_out(infer, ["slow"], {"slow": calls["slow"]}, {}, reached=lambda a: False, timeout_s=0.05)
    assert fanned.timed_out
    assert fanned.answers[0].status == "error"


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), 1e308, -1.0])
def test_weights_are_finite_and_bounded(weight: float) -> None:
    """Regression: two weights of 1e308 summed to inf: the weighted average came out NaN."""
    with pytest.raises(ValidationError):
        ParallelRequest.model_validate({"models": ["a", "b"], "inputs": [1.0], "weights": {"a": weight, "b": 1.0}})
    ParallelRequest.model_validate({"models": ["a", "b"], "inputs": [1.0], "weights": {"a": 1e6, "b": 0.0}})
