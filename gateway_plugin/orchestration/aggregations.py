"""Aggregations of several models' answers to one input (CONTRACT §4 `aggregation`), and their quorums.

    first             the first success; the rest are cancelled
    all               every answer as it is; no combined output
    majority_vote     each model's class per row (argmax, or the label it outputs); the most votes win
    weighted_average  element-wise weighted mean of numeric outputs (`weights` per model, default 1)
    ensemble          weighted mean of class probabilities (softmax of logits), with each model's part

Ties in a vote go to the label that the earliest-listed model voted for, so an answer never
depends on which node happened to be faster. Pure functions over answers: no I/O here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gateway_plugin.dispatch import Outcome
from gateway_plugin.errors import DistinferError, Unprocessable
from worker.protocol import Tensor

__all__ = ["AGGREGATIONS", "Aggregate", "Aggregation", "Answer", "aggregate", "quorum_met", "quorum_reached"]

Aggregation = Literal["first", "all", "majority_vote", "weighted_average", "ensemble"]
AGGREGATIONS: tuple[Aggregation, ...] = ("first", "all", "majority_vote", "weighted_average", "ensemble")


@dataclass(frozen=True, slots=True)
class Answer:
    """One model's part: its outcome, or why it has none (`cancelled`: stopped once the quorum was met)."""

    model: str
    status: Literal["ok", "error", "cancelled"]
    outcome: Outcome | None = None
    error: DistinferError | None = None
    rank: int = -1  # order of arrival among successes


@dataclass(frozen=True, slots=True)
class Aggregate:
    output: list[Tensor] | None
    label: str | list[str] | None = None
    votes: dict[str, int] | list[dict[str, int]] | None = None
    contributions: dict[str, Any] | None = None
    winner: str | None = None  # `first`: the model that answered first


def _pick(outcome: Outcome, name: str | None) -> Tensor:
    if name is None:
        return outcome.outputs[0]
    for tensor in outcome.outputs:
        if tensor.name == name:
            return tensor
    raise Unprocessable(f"model {outcome.model!r} has no output {name!r}")


def _labels_per_row(tensor: Tensor, labels: Sequence[str]) -> list[str]:
    """The class each row stands for: argmax of scores, or the class id / label the model outputs."""
    data = tensor.data
    if tensor.datatype == "BYTES":
        flat = data.reshape(-1)
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    if data.ndim >= 2 and data.dtype.kind in "fiu":
        indexes = _rows(tensor).argmax(axis=1)
    elif data.ndim == 1 and data.dtype.kind in "iu":
        indexes = data
    else:
        raise Unprocessable(f"output {tensor.name!r} of shape {list(data.shape)} is not a classification")
    return [labels[i] if 0 <= i < len(labels) else str(int(i)) for i in indexes.tolist()]


def _rows(tensor: Tensor) -> np.ndarray[Any, Any]:
    """One row of scores per batch item (zero rows are fine: `reshape(0, -1)` is not)."""
    data = tensor.data
    width = int(np.prod(data.shape[1:]))
    if width == 0:
        raise Unprocessable(f"output {tensor.name!r} of shape {list(data.shape)} has no scores per row")
    return data.reshape(data.shape[0], width)


def _probabilities(tensor: Tensor) -> np.ndarray[Any, Any]:
    """Rows of class probabilities: taken as they are when they already are, else softmax of logits."""
    if tensor.data.ndim < 2 or tensor.data.dtype.kind not in "fiu":
        raise Unprocessable(f"output {tensor.name!r} of shape {tensor.shape} has no class scores per row")
    scores = _rows(tensor).astype(np.float64)
    sums = scores.sum(axis=1)
    if np.all(scores >= 0) and np.allclose(sums, 1.0, atol=1e-3):
        return scores
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _votes(
    answers: Sequence[Answer], output: str | None, labels: Mapping[str, Sequence[str]]
) -> tuple[list[Counter[str]], list[list[str]]]:
    """Per row: the vote counts, and the labels in the order models were listed (for ties)."""
    counts: list[Counter[str]] | None = None  # None until the first answer: zero rows is an answer too
    firsts: list[list[str]] = []
    for answer in answers:
        assert answer.outcome is not None
        rows = _labels_per_row(_pick(answer.outcome, output), labels.get(answer.model, ()))
        if counts is None:
            counts = [Counter() for _ in rows]
            firsts = [[] for _ in rows]
        if len(rows) != len(counts):
            raise Unprocessable("models disagree on the number of rows; they cannot vote")
        for row, label in enumerate(rows):
            counts[row][label] += 1
            if label not in firsts[row]:
                firsts[row].append(label)
    return counts or [], firsts


def _successes(answers: Sequence[Answer]) -> list[Answer]:
    return [a for a in answers if a.status == "ok" and a.outcome is not None]


def quorum_met(
    aggregation: Aggregation,
    answers: Sequence[Answer],
    *,
    min_responses: int | None,
    output: str | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    final: bool = False,
) -> bool:
    """`min_responses` successes are in (for votes: that many agree on every row); default 1.

    Answers that cannot vote (no such output, rows that differ) are no quorum while answers still
    come in; `final` (all are in) lets that Unprocessable out: a 422 the client can act on, not a 503.
    """
    ok = _successes(answers)
    needed = min_responses or 1
    if len(ok) < needed:
        return False
    if aggregation != "majority_vote" or min_responses is None:
        return True
    try:
        counts, _ = _votes(ok, output, labels or {})
    except DistinferError:
        if final:
            raise
        return False
    return all(max(row.values()) >= needed for row in counts)


