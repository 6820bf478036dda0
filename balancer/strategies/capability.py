"""`capability`: only nodes whose labels and hardware meet the model's requirements, then least loaded.

Requirements are configured per model (`DISTINFER_MODEL_REQUIREMENTS`, e.g.
`llm:device=cuda,memory_mb>=16000;digits:zone=a`) and matched against a node's labels: its
discovery labels over the hardware it advertises (`device`, `memory_mb`, `cpus`, `capacity`, and
`--label` values). `=`/`!=` compare text, `>=`/`<=`/`>`/`<` compare numbers; a label the node does
not have fails the requirement. A model with no requirements may run on any node.
"""

from __future__ import annotations

import operator
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from balancer.strategies.base import PickContext, Signals, pick_fewest
from discovery.node import Node

__all__ = ["Capability", "Requirement", "parse_requirements"]

_NUMERIC: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TERM = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(>=|<=|!=|=|>|<)\s*([^\s,;]+)\s*$")


@dataclass(frozen=True, slots=True)
class Requirement:
    label: str
    op: str
    value: str

    def met_by(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.label)
        if have is None:
            return False
        if self.op == "=":
            return have == self.value
        if self.op == "!=":
            return have != self.value
        try:
            return _NUMERIC[self.op](float(have), float(self.value))
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"{self.label}{self.op}{self.value}"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_requirements(text: str) -> dict[str, tuple[Requirement, ...]]:
    """`model:label=value,label>=n;model2:...` into {model: requirements}; ValueError when malformed."""
    table: dict[str, tuple[Requirement, ...]] = {}
    for part in filter(None, (chunk.strip() for chunk in text.split(";"))):
        model, sep, terms = part.partition(":")
        if not sep or not model.strip():
            raise ValueError(f"requirement {part!r} must be model:label=value[,label>=n...]")
        parsed = []
        for term in filter(None, (t.strip() for t in terms.split(","))):
            match = _TERM.match(term)
            if match is None:
                raise ValueError(f"requirement term {term!r} must be label(=|!=|>=|<=|>|<)value")
            label, op, value = match.groups()
            if op in _NUMERIC and not _is_number(value):
                raise ValueError(f"requirement term {term!r} compares with {op}: {value!r} is not a number")
            parsed.append(Requirement(label, op, value))
        table[model.strip()] = (*table.get(model.strip(), ()), *parsed)
    return table


class Capability:
    name = "capability"

    def __init__(self, requirements: Mapping[str, Sequence[Requirement]] | None = None) -> None:
        self._requirements = {model: tuple(reqs) for model, reqs in (requirements or {}).items()}

    def requirements(self, model: str) -> tuple[Requirement, ...]:
        return self._requirements.get(model, ())

    def eligible(self, ctx: PickContext, nodes: Sequence[Node], signals: Signals) -> Sequence[Node]:
        needed = self.requirements(ctx.model)
        if not needed:
            return nodes
        return [node for node in nodes if all(req.met_by(signals.labels(node)) for req in needed)]

    def choose(self, ctx: PickContext, candidates: Sequence[Node], signals: Signals, rng: random.Random) -> Node | None:
        able = self.eligible(ctx, candidates, signals)
        return pick_fewest(able, signals, rng) if able else None
