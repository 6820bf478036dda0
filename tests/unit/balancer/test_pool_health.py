"""The pool with passive health: leases feed breakers, ejection, panic mode, busy nodes, trust, signals."""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

import pytest

from balancer.breaker import BreakerState
from balancer.outlier import EjectionPolicy
from balancer.pool import Lease, NodePool, PoolConfig
from balancer.strategies import default_strategies
from balancer.strategies.capability import parse_requirements
from balancer.trust import TrustPolicy
from discovery.node import NodeSpec, NodeStatus
from discovery.registry import NodeRegistry
from tests.fake_clock import FakeClock
from tests.unit.balancer.conftest import INFO, static_pool
from worker.errors import NodeBusy, NodeRejected, NodeServerError, NodeUnreachable

EJECTION = EjectionPolicy(consecutive_failures=3, base_ejection_s=2, max_ejection_s=16)
BOOM = NodeServerError("500 boom", node_url="http://x", status=500)


def setup(clock: FakeClock, count: int = 3, **config: object) -> tuple[NodeRegistry, NodePool, list[str]]:
    return static_pool(count, ejection=EJECTION, clock=clock, **config)


def fail(pool: NodePool, key: str, times: int, error: Exception = BOOM) -> None:
    for _ in range(times):
        lease = pool.pick("digits", exclude=frozenset(n.key for n in pool.candidates("digits") if n.key != key))
        assert lease is not None
        assert lease.node.key == key
        lease.report(0.001, error)  # type: ignore[arg-type]
        lease.done()


def spread(pool: NodePool, picks: int = 60, strategy: str | None = None) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(picks):
        lease = pool.pick("digits", strategy=strategy)
        assert lease is not None
        seen[lease.node.key] += 1
        lease.report(0.001)
        lease.done()
    return seen


def test_failing_node_is_ejected_then_trialled_then_back(clock: FakeClock) -> None:
    registry, pool, (a, b, c) = setup(clock)
    fail(pool, a, 3)
    assert pool.breaker(a).state is BreakerState.OPEN
    node_a = registry.get(a)
    assert node_a is not None
    assert pool.status(node_a) is NodeStatus.ERROR  # ejected: shown as error, probes still say online
    assert set(spread(pool)) == {b, c}
    clock.advance(2.1)
    assert pool.breaker(a).state is BreakerState.HALF_OPEN
    while (lease := pool.pick("digits")) is not None and lease.node.key != a:
        lease.done()
    assert lease is not None
    assert lease.trial
    assert pool.pick("digits", exclude=frozenset({b, c})).panic  # type: ignore[union-attr]  # slot taken
    lease.report(0.001)
    assert pool.breaker(a).state is BreakerState.CLOSED  # the trial succeeded
    assert set(spread(pool)) == {a, b, c}
    assert pool.status(node_a) is NodeStatus.ONLINE


def test_a_failed_trial_ejects_for_longer(clock: FakeClock) -> None:
    _, pool, (a, _, _) = setup(clock)
    fail(pool, a, 3)
    clock.advance(2.1)
    fail(pool, a, 1)
    assert pool.breaker(a).state is BreakerState.OPEN
    assert pool.breaker(a).open_for_s == pytest.approx(4.0)


def _half_open_trial(pool: NodePool, clock: FakeClock, key: str, others: frozenset[str]) -> Lease:
    """`key` tripped (3 failures), its ejection over: the lease of its half-open trial."""
    fail(pool, key, 3)
    clock.advance(2.1)
    lease = pool.pick("digits", exclude=others)
    assert lease is not None
    assert lease.trial
    return lease


def test_cancelled_trial_frees_the_slot(clock: FakeClock) -> None:
    _, pool, (a, b, c) = setup(clock)
    lease = _half_open_trial(pool, clock, a, frozenset({b, c}))
    assert pool.pick("digits", exclude=frozenset({b, c})) is not None  # panic: the only one left
    lease.done()  # cancelled (a hedge that lost): no outcome
    again = pool.pick("digits", exclude=frozenset({b, c}))
    assert again is not None
    assert again.trial


