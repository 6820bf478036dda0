"""Trust in each node's answers (the "Byzantine node" concern) and quarantine of nodes that lose it.

Scores start at 1.0. When a sampled request is re-run on other nodes (`balancer.validation`), a
node that agrees gains `reward`; one outvoted by two others that agree loses `penalty`; when only
two nodes disagree and no third can tell which is right, both lose `unresolved_penalty`. A node
whose score falls below `quarantine_below` gets no traffic for `quarantine_s`, then comes back on
probation: just above the line, so one more outvote sends it back.

`version` moves whenever a quarantine begins or ends, so a reader that caches who is admitted
(the pool's pickers) can tell in one comparison that it must look again; `quarantine_ends` says in
advance when the timed end will come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from balancer.latency import Clock
from worker.protocol import Tensor

__all__ = ["TrustLedger", "TrustPolicy", "TrustSnapshot", "outputs_agree"]


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    reward: float = 0.05
    penalty: float = 0.25
    unresolved_penalty: float = 0.1
    quarantine_below: float = 0.5
    quarantine_s: float = 60.0
    rtol: float = 1e-3
    atol: float = 1e-4


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    score: float
    quarantined: bool
    quarantined_for_s: float
    agreed: int
    disagreed: int


@dataclass(slots=True)
class _Record:
    score: float = 1.0
    until: float | None = None
    agreed: int = 0
    disagreed: int = 0


def outputs_agree(first: Sequence[Tensor], second: Sequence[Tensor], *, rtol: float, atol: float) -> bool:
    """Same names, datatypes and shapes; numbers equal within tolerance, anything else exactly."""
    if len(first) != len(second):
        return False
    ours = {tensor.name: tensor for tensor in first}
    for theirs in second:
        mine = ours.get(theirs.name)
        if mine is None or mine.datatype != theirs.datatype or mine.shape != theirs.shape:
            return False
        a, b = mine.data, theirs.data
        if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
            if not np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


class TrustLedger:
    """Scores by node key; the pool forgets a node when discovery removes it, so this stays bounded."""

    def __init__(self, policy: TrustPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self.version = 0  # bumped when any quarantine begins or ends

    def _record(self, key: str) -> _Record:
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _Record()
        return record

    def score(self, key: str) -> float:
        record = self._records.get(key)
        return 1.0 if record is None else record.score

    def quarantined(self, key: str) -> bool:
        record = self._records.get(key)
        if record is None or record.until is None:
            return False
        if self._clock() >= record.until:  # time served: back on probation
            record.until = None
            record.score = min(1.0, self.policy.quarantine_below + self.policy.penalty / 2)
            self.version += 1
            return False
        return True

    def quarantine_ends(self, key: str) -> float | None:
        """The clock reading at which the node's quarantine ends, while it has one; else None."""
        record = self._records.get(key)
        return None if record is None else record.until

    def agreed(self, key: str) -> None:
        record = self._record(key)
        record.agreed += 1
        record.score = min(1.0, record.score + self.policy.reward)

    def outvoted(self, key: str) -> None:
        self._lose(key, self.policy.penalty)

    def unresolved(self, key: str) -> None:
        self._lose(key, self.policy.unresolved_penalty)

    def _lose(self, key: str, amount: float) -> None:
        record = self._record(key)
        record.disagreed += 1
        record.score = max(0.0, record.score - amount)
        if record.score < self.policy.quarantine_below and record.until is None:
            record.until = self._clock() + self.policy.quarantine_s
            self.version += 1

    def release(self, key: str) -> None:
        """End a quarantine now and restore full trust (an operator's decision)."""
        self.forget(key)

    def forget(self, key: str) -> None:
        record = self._records.pop(key, None)
        if record is not None and record.until is not None:
            self.version += 1

    def snapshot(self, key: str) -> TrustSnapshot:
        quarantined = self.quarantined(key)
        record = self._records.get(key) or _Record()
        left = (record.until - self._clock()) if quarantined and record.until is not None else 0.0
        return TrustSnapshot(
            round(record.score, 4), quarantined, round(max(left, 0.0), 3), record.agreed, record.disagreed
        )
