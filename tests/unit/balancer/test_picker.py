"""The pool's pickers (DESIGN §9): an immutable snapshot per model, rebuilt only when admission changes.

A pick after the snapshot is built makes no admission checks (breaker, quarantine, busy) at all,
so it costs the same with 4 or 64 nodes; and every change that affects admission (a breaker
tripping or closing, trial slots, an ejection or quarantine ending by time, membership, busy
limits) shows in the very next pick. The last test checks the snapshot against the live,
node-by-node answer (`NodePool.status`) after every step of a long random run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from types import MappingProxyType

import pytest

from balancer.breaker import BreakerState, CircuitBreaker
from balancer.outlier import EjectionPolicy
from balancer.picker import EMPTY_PICKER, in_panic
from balancer.pool import Lease, NodePool
from balancer.trust import TrustLedger, TrustPolicy
from discovery.node import NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from tests.fake_clock import FakeClock
from tests.unit.balancer.conftest import INFO, static_pool
from worker.errors import NodeServerError

EJECTION = EjectionPolicy(consecutive_failures=2, base_ejection_s=2, max_ejection_s=16)
BOOM = NodeServerError("500 boom", node_url="http://x", status=500)
DIGITS = MappingProxyType({"digits": INFO})


class CountingClock(FakeClock):
    """A fake clock that counts how often it is read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


def key(index: int) -> str:
    return f"http://n{index}:8000"


def setup(
    clock: FakeClock, count: int = 3, *, ejection: EjectionPolicy = EJECTION, **config: object
) -> tuple[NodeRegistry, NodePool, list[str]]:
    return static_pool(count, ejection=ejection, clock=clock, **config)


def only(pool: NodePool, target: str) -> frozenset[str]:
    """An `exclude` that leaves just `target`."""
    return frozenset(node.key for node in pool.candidates("digits") if node.key != target)


def trip(pool: NodePool, target: str) -> None:
    for _ in range(EJECTION.consecutive_failures):
        lease = pool.pick("digits", exclude=only(pool, target))
        assert lease is not None
        assert lease.node.key == target
        lease.report(0.001, BOOM)
        lease.done()
    assert pool.breaker(target).state is BreakerState.OPEN


