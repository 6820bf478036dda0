"""How long and how hard a scenario measures: shared by the scenarios that run interleaved rounds."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RunParams"]


@dataclass(frozen=True, slots=True)
class RunParams:
    """How long and how hard to measure. `quick` fits a smoke test (~30 s); the default ~3 minutes."""

    rounds: int = 3
    duration_s: float = 2.5
    warmup_s: float = 0.5
    concurrency: tuple[int, ...] = (1, 64)
    timeout_s: float = 10.0
    quick: bool = False

    @classmethod
    def make(
        cls,
        *,
        quick: bool = False,
        duration_s: float | None = None,
        concurrency: tuple[int, ...] | None = None,
        rounds: int | None = None,
    ) -> RunParams:
        base = cls(rounds=1, duration_s=1.0, warmup_s=0.3, quick=True) if quick else cls()
        params = cls(
            rounds=rounds or base.rounds,
            duration_s=duration_s or base.duration_s,
            warmup_s=base.warmup_s,
            concurrency=tuple(sorted(set(concurrency or base.concurrency))),
            timeout_s=base.timeout_s,
            quick=quick,
        )
        if not 1 <= params.rounds <= 10 or not 0 < params.duration_s <= 60:
            raise ValueError("rounds must be 1..10 and duration 0..60 s")
        if not params.concurrency or not all(1 <= c <= 512 for c in params.concurrency):
            raise ValueError("concurrency levels must be 1..512")
        return params
