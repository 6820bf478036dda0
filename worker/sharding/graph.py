"""A model's graph as the planner sees it: ops in topological order, and where it may be cut.

A cut before op `p` splits the ops into `[0, p)` and `[p, n)`. The tensors that *cross* it are
those produced before `p` (graph inputs count as produced at -1) and used at or after `p` (graph
outputs count as used at `n`). Tensors computed from constants alone ("free" tensors) never
cross: every stage that needs one recomputes it. Graph inputs are held by the gateway for the
whole request, so they are handed to any stage that needs them and do not count against the
number of *activations* a cut may let through.

A *unit* (a "layer" in the plan's table) is a run of ops between two admissible cuts that holds
at least one op with a real share of the parameters (`LAYER_SHARE`); runs without one (activations,
norms, biases) join the unit before them. Stages are made
of whole units, so every stage holds at least one layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

from worker.sharding.errors import GraphError

__all__ = ["LAYER_SHARE", "Op", "OpGraph", "Unit"]

_NEVER = 1 << 30  # what an uncuttable value adds to a cut's count: no limit admits it

# An op holding at least this share of the model's parameters makes a layer; smaller ones (biases,
# norms, shape constants) travel with the layer next to them.
LAYER_SHARE = 0.001


@dataclass(frozen=True, slots=True)
class Op:
    """One graph node: what it reads and writes, its parameters, and its compute per batch row."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: tuple[str, ...] = ()
    flops: float = 0.0


@dataclass(frozen=True, slots=True)
class Unit:
    """Ops `[start, end)`: the smallest piece a stage is made of."""

    start: int
    end: int
    param_bytes: int
    flops: float


@dataclass(frozen=True)
class OpGraph:
    """Ops in topological order, with the sizes the planner weighs them by."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ops: tuple[Op, ...]
    param_bytes: Mapping[str, int]
    tensor_row_bytes: Mapping[str, int] = field(default_factory=dict)
    free: frozenset[str] = frozenset()
    uncuttable: frozenset[str] = frozenset()  # values that cannot travel between nodes (tuples, lists)
    _producer: dict[str, int] = field(init=False, repr=False)
    _last_use: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.ops:
            raise GraphError("the graph has no ops")
        producer = {name: -1 for name in self.inputs}
        last_use: dict[str, int] = {}
        for index, op in enumerate(self.ops):
            for name in op.inputs:
                if name not in producer and name not in self.free:
                    raise GraphError(f"op {op.name!r} reads {name!r} before anything produces it (not topological)")
                last_use[name] = index
            for name in op.outputs:
                producer[name] = index
        for name in self.outputs:
            if name not in producer:
                raise GraphError(f"graph output {name!r} is produced by no op")
            last_use[name] = len(self.ops)
        object.__setattr__(self, "_producer", producer)
        object.__setattr__(self, "_last_use", last_use)

    def __len__(self) -> int:
        return len(self.ops)

    def crossing(self, cut: int) -> list[str]:
        """Tensors (graph inputs included, free tensors excluded) that cross a cut before op `cut`."""
        return [
            name
            for name, made in self._producer.items()
            if made < cut <= self._last_use.get(name, -2) and name not in self.free
        ]

    def activations(self, cut: int) -> list[str]:
        """What a stage boundary at `cut` must carry between nodes: crossing tensors less graph inputs."""
        graph_inputs = set(self.inputs)
        return [name for name in self.crossing(cut) if name not in graph_inputs]

    def stage_inputs(self, start: int, end: int) -> list[str]:
        """Tensors ops `[start, end)` read that come from outside the range (earlier stages or the request)."""
        seen: list[str] = []
        for op in self.ops[start:end]:
            for name in op.inputs:
                if name not in self.free and self._producer[name] < start and name not in seen:
                    seen.append(name)
        return seen

    def stage_outputs(self, start: int, end: int) -> list[str]:
        """Tensors ops `[start, end)` produce that later stages read or the model returns."""
        return [
            name
            for op in self.ops[start:end]
            for name in op.outputs
            if self._last_use.get(name, -1) >= end and name not in self.free
        ]

    def params_of(self, start: int, end: int) -> int:
        """Bytes of the parameters ops `[start, end)` use (a parameter shared by two ops counts once)."""
        names = {name for op in self.ops[start:end] for name in op.params}
        return sum(self.param_bytes[name] for name in names)

    def row_bytes(self, names: Sequence[str]) -> int:
        return sum(self.tensor_row_bytes.get(name, 0) for name in names)

    def activation_counts(self) -> list[int]:
        """For every cut position 0..n, how many activations cross it (one sweep, not one scan per cut)."""
        delta = [0] * (len(self.ops) + 2)
        graph_inputs = set(self.inputs)
        for name, made in self._producer.items():
            used = self._last_use.get(name, -2)
            if name in graph_inputs or name in self.free or used <= made:
                continue
            weight = _NEVER if name in self.uncuttable else 1
            delta[made + 1] += weight
            delta[used + 1] -= weight
        counts, running = [], 0
        for step in delta[: len(self.ops) + 1]:
            running += step
            counts.append(running)
        return counts

    def units(self, max_activations: int) -> list[Unit]:
        """The layers: runs between cuts that let through at most `max_activations` activations."""
        counts = self.activation_counts()
        threshold = max(1.0, sum(self.param_bytes.values()) * LAYER_SHARE)
        cuts = [p for p in range(1, len(self.ops)) if counts[p] <= max_activations]
        bounds = [0, *cuts, len(self.ops)]
        merged: list[tuple[int, int]] = []
        leading: int | None = None  # start of a parameter-free run before the first layer
        for start, end in pairwise(bounds):
            if not any(self._op_param_bytes(op) >= threshold for op in self.ops[start:end]):
                if merged:
                    merged[-1] = (merged[-1][0], end)
                elif leading is None:
                    leading = start
                continue
            if leading is not None and not merged:
                start, leading = leading, None
            merged.append((start, end))
        if not merged:  # no op carries parameters: the whole graph is one layer
            merged = [(0, len(self.ops))]
        return [Unit(a, b, self.params_of(a, b), sum(op.flops for op in self.ops[a:b])) for a, b in merged]

    def _op_param_bytes(self, op: Op) -> int:
        return sum(self.param_bytes[name] for name in op.params)