def picked(pool: NodePool, picks: int = 30) -> set[str]:
    seen = set()
    for _ in range(picks):
        lease = pool.pick("digits")
        assert lease is not None
        seen.add(lease.node.key)
        lease.done()
    return seen


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often breakers and the trust ledger are asked whether a node may take traffic."""
    calls = {"allows": 0, "quarantined": 0}

    def counting(name: str, original: Callable[..., bool]) -> Callable[..., bool]:
        def wrapper(self: object, *args: object) -> bool:
            calls[name] += 1
            return original(self, *args)

        return wrapper

    monkeypatch.setattr(CircuitBreaker, "allows", counting("allows", CircuitBreaker.allows))
    monkeypatch.setattr(TrustLedger, "quarantined", counting("quarantined", TrustLedger.quarantined))
    return calls


# ---------------------------------------------------------------------------------------- cost


@pytest.mark.parametrize("count", [4, 64])
def test_a_pick_makes_no_admission_checks_once_the_snapshot_is_built(count: int, counted: dict[str, int]) -> None:
    clock = CountingClock()
    _, pool, _ = setup(clock, count)
    pool.pick("digits").done()  # type: ignore[union-attr]  # builds the snapshot: one check per node
    assert counted["allows"] == count
    snapshot = pool.picker("digits")
    counted.update(allows=0, quarantined=0)
    clock.reads = 0
    for _ in range(200):
        lease = pool.pick("digits")
        assert lease is not None
        lease.done()
    assert counted == {"allows": 0, "quarantined": 0}
    assert clock.reads == 200  # one read a pick (the trial check of the chosen node's breaker), whatever N
    assert pool.picker("digits") is snapshot  # picks and releases alone never rebuild it


def test_the_cost_of_a_pick_does_not_grow_with_the_nodes() -> None:
    reads = {}
    for count in (4, 64):
        clock = CountingClock()
        _, pool, keys = setup(clock, count, panic_threshold=10.0)
        trip(pool, keys[0])  # an ejected node (and so an expiry in the snapshot) among the rest
        pool.pick("digits").done()  # type: ignore[union-attr]  # the trip dropped the snapshot: rebuild it
        clock.reads = 0
        for _ in range(100):
            pool.pick("digits").done()  # type: ignore[union-attr]
        reads[count] = clock.reads
    assert reads[4] == reads[64]


# ---------------------------------------------------------------------------------------- changes


def test_a_breaker_opening_and_closing_changes_the_next_pick(clock: FakeClock) -> None:
    _, pool, (a, b, c) = setup(clock)
    assert picked(pool) == {a, b, c}
    trip(pool, a)
    assert a not in pool.picker("digits").admitted
    assert picked(pool) == {b, c}
    clock.advance(EJECTION.base_ejection_s)  # the ejection ends by time alone: no event announces it
    assert a in pool.picker("digits").admitted
    lease = pool.pick("digits", exclude=frozenset({b, c}))
    assert lease is not None
    assert lease.trial
    assert a not in pool.picker("digits").admitted  # the one trial slot is taken
    assert picked(pool) == {b, c}
    lease.report(0.001)  # the trial succeeded: closed
    lease.done()
    assert pool.breaker(a).state is BreakerState.CLOSED
    assert picked(pool) == {a, b, c}


@pytest.mark.parametrize("strategy", ["latency", "least_loaded", "round_robin", "weighted"])
def test_a_half_open_node_gets_the_next_request_whatever_the_strategy(clock: FakeClock, strategy: str) -> None:
    """Regression: `latency` kept avoiding a half-open node (its estimate still held the failures that
    ejected it), so a recovered node got its trial a minute after its ejection ended."""
    _, pool, (a, _, _) = setup(clock)
    for _ in range(60):  # everyone answers in 10 ms
        lease = pool.pick("digits", strategy=strategy)
        assert lease is not None
        lease.report(0.010)
        lease.done()
    for _ in range(EJECTION.consecutive_failures):  # then a times out, slowly: a poor latency estimate
        lease = pool.pick("digits", strategy=strategy, exclude=only(pool, a))
        assert lease is not None
        lease.report(5.0, BOOM)
        lease.done()
    assert pool.breaker(a).state is BreakerState.OPEN
    clock.advance(EJECTION.base_ejection_s)
    lease = pool.pick("digits", strategy=strategy)
    assert lease is not None
    assert (lease.node.key, lease.trial) == (a, True)
    lease.report(0.010)
    lease.done()
    assert pool.breaker(a).state is BreakerState.CLOSED


def test_a_half_open_node_does_not_take_another_nodes_session(clock: FakeClock) -> None:
    """model_affinity: a session stays on its node; the half-open node's trial comes from its own sessions."""
    _, pool, keys = setup(clock)

    def session_node() -> str:
        lease = pool.pick("digits", strategy="model_affinity", affinity_key="session-1")
        assert lease is not None
        lease.done()
        return lease.node.key

    home = session_node()
    other = next(key for key in keys if key != home)
    trip(pool, other)
    clock.advance(EJECTION.base_ejection_s)  # `other` is half-open now
    assert session_node() == home


def test_an_ejection_expiring_by_time_is_seen_without_any_other_change(clock: FakeClock) -> None:
    _, pool, (a, b, c) = setup(clock)
    trip(pool, a)
    before = pool.picker("digits")
    assert before.expires == pytest.approx(clock.now + EJECTION.base_ejection_s)
    clock.advance(EJECTION.base_ejection_s - 0.01)
    assert pool.picker("digits") is before  # not yet: the same snapshot
    assert picked(pool, 10) == {b, c}
    clock.advance(0.01)
    seen = set()
    for _ in range(10):  # round robin reaches the trial within a turn of the three
        lease = pool.pick("digits")
        assert lease is not None
        if lease.node.key == a and a not in seen:
            assert lease.trial  # the first request after the ejection is its trial
            lease.report(0.001)
        seen.add(lease.node.key)
        lease.done()
    assert seen == {a, b, c}
    assert pool.breaker(a).state is BreakerState.CLOSED