def quorum_reached(
    aggregation: Aggregation,
    answers: Sequence[Answer],
    *,
    expected: int,
    min_responses: int | None,
    output: str | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> bool:
    """Whether to answer now: everyone is in, or the quorum is met (`first`: one success suffices)."""
    if len(answers) >= expected:
        return True
    if aggregation != "first" and min_responses is None:
        return False  # no quorum asked for: wait for everyone (or the deadline)
    return quorum_met(aggregation, answers, min_responses=min_responses, output=output, labels=labels)


def aggregate(
    aggregation: Aggregation,
    answers: Sequence[Answer],
    *,
    order: Sequence[str],
    weights: Mapping[str, float] | None = None,
    output: str | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> Aggregate:
    """Combine the successful answers (at least one) as `aggregation` says."""
    position = {model: i for i, model in enumerate(order)}
    ok = sorted(_successes(answers), key=lambda a: position.get(a.model, len(position)))
    if not ok:
        raise Unprocessable("no model answered; nothing to aggregate")
    if aggregation == "first":
        fastest = min(ok, key=lambda a: a.rank)
        assert fastest.outcome is not None
        return Aggregate(output=list(fastest.outcome.outputs), winner=fastest.model)
    if aggregation == "all":
        return Aggregate(output=None)
    if aggregation == "majority_vote":
        return _majority(ok, output, labels or {})
    weight = {a.model: float((weights or {}).get(a.model, 1.0)) for a in ok}
    if sum(weight.values()) <= 0:
        raise Unprocessable("the weights of the models that answered add up to 0")
    if aggregation == "weighted_average":
        return _weighted_average(ok, weight)
    return _ensemble(ok, weight, output, labels or {})


def _majority(ok: Sequence[Answer], output: str | None, labels: Mapping[str, Sequence[str]]) -> Aggregate:
    counts, firsts = _votes(ok, output, labels)
    winners: list[str] = []
    for row, first_seen in zip(counts, firsts, strict=True):
        top = max(row.values())
        winners.append(next(label for label in first_seen if row[label] == top))
    tensors = [
        Tensor("label", "BYTES", np.array([w.encode() for w in winners], dtype=object)),
        Tensor("votes", "INT32", np.array([row[w] for row, w in zip(counts, winners, strict=True)], dtype=np.int32)),
    ]
    votes = [dict(row.most_common()) for row in counts]
    if len(winners) == 1:
        return Aggregate(output=tensors, label=winners[0], votes=votes[0])
    return Aggregate(output=tensors, label=winners, votes=votes)


def _weighted_average(ok: Sequence[Answer], weight: Mapping[str, float]) -> Aggregate:
    total = sum(weight.values())
    first = ok[0].outcome
    assert first is not None
    averaged: list[Tensor] = []
    for tensor in first.outputs:
        parts: list[tuple[float, np.ndarray[Any, Any]]] = []
        for answer in ok:
            assert answer.outcome is not None
            other = _pick(answer.outcome, tensor.name)
            if other.data.shape != tensor.data.shape or other.data.dtype.kind not in "fiub":
                raise Unprocessable(
                    f"output {tensor.name!r}: {answer.model!r} gives {other.datatype} {other.shape}, "
                    f"{ok[0].model!r} gives {tensor.datatype} {tensor.shape}; they cannot be averaged"
                )
            parts.append((weight[answer.model], other.data.astype(np.float64)))
        mean = sum(w * data for w, data in parts) / total
        dtype = tensor.data.dtype if tensor.data.dtype.kind == "f" else np.dtype(np.float64)
        averaged.append(Tensor.of(tensor.name, np.asarray(mean, dtype=dtype)))
    return Aggregate(output=averaged, contributions={a.model: {"weight": weight[a.model]} for a in ok})


def _ensemble(
    ok: Sequence[Answer], weight: Mapping[str, float], output: str | None, labels: Mapping[str, Sequence[str]]
) -> Aggregate:
    total = sum(weight.values())
    per_model: dict[str, np.ndarray[Any, Any]] = {}
    for answer in ok:
        assert answer.outcome is not None
        per_model[answer.model] = _probabilities(_pick(answer.outcome, output))
    shapes = {p.shape for p in per_model.values()}
    if len(shapes) != 1:
        raise Unprocessable(f"models give class probabilities of different shapes {sorted(shapes)}")
    mean = sum(weight[m] * p for m, p in per_model.items()) / total
    winners_idx = np.asarray(mean).argmax(axis=1)
    names = labels.get(ok[0].model, ())
    winners = [names[i] if i < len(names) else str(int(i)) for i in winners_idx.tolist()]
    rows = np.arange(len(winners_idx))
    contributions = {
        model: {
            "weight": weight[model],
            "share": round(weight[model] / total, 6),
            "label": _labels_per_row(Tensor.of("p", probs), labels.get(model, ())),
            "probability_of_winner": [round(float(v), 6) for v in probs[rows, winners_idx]],
        }
        for model, probs in per_model.items()
    }
    tensors = [Tensor.of("probabilities", np.asarray(mean, dtype=np.float32))]
    label: str | list[str] = winners[0] if len(winners) == 1 else winners
    return Aggregate(output=tensors, label=label, contributions=contributions)