def test_rejections_never_count_and_unreachable_goes_offline(clock: FakeClock) -> None:
    registry, pool, (a, b, _) = setup(clock)
    fail(pool, a, 10, NodeRejected("bad input", node_url=a, status=400))
    assert pool.breaker(a).state is BreakerState.CLOSED
    fail(pool, b, 1, NodeUnreachable("refused", node_url=b))
    node_b = registry.get(b)
    assert node_b is not None
    assert node_b.status is NodeStatus.OFFLINE
    assert b not in {node.key for node in pool.candidates("digits")}


def test_a_busy_node_is_steered_around_not_ejected(clock: FakeClock) -> None:
    """Regression: a node's 429s tripped its breaker like 5xx (DESIGN §10 counts connect failures,
    timeouts and 5xx only): a node shedding load for a moment was ejected and its load piled on the
    others, which then shed load in turn."""
    registry, pool, (a, b, _) = setup(clock)
    for _ in range(10):
        fail(pool, a, 1, NodeBusy("429 queue full", node_url=a, status=429))
        clock.advance(1.01)  # its back-off over: the next request may try it again
    fail(pool, a, 1, NodeBusy("429 queue full", node_url=a, status=429))
    assert pool.breaker(a).state is BreakerState.CLOSED
    node_a = registry.get(a)
    assert node_a is not None
    assert pool.status(node_a) is NodeStatus.BUSY  # for its back-off (1 s without a Retry-After)
    clock.advance(1.01)
    assert pool.status(node_a) is NodeStatus.ONLINE
    assert a in {node.key for node in pool.candidates("digits")}
    fail(pool, b, 3)  # a 5xx still counts
    assert pool.breaker(b).state is BreakerState.OPEN


@pytest.mark.parametrize("strategy", ["round_robin", "weighted", "least_loaded"])
def test_a_node_that_answered_busy_is_left_alone_for_its_retry_after(clock: FakeClock, strategy: str) -> None:
    """Regression: round robin (and weighted) read no latency, so they kept sending every third
    request to a node answering 429 and each of those requests paid a retry."""
    _, pool, (a, b, c) = setup(clock)
    fail(pool, a, 1, NodeBusy("429 queue full", node_url=a, status=429, retry_after_s=2.0))
    assert set(spread(pool, 30, strategy)) == {b, c}
    clock.advance(2.01)  # its wait is over: back in the rotation
    after = spread(pool, 30, strategy)
    assert after[a] > 0, after


def test_a_busy_back_off_is_bounded_and_all_busy_still_spill_over(clock: FakeClock) -> None:
    registry, pool, (a, b, c) = setup(clock)
    for key in (a, b, c):  # a Retry-After of an hour is held to busy_backoff_max_s (10 s)
        fail(pool, key, 1, NodeBusy("429", node_url=key, status=429, retry_after_s=3600.0))
    node_a = registry.get(a)
    assert node_a is not None
    assert pool.status(node_a) is NodeStatus.BUSY
    lease = pool.pick("digits")  # every node busy: a request still goes somewhere, none is refused
    assert lease is not None
    lease.done()
    clock.advance(10.01)
    assert pool.status(node_a) is NodeStatus.ONLINE


def test_capability_still_reaches_its_only_able_node_while_that_node_backs_off(clock: FakeClock) -> None:
    """Regression (review): one 429 from the only node with the model's required labels made every
    request 503 for the whole back-off: the spill-over offered the busy node, capability's filter
    then found no able node among the free ones."""
    registry = NodeRegistry()
    strategies = default_strategies(requirements=parse_requirements("digits:device=gpu"))
    pool = NodePool(registry, strategies, default_strategy="capability", clock=clock, config=PoolConfig())
    keys = [f"http://n{index}:8000" for index in range(3)]
    registry.reset("static", [NodeSpec(key) for key in keys])
    for key in keys:
        registry.update(key, status=NodeStatus.ONLINE, models=MappingProxyType({"digits": INFO}))
    gpu = keys[0]
    pool.learn_labels(gpu, {"device": "gpu"})
    lease = pool.pick("digits")
    assert lease is not None
    assert lease.node.key == gpu
    lease.report(0.001, NodeBusy("429", node_url=gpu, status=429))
    lease.done()
    picked = []
    for _ in range(5):
        again = pool.pick("digits")
        assert again is not None  # the busy node, not a refusal
        picked.append(again.node.key)
        again.done()
    assert picked == [gpu] * 5


