"""Result validation: a sampled share of answered requests is run again on other nodes and compared.

The dispatcher `offer`s each answer it returned; a sampled one is queued (bounded: when the queue
is full the sample is dropped, never the client's request) and checked in the background by
`run()`, a task owned by the plugin's lifespan. A check re-runs the request on a second node; if
the two disagree, on a third, whose vote decides which of the two is wrong (`balancer.trust`).
The client has its answer already: validation never adds latency to the request it samples.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from balancer.trust import TrustLedger, outputs_agree
from worker.errors import NodeCallError
from worker.protocol import Tensor

__all__ = ["Rerun", "Validator", "ValidatorStats"]

log = logging.getLogger(__name__)

# Runs the same request on a node other than the given keys: (node key, outputs), None when none is left.
Rerun = Callable[[frozenset[str]], Awaitable[tuple[str, Sequence[Tensor]] | None]]


@dataclass(slots=True)
class ValidatorStats:
    sampled: int = 0
    dropped: int = 0
    agreed: int = 0
    disagreed: int = 0
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class _Job:
    node_key: str
    outputs: Sequence[Tensor] | Callable[[], Sequence[Tensor]]
    rerun: Rerun


class Validator:
    def __init__(
        self, ledger: TrustLedger, *, sample_rate: float, rng: random.Random | None = None, max_pending: int = 64
    ) -> None:
        if not 0 <= sample_rate <= 1:
            raise ValueError("sample_rate must be in [0, 1]")
        self._ledger = ledger
        self._rate = sample_rate
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_pending)
        self.stats = ValidatorStats()

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def offer(self, node_key: str, outputs: Sequence[Tensor] | Callable[[], Sequence[Tensor]], rerun: Rerun) -> bool:
        """Sample this answer for checking; True when it was queued.

        `outputs` may be a function that reads them (a relayed answer is bytes): it is called only for
        a sampled answer, in the validation task. Decoding every relayed answer on the request path, to
        sample one in a thousand, cost each request its decode, and failed good answers over its limits.
        """
        if self._rate <= 0 or self._rng.random() >= self._rate:
            return False
        try:
            self._queue.put_nowait(_Job(node_key, outputs, rerun))
        except asyncio.QueueFull:
            self.stats.dropped += 1
            return False
        self.stats.sampled += 1
        return True

    async def run(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                outputs = job.outputs() if callable(job.outputs) else job.outputs
                await self.check(job.node_key, outputs, job.rerun)
            except NodeCallError as exc:
                self.stats.skipped += 1  # the failed node was already reported to its breaker
                log.info("validation re-run failed: %s", exc.message)
            except Exception:  # one bad sample must not end validation for the gateway's lifetime
                self.stats.skipped += 1
                log.warning("validation of a sampled request failed", exc_info=True)

    async def check(self, node_key: str, outputs: Sequence[Tensor], rerun: Rerun) -> str:
        """Compare with a second node, and a third on disagreement; 'agreed' | 'disagreed' | 'skipped'."""
        second = await rerun(frozenset({node_key}))
        if second is None:
            self.stats.skipped += 1
            return "skipped"
        other_key, other_outputs = second
        if self._same(outputs, other_outputs):
            self.stats.agreed += 1
            self._ledger.agreed(node_key)
            self._ledger.agreed(other_key)
            return "agreed"
        self.stats.disagreed += 1
        third = await rerun(frozenset({node_key, other_key}))
        if third is None:
            self._ledger.unresolved(node_key)
            self._ledger.unresolved(other_key)
            return "disagreed"
        judge_key, judge_outputs = third
        first_ok, second_ok = self._same(outputs, judge_outputs), self._same(other_outputs, judge_outputs)
        if first_ok:
            self._ledger.outvoted(other_key)
            self._ledger.agreed(node_key)
            self._ledger.agreed(judge_key)
        elif second_ok:
            self._ledger.outvoted(node_key)
            self._ledger.agreed(other_key)
            self._ledger.agreed(judge_key)
        else:
            for key in (node_key, other_key, judge_key):
                self._ledger.unresolved(key)
        log.warning("nodes disagree on a sampled request: %s vs %s (judge %s)", node_key, other_key, judge_key)
        return "disagreed"

    def _same(self, first: Sequence[Tensor], second: Sequence[Tensor]) -> bool:
        policy = self._ledger.policy
        return outputs_agree(first, second, rtol=policy.rtol, atol=policy.atol)