def test_half_open_admits_exactly_its_trials(clock: FakeClock) -> None:
    policy = EjectionPolicy(consecutive_failures=2, base_ejection_s=2, max_ejection_s=16, half_open_trials=2)
    _, pool, (a, b, c) = setup(clock, ejection=policy)
    trip(pool, a)
    clock.advance(2)
    trials = [pool.pick("digits", exclude=frozenset({b, c})) for _ in range(2)]
    assert all(lease is not None and lease.trial for lease in trials)
    assert a not in pool.picker("digits").admitted  # both slots taken
    third = pool.pick("digits", exclude=frozenset({b, c}))
    assert third is not None
    assert third.panic  # the only node left is not admitted: panic, not a third trial
    assert not third.trial
    third.done()
    trials[0].done()  # cancelled: its slot frees
    assert a in pool.picker("digits").admitted
    again = pool.pick("digits", exclude=frozenset({b, c}))
    assert again is not None
    assert again.trial
    again.report(0.001, BOOM)  # a failed trial: open again, for longer
    again.done()
    assert pool.breaker(a).state is BreakerState.OPEN
    assert pool.picker("digits").expires == pytest.approx(clock.now + 4)
    trials[1].done()
    assert picked(pool) == {b, c}


def test_joining_and_leaving_nodes_change_the_next_pick(clock: FakeClock) -> None:
    registry, pool, keys = setup(clock, 2)
    assert picked(pool) == set(keys)
    registry.reset("static", [NodeSpec(k) for k in (*keys, key(9))])
    registry.update(key(9), status=NodeStatus.ONLINE, models=DIGITS)
    assert picked(pool) == {*keys, key(9)}
    registry.reset("static", [NodeSpec(key(9))])
    assert picked(pool) == {key(9)}
    registry.update(key(9), status=NodeStatus.OFFLINE)
    assert pool.pick("digits") is None


def test_quarantine_and_its_end_change_the_next_pick(clock: FakeClock) -> None:
    _, pool, (a, b, c) = setup(clock)
    snapshot = pool.picker("digits")
    pool.trust.outvoted(a)
    assert pool.picker("digits") is snapshot  # a lower score is not a quarantine: nothing to rebuild
    pool.trust.outvoted(a)
    pool.trust.outvoted(a)
    assert picked(pool) == {b, c}
    assert pool.picker("digits").expires == pytest.approx(clock.now + TrustPolicy().quarantine_s)
    clock.advance(TrustPolicy().quarantine_s)  # time served, by time alone
    assert picked(pool) == {a, b, c}
    for _ in range(3):
        pool.trust.outvoted(a)
    assert picked(pool) == {b, c}
    pool.trust.release(a)  # an operator ends it early
    assert picked(pool) == {a, b, c}


def test_busy_and_free_again_change_the_next_pick(clock: FakeClock) -> None:
    _, pool, (a, b) = setup(clock, 2, max_in_flight=2)
    held = [pool.pick("digits", exclude=frozenset({b})) for _ in range(2)]
    assert pool.picker("digits").ready == tuple(n for n in pool.candidates("digits") if n.key == b)
    for _ in range(4):
        lease = pool.pick("digits", strategy="round_robin")
        assert lease is not None
        assert lease.node.key == b  # round robin would alternate; a is busy
        lease.done()
    held[0].done()  # type: ignore[union-attr]
    assert {n.key for n in pool.picker("digits").ready} == {a, b}
    held[1].done()  # type: ignore[union-attr]
    assert pool.in_flight(a) == pool.in_flight(b) == 0


def test_a_node_advertising_max_concurrency_is_busy_at_that_many_in_flight(clock: FakeClock) -> None:
    """`distinfer node --max-concurrency 1` says so in its labels; without an operator limit the pool obeys it."""
    _, pool, (a, b) = setup(clock, 2)
    pool.learn_labels(a, {"max_concurrency": "1", "capacity": "1"})
    held = pool.pick("digits", exclude=frozenset({b}))
    assert held is not None
    assert [n.key for n in pool.picker("digits").ready] == [b]  # a is full: the next picks go to b
    for _ in range(3):
        lease = pool.pick("digits", strategy="round_robin")
        assert lease is not None
        assert lease.node.key == b
        lease.done()
    held.done()
    assert {n.key for n in pool.picker("digits").ready} == {a, b}
    pool.learn_labels(a, {"max_concurrency": "²"})  # not a count (str.isdigit() says it is): no limit, no crash
    pool.learn_labels(a, {"max_concurrency": "junk"})
    leases = [pool.pick("digits", exclude=frozenset({b})) for _ in range(3)]
    assert all(lease is not None for lease in leases)
    assert {n.key for n in pool.picker("digits").ready} == {a, b}