def _capability_pool(clock: FakeClock, count: int, threshold: float = 0.0) -> tuple[NodePool, list[str]]:
    registry = NodeRegistry()
    strategies = default_strategies(requirements=parse_requirements("digits:device=gpu"))
    config = PoolConfig(ejection=EJECTION, panic_threshold=threshold)
    pool = NodePool(registry, strategies, default_strategy="capability", clock=clock, config=config)
    keys = [f"http://n{index}:8000" for index in range(count)]
    registry.reset("static", [NodeSpec(key) for key in keys])
    for key in keys:
        registry.update(key, status=NodeStatus.ONLINE, models=MappingProxyType({"digits": INFO}))
    return pool, keys


def test_capability_panics_among_able_nodes_when_every_able_one_is_ejected(clock: FakeClock) -> None:
    """Regression (audit): with the only GPU node ejected and CPU nodes healthy, the model was not in
    panic (3 of 4 admitted) and capability found no able node among them: every request 503."""
    pool, keys = _capability_pool(clock, 4)
    gpu = keys[0]
    pool.learn_labels(gpu, {"device": "gpu"})
    fail(pool, gpu, 3)
    assert pool.breaker(gpu).state is BreakerState.OPEN
    lease = pool.pick("digits")
    assert lease is not None
    assert (lease.node.key, lease.panic) == (gpu, True)  # the least bad able node, as a panic pick
    lease.done()


def test_capability_never_panics_onto_a_node_without_the_labels(clock: FakeClock) -> None:
    """Regression (audit): in panic the pick drew from every node, a CPU node for a cuda model."""
    pool, keys = _capability_pool(clock, 2)
    gpu, cpu = keys
    pool.learn_labels(gpu, {"device": "gpu"})
    fail(pool, gpu, 3)
    for _ in range(3):
        lease = pool.pick("digits", strategy="least_loaded", exclude=frozenset({gpu}))
        assert lease is not None
        assert lease.node.key == cpu
        lease.report(0.001, BOOM)
        lease.done()
    assert pool.panic_models() == ["digits"]  # everything ejected: panic for the model
    picked = set()
    for _ in range(20):
        lease = pool.pick("digits")
        assert lease is not None
        picked.add(lease.node.key)
        lease.done()
    assert picked == {gpu}
    pool.learn_labels(gpu, {"device": "cpu"})  # no able node at all: no pick, not a wrong one
    assert pool.pick("digits") is None


def test_retries_and_hedges_never_go_to_a_node_backing_off(clock: FakeClock) -> None:
    """Regression (review): with the only other node tried, a hedge or retry spilled over to the node
    that had asked to be left alone, and each of its 429s pushed its wait further out."""
    _, pool, (a, b) = setup(clock, count=2)
    fail(pool, a, 1, NodeBusy("429", node_url=a, status=429, retry_after_s=10.0))
    assert pool.pick("digits", exclude=frozenset({b})) is None
    first = pool.pick("digits")  # the first attempt still goes to b (free)
    assert first is not None
    assert first.node.key == b
    first.done()


def test_a_success_ends_a_back_off(clock: FakeClock) -> None:
    """Regression (review): a node that served a spilled-over request stayed out for its whole wait,
    and the one node whose wait ended first took all the traffic."""
    registry, pool, (a, b) = setup(clock, count=2)
    for key in (a, b):
        fail(pool, key, 1, NodeBusy("429", node_url=key, status=429, retry_after_s=10.0))
    lease = pool.pick("digits")  # all busy: spills over
    assert lease is not None
    served = lease.node.key
    lease.report(0.001)
    lease.done()
    node = registry.get(served)
    assert node is not None
    assert pool.status(node) is NodeStatus.ONLINE
    other = registry.get(b if served == a else a)
    assert other is not None
    assert pool.status(other) is NodeStatus.BUSY


