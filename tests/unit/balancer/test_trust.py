"""Trust scores, quarantine, output comparison and the sampled re-run validator."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence

import numpy as np
import pytest

from balancer.trust import TrustLedger, TrustPolicy, outputs_agree
from balancer.validation import Validator
from tests.fake_clock import FakeClock
from worker.errors import NodeServerError, PayloadTooLarge
from worker.protocol import Tensor


def logits(values: list[float]) -> list[Tensor]:
    return [Tensor.of("logits", np.asarray([values], dtype=np.float32))]


def test_outputs_agree_within_tolerance_only() -> None:
    base = logits([1.0, 2.0, 3.0])
    assert outputs_agree(base, logits([1.0, 2.0, 3.00001]), rtol=1e-3, atol=1e-4)
    assert not outputs_agree(base, logits([1.0, 2.0, 3.1]), rtol=1e-3, atol=1e-4)
    assert not outputs_agree(base, [Tensor.of("other", np.asarray([[1.0, 2.0, 3.0]], np.float32))], rtol=1, atol=1)
    assert not outputs_agree(base, logits([1.0, 2.0]), rtol=1, atol=1)  # shape
    assert not outputs_agree(base, [], rtol=1, atol=1)
    words = [Tensor.of("text", np.asarray([b"a", b"b"], dtype=np.object_))]
    assert outputs_agree(words, [Tensor.of("text", np.asarray([b"a", b"b"], dtype=np.object_))], rtol=0, atol=0)
    assert not outputs_agree(words, [Tensor.of("text", np.asarray([b"a", b"c"], dtype=np.object_))], rtol=1, atol=1)


def test_repeated_outvotes_quarantine_then_probation(clock: FakeClock) -> None:
    ledger = TrustLedger(TrustPolicy(penalty=0.25, quarantine_below=0.5, quarantine_s=30), clock)
    ledger.outvoted("a")
    ledger.outvoted("a")
    assert ledger.score("a") == pytest.approx(0.5)
    assert not ledger.quarantined("a")
    ledger.outvoted("a")
    assert ledger.quarantined("a")
    assert ledger.snapshot("a").quarantined_for_s == pytest.approx(30)
    clock.advance(31)
    assert not ledger.quarantined("a")
    assert ledger.score("a") == pytest.approx(0.625)  # probation: one more outvote sends it back
    ledger.outvoted("a")
    assert ledger.quarantined("a")
    for _ in range(40):
        ledger.agreed("b")
    assert ledger.score("b") == 1.0
    ledger.release("a")
    assert not ledger.quarantined("a")
    assert ledger.score("a") == 1.0


class FakeCluster:
    """Nodes answering with fixed logits; one of them lies."""

    def __init__(self, answers: dict[str, list[float]]) -> None:
        self.answers = answers
        self.calls: list[frozenset[str]] = []

    async def rerun(self, skip: frozenset[str]) -> tuple[str, Sequence[Tensor]] | None:
        self.calls.append(skip)
        left = sorted(key for key in self.answers if key not in skip)
        if not left:
            return None
        return left[0], logits(self.answers[left[0]])


async def test_validator_finds_the_liar_with_a_third_vote(clock: FakeClock) -> None:
    ledger = TrustLedger(TrustPolicy(), clock)
    cluster = FakeCluster({"a": [1, 2, 3], "b": [9, 9, 9], "c": [1, 2, 3]})
    validator = Validator(ledger, sample_rate=1.0)
    assert await validator.check("a", logits([1, 2, 3]), cluster.rerun) == "disagreed"
    assert cluster.calls == [frozenset({"a"}), frozenset({"a", "b"})]
    assert ledger.score("b") < 1.0
    assert ledger.score("a") == ledger.score("c") == 1.0
    assert await validator.check("b", logits([9, 9, 9]), cluster.rerun) == "disagreed"
    assert ledger.quarantined("b") is False
    await validator.check("b", logits([9, 9, 9]), cluster.rerun)
    assert ledger.quarantined("b")  # three outvotes: 1 - 3 x 0.25 < 0.5
    assert (validator.stats.disagreed, validator.stats.agreed) == (3, 0)


async def test_validator_agreement_and_unresolved_pairs(clock: FakeClock) -> None:
    ledger = TrustLedger(TrustPolicy(), clock)
    validator = Validator(ledger, sample_rate=1.0)
    agree = FakeCluster({"a": [1, 2], "b": [1, 2]})
    assert await validator.check("a", logits([1, 2]), agree.rerun) == "agreed"
    pair = FakeCluster({"a": [1, 2], "b": [5, 5]})
    assert await validator.check("a", logits([1, 2]), pair.rerun) == "disagreed"
    assert ledger.score("a") == ledger.score("b") == pytest.approx(0.9)  # nobody to tell: both lose a little
    alone = FakeCluster({"a": [1, 2]})
    assert await validator.check("a", logits([1, 2]), alone.rerun) == "skipped"


async def test_offer_samples_and_bounds_the_queue(clock: FakeClock) -> None:
    ledger = TrustLedger(TrustPolicy(), clock)
    cluster = FakeCluster({"a": [1.0]})
    none = Validator(ledger, sample_rate=0.0)
    assert not none.enabled
    assert not none.offer("a", logits([1.0]), cluster.rerun)
    some = Validator(ledger, sample_rate=0.25, rng=random.Random(3), max_pending=1000)
    sampled = sum(some.offer("a", logits([1.0]), cluster.rerun) for _ in range(800))
    assert 140 < sampled < 260
    full = Validator(ledger, sample_rate=1.0, max_pending=2)
    assert [full.offer("a", logits([1.0]), cluster.rerun) for _ in range(4)] == [True, True, False, False]
    assert full.stats.dropped == 2
    with pytest.raises(ValueError, match="sample_rate"):
        Validator(ledger, sample_rate=2)


async def run_until_agreed(validator: Validator) -> None:
    """Run the validation task until one check agreed (or a second passed), then stop it."""
    task = asyncio.create_task(validator.run())
    try:
        for _ in range(200):
            if validator.stats.agreed:
                break
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_run_survives_failing_reruns(clock: FakeClock) -> None:
    ledger = TrustLedger(TrustPolicy(), clock)
    validator = Validator(ledger, sample_rate=1.0)
    good = FakeCluster({"a": [1.0], "b": [1.0]})

    async def refused(skip: frozenset[str]) -> tuple[str, Sequence[Tensor]] | None:
        raise NodeServerError("500", node_url="http://b", status=500)

    async def broken(skip: frozenset[str]) -> tuple[str, Sequence[Tensor]] | None:
        raise ValueError("a bug")

    for rerun in (refused, broken, good.rerun):
        validator.offer("a", logits([1.0]), rerun)
    await run_until_agreed(validator)
    assert (validator.stats.skipped, validator.stats.agreed) == (2, 1)


async def test_an_answer_is_read_only_if_sampled_and_off_the_requests_path(clock: FakeClock) -> None:
    """Regression: the dispatcher decoded every relayed answer to offer it, whatever the sample rate:
    a decode per request, and a good answer over the gateway's limits failed the caller (413)."""
    ledger = TrustLedger(TrustPolicy(), clock)
    cluster = FakeCluster({"a": [1.0], "b": [1.0]})
    reads: list[str] = []

    def read() -> Sequence[Tensor]:
        reads.append("read")
        return logits([1.0])

    def unreadable() -> Sequence[Tensor]:
        raise PayloadTooLarge("tensor 'y': 8 elements is over the limit of 4")

    rare = Validator(ledger, sample_rate=0.001, rng=random.Random(1))
    assert sum(rare.offer("a", read, cluster.rerun) for _ in range(100)) == 0
    assert reads == []  # never sampled: never read
    validator = Validator(ledger, sample_rate=1.0)
    assert validator.offer("a", unreadable, cluster.rerun)  # queued; read in the validation task
    assert validator.offer("a", read, cluster.rerun)
    assert reads == []
    await run_until_agreed(validator)
    assert reads == ["read"]
    assert (validator.stats.skipped, validator.stats.agreed) == (1, 1)