def test_a_max_concurrency_label_from_discovery_wins_over_the_nodes_own(clock: FakeClock) -> None:
    registry, pool, (a, b) = setup(clock, 2)
    registry.reset("static", [NodeSpec(a, node_id="n0", labels={"max_concurrency": "1"}), NodeSpec(b, node_id="n1")])
    pool.learn_labels(a, {"max_concurrency": "8"})  # the node says 8; the operator's discovery says 1
    pool.pick("digits", exclude=frozenset({b}))
    assert [n.key for n in pool.picker("digits").ready] == [b]


def test_the_operator_limit_wins_over_the_advertised_one(clock: FakeClock) -> None:
    _, pool, (a, b) = setup(clock, 2, max_in_flight=2)
    pool.learn_labels(a, {"max_concurrency": "1"})
    pool.pick("digits", exclude=frozenset({b}))
    assert {n.key for n in pool.picker("digits").ready} == {a, b}  # 1 of the operator's 2
    pool.pick("digits", exclude=frozenset({b}))
    assert [n.key for n in pool.picker("digits").ready] == [b]


def test_panic_follows_the_snapshot_and_tells_listeners(clock: FakeClock) -> None:
    _, pool, (a, b, c) = setup(clock, panic_threshold=50.0)
    heard: list[str] = []
    pool.add_panic_listener(heard.append)
    trip(pool, a)
    assert not pool.picker("digits").panic  # 2 of 3 admitted: 66 % >= 50 %
    trip(pool, b)
    assert pool.picker("digits").panic
    assert pool.panic_models() == ["digits"]
    assert pool.panic_states() == {"digits": True}
    lease = pool.pick("digits")
    assert lease is not None
    assert lease.panic
    assert lease.node.key == c  # the least bad: never tripped
    lease.done()
    assert heard == ["digits"]
    assert pool.panic_picks == 1
    clock.advance(EJECTION.base_ejection_s)  # both come back on trial: out of panic by time
    assert not pool.picker("digits").panic
    assert pool.panic_states() == {"digits": False}
    assert heard == ["digits"]


def test_unknown_models_get_the_empty_picker_and_are_not_remembered(clock: FakeClock) -> None:
    _, pool, _ = setup(clock)
    assert pool.picker("nobody-serves-this") is EMPTY_PICKER
    assert pool.pick("nobody-serves-this") is None
    assert pool.panic_states() == {"digits": False}


def test_in_panic_threshold() -> None:
    assert in_panic(0, 3, 0.0)
    assert not in_panic(1, 3, 0.0)
    assert in_panic(2, 3, 70.0)
    assert not in_panic(3, 4, 75.0)


# ---------------------------------------------------------------------------------------- signals


def test_breaker_announces_every_admission_change_but_the_timed_one(clock: FakeClock) -> None:
    changes: list[BreakerState] = []
    policy = EjectionPolicy(consecutive_failures=1, base_ejection_s=1, max_ejection_s=8, half_open_trials=2)
    breaker = CircuitBreaker(policy, clock, on_change=lambda: changes.append(breaker.state))
    breaker.record_success()
    assert changes == []
    breaker.record_failure()  # trips
    assert changes == [BreakerState.OPEN]
    assert breaker.reopens_at == pytest.approx(clock.now + 1)
    clock.advance(1)
    assert breaker.state is BreakerState.HALF_OPEN  # timed: announced in advance, not here
    assert breaker.reopens_at is None
    assert changes == [BreakerState.OPEN]
    assert breaker.acquire()
    assert len(changes) == 1  # one of two slots taken: still admits
    assert breaker.acquire()
    assert len(changes) == 2  # full
    breaker.release_trial()
    assert len(changes) == 3  # a slot free again
    breaker.release_trial()
    assert len(changes) == 3  # was not full: nothing changes for admission
    assert breaker.acquire()
    breaker.record_success(trial=True)
    assert changes[-1] is BreakerState.CLOSED