def test_a_busy_answer_to_a_half_open_trial_leaves_the_next_trial_free(clock: FakeClock) -> None:
    """Regression: a trial answered 429 gave no verdict and kept its slot: with one trial allowed the
    breaker stayed half-open with no slot free, and the node was out for good."""
    _, pool, (a, b, c) = setup(clock)
    trial = _half_open_trial(pool, clock, a, frozenset({b, c}))
    trial.report(0.001, NodeBusy("429 queue full", node_url=a, status=429))
    trial.done()
    assert pool.breaker(a).state is BreakerState.HALF_OPEN
    clock.advance(1.01)  # it asked to be left alone (1 s without a Retry-After)
    again = pool.pick("digits", exclude=frozenset({b, c}))
    assert again is not None
    assert again.trial  # the next request is the trial
    again.report(0.001)
    again.done()
    assert pool.breaker(a).state is BreakerState.CLOSED


def test_panic_routes_to_the_least_bad_when_everything_is_ejected(clock: FakeClock) -> None:
    registry, pool, (a, b, c) = setup(clock)
    assert pool.panic_models() == []
    fail(pool, b, 3)
    clock.advance(2.1)
    fail(pool, b, 1)  # b failed its trial: two trips, worse than the others
    fail(pool, a, 3)
    fail(pool, c, 3)
    assert pool.panic_models() == ["digits"]
    picks = Counter()
    for _ in range(20):
        lease = pool.pick("digits")
        assert lease is not None
        assert lease.panic
        picks[lease.node.key] += 1
        lease.done()
    assert b not in picks  # two trips: the worst
    assert pool.panic_picks == 20
    node = registry.get(a)
    assert node is not None
    assert pool.status(node) is NodeStatus.ERROR


def test_panic_threshold_percent(clock: FakeClock) -> None:
    _, pool, (a, _, _) = setup(clock, panic_threshold=70.0)
    fail(pool, a, 3)  # 2 of 3 admitted = 66 % < 70 %: panic
    assert pool.panic_models() == ["digits"]


def test_busy_nodes_are_skipped_and_shown_busy_until_all_are(clock: FakeClock) -> None:
    registry, pool, keys = setup(clock, count=2, max_in_flight=1)
    first = pool.pick("digits", strategy="least_loaded")
    second = pool.pick("digits", strategy="round_robin")
    assert first is not None
    assert second is not None
    assert first.node.key != second.node.key  # round robin would not skip a busy node by itself
    statuses = {key: pool.status(registry.get(key)) for key in keys}  # type: ignore[arg-type]
    assert set(statuses.values()) == {NodeStatus.BUSY}
    third = pool.pick("digits")  # everyone at the limit: spill over rather than refuse
    assert third is not None


def test_quarantined_nodes_get_no_traffic(clock: FakeClock) -> None:
    _, pool, (a, b, c) = setup(clock)
    for _ in range(3):
        pool.trust.outvoted(a)
    assert pool.trust.quarantined(a)
    assert set(spread(pool)) == {b, c}
    clock.advance(TrustPolicy().quarantine_s + 1)
    assert set(spread(pool)) == {a, b, c}  # on probation


def test_latency_cost_signals(clock: FakeClock) -> None:
    _, pool, (a, b, _) = setup(clock)
    assert pool.latency_cost(a) == 0.0  # never seen, idle: worth a try
    lease = pool.pick("digits", exclude=frozenset({b, "http://n2:8000"}))
    assert lease is not None
    assert pool.latency_cost(a) > 1000  # never seen and already busy: do not pile on
    lease.report(0.004)
    assert pool.latency_cost(a) == pytest.approx(0.008)  # 4 ms x (1 in flight + 1)
    lease.done()
    assert pool.latency_cost(a) == pytest.approx(0.004)
    assert pool.latency_ewma_s(a) == pytest.approx(0.004)
    fail(pool, a, 1)  # a fast failure must not make the node look fast
    assert pool.latency_cost(a) == pytest.approx(0.008)


