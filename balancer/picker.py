"""One model's picker: an immutable snapshot of which of its nodes may take a request now (DESIGN §9).

The pool builds a `Picker` per model the first time the model is picked and keeps it until
something admission depends on changes: membership or probe health (a registry event), a breaker
tripping, closing or filling/freeing its half-open trial slots, a quarantine beginning or ending,
a node crossing the busy limit. The two changes that come by themselves with time, an ejection
backoff ending (open → half_open) and a quarantine served, are known in advance: `expires` is the
earliest of them, and a pick at or after it rebuilds. So a pick does one dict lookup and one
comparison before its strategy runs, however many nodes serve the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from discovery.node import Node

__all__ = ["EMPTY_PICKER", "Picker", "in_panic"]


@dataclass(frozen=True, slots=True)
class Picker:
    nodes: tuple[Node, ...]  # online and serving the model, whatever their breakers say
    keys: frozenset[str]  # their keys, to tell at once whether an `exclude` touches them
    admitted: frozenset[str]  # keys whose breaker admits traffic now and that are not quarantined
    ready: tuple[Node, ...]  # what the strategy chooses among: admitted and not busy (all admitted if all are)
    panic: bool  # too few admitted: route to the least bad instead
    least_bad: tuple[Node, ...]  # in panic: the nodes tied for least bad, one drawn at random per pick
    expires: float  # clock reading at which an ejection or quarantine ends by itself: rebuild then
    # Busy nodes `ready` held back, for a strategy that finds none it may use in `ready` (capability's
    # labels): a request goes to a busy node rather than fail.
    spill: tuple[Node, ...] = ()
    # Ready nodes whose breaker is half-open with a trial slot free: the next request goes to one of
    # them (if the strategy may use it), so that a recovered node is noticed at once. `latency` kept
    # avoiding one for a minute after its ejection ended: its estimate still held the timeouts.
    trial: tuple[Node, ...] = ()


EMPTY_PICKER = Picker((), frozenset(), frozenset(), (), False, (), math.inf)


def in_panic(admitted: int, total: int, threshold_percent: float) -> bool:
    """None admitted, or fewer than `threshold_percent` of the model's nodes (Envoy's panic threshold)."""
    return admitted == 0 or admitted * 100 < threshold_percent * total
