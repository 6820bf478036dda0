"""Balancing strategies on their own: turns, load, weights, capability, latency, ties at random."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from balancer.strategies import (
    Capability,
    Latency,
    LeastLoaded,
    PickContext,
    RoundRobin,
    Weighted,
    default_strategies,
    parse_requirements,
)
from tests.unit.balancer.conftest import FakeSignals, make_nodes

CTX = PickContext("digits")


def test_default_strategies_are_fresh_and_named_as_the_contract() -> None:
    first, second = default_strategies(), default_strategies()
    assert set(first) == {"round_robin", "least_loaded", "weighted", "capability", "latency", "model_affinity"}
    assert all(strategy.name == name for name, strategy in first.items())
    assert first["round_robin"] is not second["round_robin"]


@pytest.mark.parametrize(("count", "rounds", "seed"), [(1, 5, 0), (2, 7, 1), (3, 10, 2), (5, 4, 3)])
def test_round_robin_is_even_and_cycles(count: int, rounds: int, seed: int) -> None:
    nodes = make_nodes(count)
    strategy = RoundRobin()
    rng = random.Random(seed)
    picks = [strategy.choose(CTX, nodes, FakeSignals(), rng).key for _ in range(count * rounds)]
    assert Counter(picks) == {node.key: rounds for node in nodes}
    for start in range(len(picks) - count + 1):
        assert set(picks[start : start + count]) == {node.key for node in nodes}


def test_round_robin_keeps_a_turn_per_model_and_random_start() -> None:
    nodes = make_nodes(3)
    strategy = RoundRobin()
    rng = random.Random(7)
    picks: dict[str, list[str]] = {"a": [], "b": []}
    for model in ["a", "a", "b", "a", "b", "b", "b", "a", "a"] * 4:
        picks[model].append(strategy.choose(PickContext(model), nodes, FakeSignals(), rng).key)
    for model_picks in picks.values():
        for start in range(len(model_picks) - 2):
            assert len(set(model_picks[start : start + 3])) == 3
    firsts = {RoundRobin().choose(CTX, nodes, FakeSignals(), random.Random(seed)).key for seed in range(40)}
    assert len(firsts) > 1


def test_least_loaded_picks_the_fewest_and_breaks_ties_at_random() -> None:
    nodes = make_nodes(3)
    signals = FakeSignals(loads={nodes[0].key: 1, nodes[1].key: 4, nodes[2].key: 1})
    rng = random.Random(0)
    picks = Counter(LeastLoaded().choose(CTX, nodes, signals, rng).key for _ in range(400))
    assert set(picks) == {nodes[0].key, nodes[2].key}
    assert 120 < picks[nodes[0].key] < 280


def test_weighted_is_smooth_and_proportional() -> None:
    nodes = make_nodes(3, weights=[5, 1, 1])
    strategy = Weighted()
    rng = random.Random(1)
    picks = [strategy.choose(CTX, nodes, FakeSignals(), rng).key for _ in range(70)]
    assert Counter(picks) == {nodes[0].key: 50, nodes[1].key: 10, nodes[2].key: 10}
    # Smooth: nginx's a a b a c a a per cycle for 5:1:1, never the burst a a a a a b c.
    assert picks[:7] == [nodes[i].key for i in (0, 0, 1, 0, 2, 0, 0)]
    runs = max(len(run) for run in "".join("x" if p == nodes[0].key else "." for p in picks).split("."))
    assert runs <= 4


def test_weighted_uses_advertised_capacity_and_handles_membership_changes() -> None:
    nodes = make_nodes(2)
    signals = FakeSignals(node_labels={nodes[0].key: {"capacity": "3"}, nodes[1].key: {"capacity": "bogus"}})
    strategy = Weighted()
    rng = random.Random(2)
    picks = Counter(strategy.choose(CTX, nodes, signals, rng).key for _ in range(40))
    assert picks == {nodes[0].key: 30, nodes[1].key: 10}
    assert strategy.choose(CTX, nodes[1:], signals, rng).key == nodes[1].key


@pytest.mark.parametrize("capacity", ["inf", "1e400", "nan", "-inf"])
def test_weighted_keeps_picking_whatever_capacity_a_node_advertises(capacity: str) -> None:
    """Regression: an infinite capacity (or weight) made every score NaN: no node tied for the best,
    and every pick raised IndexError (a 500 for each request)."""
    nodes = make_nodes(3, weights=[float("inf"), 1, 1])
    signals = FakeSignals(node_labels={nodes[1].key: {"capacity": capacity}})
    strategy = Weighted()
    picks = Counter(strategy.choose(CTX, nodes, signals, random.Random(3)).key for _ in range(300))
    assert sum(picks.values()) == 300
    assert picks[nodes[0].key] >= 100  # the weight over the cap counts as the cap (1e6), not as nothing


def test_weighted_ties_are_not_first_registered_wins() -> None:
    nodes = make_nodes(4)
    firsts = Counter(Weighted().choose(CTX, nodes, FakeSignals(), random.Random(seed)).key for seed in range(200))
    assert len(firsts) == 4


def test_parse_requirements() -> None:
    table = parse_requirements("llm: device=cuda, memory_mb>=16000 ; digits:zone!=b")
    assert [str(r) for r in table["llm"]] == ["device=cuda", "memory_mb>=16000"]
    assert [str(r) for r in table["digits"]] == ["zone!=b"]
    assert parse_requirements("") == {}
    for bad in ("nocolon", "m:device", "m:memory_mb>=lots", ":a=b"):
        with pytest.raises(ValueError, match="requirement"):
            parse_requirements(bad)


def test_capability_filters_by_labels_then_least_loaded() -> None:
    nodes = make_nodes(4)
    labels = {
        nodes[0].key: {"device": "cpu", "memory_mb": "64000"},
        nodes[1].key: {"device": "cuda", "memory_mb": "8000"},
        nodes[2].key: {"device": "cuda", "memory_mb": "32000"},
        nodes[3].key: {"device": "cuda", "memory_mb": "48000"},
    }
    signals = FakeSignals(loads={nodes[2].key: 2, nodes[3].key: 1}, node_labels=labels)
    strategy = Capability(parse_requirements("llm:device=cuda,memory_mb>=16000"))
    rng = random.Random(3)
    assert strategy.choose(PickContext("llm"), nodes, signals, rng) == nodes[3]
    signals.loads[nodes[3].key] = 5
    assert strategy.choose(PickContext("llm"), nodes, signals, rng) == nodes[2]
    assert strategy.choose(PickContext("llm"), nodes[:2], signals, rng) is None  # nobody fits: no node
    free = Counter(strategy.choose(CTX, nodes, FakeSignals(), rng).key for _ in range(200))
    assert len(free) == 4  # no requirements: any node, least loaded, ties at random


def test_latency_prefers_the_cheaper_of_two_and_never_the_worst() -> None:
    nodes = make_nodes(4)
    costs = {nodes[0].key: 0.001, nodes[1].key: 0.0012, nodes[2].key: 0.0011, nodes[3].key: 0.02}
    strategy = Latency(band=0.1)
    rng = random.Random(4)
    picks = Counter(strategy.choose(CTX, nodes, FakeSignals(costs=costs), rng).key for _ in range(3000))
    assert nodes[3].key not in picks  # 10x slower: loses every pair it is drawn into
    # The fast three are within or near the band of each other: all get a fair share, no herding.
    assert all(picks[node.key] > 600 for node in nodes[:3])


def test_latency_band_off_picks_strictly_the_lower_cost() -> None:
    nodes = make_nodes(2)
    costs = {nodes[0].key: 0.00100, nodes[1].key: 0.00105}
    rng = random.Random(5)
    assert {Latency(band=0).choose(CTX, nodes, FakeSignals(costs=costs), rng).key for _ in range(50)} == {nodes[0].key}
    banded = Counter(Latency(band=0.1).choose(CTX, nodes, FakeSignals(costs=costs), rng).key for _ in range(400))
    assert 120 < banded[nodes[0].key] < 280  # within the band: a coin flip
    with pytest.raises(ValueError, match="band"):
        Latency(band=1.5)