def test_a_run_of_failures_makes_a_node_look_slow_not_unreachably_slow(clock: FakeClock) -> None:
    """Regression: each failure doubled the estimate without bound (18 failures of a 2.5 ms node
    showed 648 s), and a node that recovered looked that slow until many seconds of successes."""
    _, pool, (a, _, _) = setup(clock)
    lease = pool.pick("digits", exclude=frozenset(n.key for n in pool.candidates("digits") if n.key != a))
    assert lease is not None
    lease.report(0.0025)
    lease.done()
    fail(pool, a, 30)
    slowest = pool.latency_ewma_s(a)
    assert slowest is not None
    assert 1.0 < slowest <= 10.0  # far slower than its peers, and bounded


def test_latency_strategy_shuns_the_slow_node(clock: FakeClock) -> None:
    _, pool, keys = setup(clock, count=4)
    times = dict(zip(keys, (0.002, 0.002, 0.002, 0.020), strict=True))
    seen: Counter[str] = Counter()
    for _ in range(2000):
        lease = pool.pick("digits", strategy="latency")
        assert lease is not None
        seen[lease.node.key] += 1
        clock.advance(0.001)
        lease.report(times[lease.node.key])
        lease.done()
    assert seen[keys[3]] < 20  # 10x slower: at most its first tries and the idle decay's retries
    assert all(seen[key] > 500 for key in keys[:3])


def test_labels_merge_advertised_under_discovery(clock: FakeClock) -> None:
    registry, pool, _ = setup(clock, count=0)
    registry.reset("static", [NodeSpec("http://z:1", labels=MappingProxyType({"zone": "a", "device": "cpu"}))])
    node = registry.get("http://z:1")
    assert node is not None
    assert pool.labels(node) == {"zone": "a", "device": "cpu"}
    pool.learn_labels(node.key, {"device": "cuda", "memory_mb": "1000"})
    assert pool.labels(node) == {"zone": "a", "device": "cpu", "memory_mb": "1000"}


def test_latency_cost_does_not_count_a_node_s_usual_queue_twice(clock: FakeClock) -> None:
    # A fast node that usually has 1-3 in flight answers in 14 ms (its queue included); an idle slow
    # node answers in 45 ms. With two in flight now, Finagle's 14 ms x 3 = 42 ms would make the two
    # look alike; relative to its usual load (2) the fast node costs 21 ms.
    _, pool, (fast, slow, other) = setup(clock)
    only = {fast: frozenset({slow, other}), slow: frozenset({fast, other})}
    for _ in range(200):
        leases = [pool.pick("digits", exclude=only[fast]) for _ in range(3)]
        for lease in leases:
            lease.report(0.014)  # type: ignore[union-attr]
            lease.done()  # type: ignore[union-attr]
    lease = pool.pick("digits", exclude=only[slow])
    assert lease is not None
    lease.report(0.045)
    lease.done()
    held = [pool.pick("digits", exclude=only[fast]) for _ in range(2)]
    assert pool.in_flight(fast) == 2
    assert pool.latency_cost(fast) == pytest.approx(0.021, rel=0.05)
    assert pool.latency_cost(slow) == pytest.approx(0.045, rel=0.01)
    for lease in held:
        lease.done()  # type: ignore[union-attr]


def _hold_six_at_a_time(pool: NodePool, others: frozenset[str]) -> None:
    """What round robin does to a slow node: 6 requests of 100 ms on it at a time, 100 times."""
    for _ in range(100):
        leases = [pool.pick("digits", exclude=others) for _ in range(6)]
        for lease in leases:
            lease.report(0.100)  # type: ignore[union-attr]
            lease.done()  # type: ignore[union-attr]


def test_a_slow_node_holding_many_requests_is_not_discounted(clock: FakeClock) -> None:
    # Round robin kept 6 requests at a time on a slow node (each takes 100 ms): its "usual" load is
    # high because it is slow. Idle now, it must still cost its full latency, not a sixth of it.
    _, pool, (slow, b, c) = setup(clock)
    _hold_six_at_a_time(pool, others=frozenset({b, c}))
    assert pool.latency_cost(slow) == pytest.approx(0.100, rel=0.01)


