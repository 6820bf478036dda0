"""Coalescing: batch items for one model become one multi-row request, and the answer is split back.

Items may share a request only when nothing but their rows differs: same model, strategy,
deadline, requested outputs and parameters, and tensors with the same names, datatypes and
non-batch dimensions. The model must declare a batch dimension (`max_batch_size > 0`); a group is
cut into chunks of at most that many rows, and into at least `spread` chunks so that a large
batch still fans out over several nodes.

Splitting gives each caller exactly its own rows. When the merged call fails for a reason that
may be one item's fault, or the outputs do not keep the batch dimension, every member runs alone,
so one bad item fails only itself; only a spent deadline is shared by the whole group.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from gateway_plugin.dispatch import InferenceCall, Outcome
from worker.protocol import Tensor

__all__ = ["Group", "Infer", "coalesce_key", "merge", "plan", "split"]

Infer = Callable[[InferenceCall], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class Group:
    """Indexes of calls that go out as one request (one index: the call goes out as it is)."""

    members: tuple[int, ...]

    @property
    def single(self) -> bool:
        return len(self.members) == 1


def _rows(call: InferenceCall) -> int | None:
    """The batch dimension shared by every input, or None when the inputs disagree or have none."""
    sizes = {tensor.data.shape[0] if tensor.data.ndim else -1 for tensor in call.inputs}
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size if size > 0 else None


# Every field of a call but its inputs, request id and parameters (those are compared apart).
_SAME_FIELDS = tuple(f.name for f in fields(InferenceCall) if f.name not in ("inputs", "request_id", "parameters"))


def coalesce_key(call: InferenceCall) -> tuple[object, ...] | None:
    """What must be equal for two calls to share one request; None when this call cannot share.

    Every field of the call but its inputs and request id (model, deadline, outputs, parameters,
    strategy, affinity, ...), and the inputs' names, datatypes and non-batch dimensions.
    """
    if not call.inputs or _rows(call) is None:
        return None
    parameters = ""
    if call.parameters:
        try:
            parameters = json.dumps(call.parameters, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):
            return None
    rest = [getattr(call, name) for name in _SAME_FIELDS]
    rest = [tuple(value) if isinstance(value, list | tuple) else value for value in rest]
    tensors = tuple(sorted((t.name, t.datatype, t.data.shape[1:]) for t in call.inputs))
    key = (parameters, tensors, *rest)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def plan(calls: Sequence[InferenceCall], max_rows: Callable[[str], int], *, spread: int = 1) -> list[Group]:
    """Groups over `calls` (every index exactly once, in first-appearance order).

    `max_rows(model)` is the model's largest batch (0: no batch dimension, never coalesce).
    """
    by_key: dict[tuple[object, ...], list[int]] = {}
    groups: list[Group | tuple[object, ...]] = []
    limits: dict[str, int] = {}
    for index, call in enumerate(calls):
        key = coalesce_key(call)
        if call.model not in limits:
            limits[call.model] = max_rows(call.model)
        limit = limits[call.model]
        if key is None or limit <= 0 or (_rows(call) or 0) > limit:
            groups.append(Group((index,)))
            continue
        if key not in by_key:
            by_key[key] = []
            groups.append(key)
        by_key[key].append(index)
    result: list[Group] = []
    for entry in groups:
        if isinstance(entry, Group):
            result.append(entry)
            continue
        members = by_key[entry]
        limit = limits[calls[members[0]].model]
        total = sum(_rows(calls[i]) or 0 for i in members)
        target = max(1, min(limit, math.ceil(total / max(1, spread))))
        result.extend(_chunks(calls, members, target))
    return result


def _chunks(calls: Sequence[InferenceCall], members: list[int], target: int) -> list[Group]:
    chunks: list[Group] = []
    current: list[int] = []
    rows = 0
    for index in members:
        size = _rows(calls[index]) or 0
        if current and rows + size > target:
            chunks.append(Group(tuple(current)))
            current, rows = [], 0
        current.append(index)
        rows += size
    if current:
        chunks.append(Group(tuple(current)))
    return chunks


def merge(calls: Sequence[InferenceCall], group: Group, request_id: str) -> InferenceCall:
    """One call whose every input is the members' inputs stacked along the batch dimension."""
    first = calls[group.members[0]]
    order = [tensor.name for tensor in first.inputs]
    stacked: list[Tensor] = []
    for name in order:
        parts = [next(t for t in calls[i].inputs if t.name == name) for i in group.members]
        stacked.append(Tensor(name, parts[0].datatype, np.concatenate([part.data for part in parts])))
    return replace(first, inputs=stacked, request_id=request_id)


def split(outcome: Outcome, calls: Sequence[InferenceCall], group: Group) -> list[Outcome] | None:
    """Each member's own rows of every output; None when an output does not keep the batch dimension."""
    rows = [_rows(calls[i]) or 0 for i in group.members]
    total = sum(rows)
    if not outcome.outputs or any(t.data.ndim == 0 or t.data.shape[0] != total for t in outcome.outputs):
        return None
    parts: list[Outcome] = []
    start = 0
    for size in rows:
        end = start + size
        outputs = [Tensor(t.name, t.datatype, t.data[start:end]) for t in outcome.outputs]
        parts.append(replace(outcome, outputs=outputs))
        start = end
    return parts