def test_trust_version_moves_only_when_a_quarantine_begins_or_ends(clock: FakeClock) -> None:
    ledger = TrustLedger(TrustPolicy(quarantine_s=10), clock)
    ledger.agreed("a")
    ledger.outvoted("a")
    assert ledger.version == 0
    ledger.outvoted("a")
    ledger.outvoted("a")  # below the line: quarantined
    assert ledger.version == 1
    assert ledger.quarantine_ends("a") == pytest.approx(clock.now + 10)
    ledger.outvoted("a")  # already in: no new quarantine
    assert ledger.version == 1
    clock.advance(10)
    assert not ledger.quarantined("a")
    assert ledger.version == 2
    assert ledger.quarantine_ends("a") is None
    ledger.forget("a")  # not quarantined: nothing changes for admission
    assert ledger.version == 2


# ---------------------------------------------------------------------------------------- against the live answer


def test_snapshot_matches_the_live_admission_through_a_random_run(clock: FakeClock) -> None:
    """Random picks, outcomes, releases, clock steps, quarantines and churn; after every step the
    picker must say what asking each node live says, and in-flight counts must match the leases held."""
    policy = EjectionPolicy(consecutive_failures=2, base_ejection_s=1, max_ejection_s=4, half_open_trials=2)
    registry, pool, keys = setup(clock, 5, ejection=policy, max_in_flight=2, panic_threshold=40.0)
    rng = random.Random(7)
    held: list[Lease] = []
    listed = set(keys)

    def check() -> None:
        picker = pool.picker("digits")  # first, so that a stale snapshot cannot hide behind a rebuild
        nodes = [n for n in registry.nodes() if n.status is NodeStatus.ONLINE and n.serves("digits")]
        states = {n.key: pool.status(n) for n in nodes}
        admitted = {k for k, s in states.items() if s is not NodeStatus.ERROR}
        free = {k for k, s in states.items() if s is NodeStatus.ONLINE}
        assert {n.key for n in picker.nodes} == set(states)
        assert picker.admitted == admitted
        assert picker.panic == (bool(nodes) and in_panic(len(admitted), len(nodes), 40.0))
        if not picker.panic:
            assert {n.key for n in picker.ready} == (free or admitted)
        for k in keys:
            assert pool.in_flight(k) == sum(lease.node.key == k for lease in held if not lease._released)

    for _ in range(3000):
        action = rng.random()
        if action < 0.35:
            lease = pool.pick("digits", strategy=rng.choice(["round_robin", "least_loaded", "latency"]))
            if lease is not None:
                held.append(lease)
        elif action < 0.7 and held:
            lease = held.pop(rng.randrange(len(held)))
            outcome = rng.random()
            if outcome < 0.4:
                lease.report(0.002, BOOM)
            elif outcome < 0.8:
                lease.report(0.002)
            lease.done()
        elif action < 0.85:
            clock.advance(rng.choice([0.1, 0.5, 1.0, 2.5]))
        elif action < 0.9:
            target = rng.choice(keys)
            for _ in range(3):
                pool.trust.outvoted(target)
        elif action < 0.93:
            pool.trust.release(rng.choice(keys))
        elif action < 0.97:
            target = rng.choice(keys)
            online = registry.get(target) is not None and registry.get(target).status is NodeStatus.ONLINE  # type: ignore[union-attr]
            if registry.get(target) is not None:
                registry.update(target, status=NodeStatus.OFFLINE if online else NodeStatus.ONLINE)
        else:
            listed ^= {rng.choice(keys)}  # a node leaves or comes back
            registry.reset("static", [NodeSpec(k) for k in keys if k in listed])
            for k in listed:
                if not registry.get(k).models:  # type: ignore[union-attr]
                    registry.update(k, status=NodeStatus.ONLINE, models=DIGITS)
        check()
    for lease in held:
        lease.done()
    assert all(pool.in_flight(k) == 0 for k in keys)