def test_a_shunned_slow_node_relearns_its_load_from_its_next_answer(clock: FakeClock) -> None:
    # Round robin kept 6 requests at a time on a slow node. Under `latency` it then gets a request
    # now and then, sent alone; from the first such answer on, a second request at the same time
    # must cost double, not ride on the 6 that round robin taught (`bench balance` saw bursts of up
    # to 5 requests at once on the slow node that way: most of its traffic under `latency`).
    _, pool, (slow, b, c) = setup(clock)
    _hold_six_at_a_time(pool, others=frozenset({b, c}))
    clock.advance(5.0)
    probe = pool.pick("digits", exclude=frozenset({b, c}))
    assert probe is not None
    clock.advance(0.100)
    probe.report(0.100)
    probe.done()
    held = pool.pick("digits", exclude=frozenset({b, c}))
    assert held is not None
    assert pool.latency_cost(slow) == pytest.approx(0.200, rel=0.03)  # 100 ms x (1 + 1) / 1
    held.done()


def test_a_peak_is_not_multiplied_by_the_queue(clock: FakeClock) -> None:
    # A fast node usually answers in 10 ms with 2 in flight. A pause of the gateway makes one answer
    # take 60 ms (the peak EWMA takes it at once), and the requests the pause held back then go out
    # together: 3 in flight, twice the usual queue. Scaling the whole peak by that made the node
    # cost 120 ms, more than a node 10x slower; the two extra requests cost a typical 5 ms each.
    _, pool, (fast, b, c) = setup(clock)
    others = frozenset({b, c})
    for _ in range(200):
        leases = [pool.pick("digits", exclude=others) for _ in range(3)]
        for lease in leases:
            lease.report(0.010)  # type: ignore[union-attr]
            lease.done()  # type: ignore[union-attr]
    paused = pool.pick("digits", exclude=others)
    assert paused is not None
    paused.report(0.060)
    paused.done()
    assert pool.latency_cost(fast) == pytest.approx(0.060)  # idle: the peak, as before
    held = [pool.pick("digits", exclude=others) for _ in range(3)]
    load, mean = 2 - (2 - 1) / 16, 0.010 + 0.050 / 16  # the pause's answer was sent alone, blended in at 1/16
    assert pool.latency_cost(fast) == pytest.approx(0.060 + (4 - load) * mean / load, rel=0.02)
    assert pool.latency_cost(fast) < 0.080
    for lease in held:
        lease.done()  # type: ignore[union-attr]


def test_round_robin_hedges_and_retries_take_no_turn(clock: FakeClock) -> None:
    """Regression (audit): each hedge took the next turn, so with two nodes every first attempt went
    to the same (slow) node, the one whose slowness caused the hedges."""
    _, pool, keys = setup(clock, count=2)
    firsts = []
    for _ in range(6):
        first = pool.pick("digits")
        assert first is not None
        hedge = pool.pick("digits", exclude=frozenset({first.node.key}))
        assert hedge is not None
        assert hedge.node.key != first.node.key
        firsts.append(first.node.key)
        first.done()
        hedge.done()
    assert Counter(firsts) == {keys[0]: 3, keys[1]: 3}


def test_labels_learned_for_a_node_removed_meanwhile_are_not_kept(clock: FakeClock) -> None:
    """Regression (audit): a probe that ended after its node was removed made a state that was never
    freed, and a node coming back at that URL inherited its old `max_concurrency`."""
    registry, pool, (a, _) = setup(clock, count=2)
    registry.reset("static", [NodeSpec(k) for k in pool_keys(registry) if k != a])
    pool.learn_labels(a, {"max_concurrency": "1"})
    registry.reset("static", [NodeSpec(a), *(NodeSpec(k) for k in pool_keys(registry))])
    registry.update(a, status=NodeStatus.ONLINE, models=MappingProxyType({"digits": INFO}))
    lease = pool.pick("digits", exclude=frozenset(k for k in pool_keys(registry) if k != a))
    assert lease is not None
    assert lease.node.key == a
    node_a = registry.get(a)
    assert node_a is not None
    assert pool.status(node_a) is NodeStatus.ONLINE  # not busy at one in flight
    lease.done()


def pool_keys(registry: NodeRegistry) -> list[str]:
    return [node.key for node in registry.nodes()]
