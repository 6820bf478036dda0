"""Balancing strategies on their own: round robin turns, least loaded with random tie breaks."""

from __future__ import annotations

import random
from collections import Counter
from types import MappingProxyType

import pytest

from balancer.strategies import LeastLoaded, RoundRobin, default_strategies
from discovery.node import ModelInfo, Node, NodeSpec, NodeStatus
from worker.config import TensorSpec

INFO = ModelInfo(
    name="digits",
    version="1",
    platform="onnxruntime_onnx",
    inputs=(TensorSpec(name="image", datatype="FP32", shape=(-1, 1, 8, 8)),),
    outputs=(TensorSpec(name="logits", datatype="FP32", shape=(-1, 10)),),
)


def make_nodes(count: int) -> list[Node]:
    return [
        Node.from_spec(NodeSpec(f"http://node-{index}:8000"), "static").with_changes(
            status=NodeStatus.ONLINE, models=MappingProxyType({"digits": INFO})
        )
        for index in range(count)
    ]


def no_load(key: str) -> int:
    return 0


def test_default_strategies_are_fresh_and_named() -> None:
    first, second = default_strategies(), default_strategies()
    assert set(first) == {"round_robin", "least_loaded"}
    assert all(strategy.name == name for name, strategy in first.items())
    assert first["round_robin"] is not second["round_robin"]


@pytest.mark.parametrize(("count", "rounds", "seed"), [(1, 5, 0), (2, 7, 1), (3, 10, 2), (5, 4, 3)])
def test_round_robin_is_even_and_cycles(count: int, rounds: int, seed: int) -> None:
    nodes = make_nodes(count)
    strategy = RoundRobin()
    rng = random.Random(seed)
    picks = [strategy.choose("digits", nodes, no_load, rng).key for _ in range(count * rounds)]
    assert Counter(picks) == {node.key: rounds for node in nodes}
    # Every window of `count` consecutive picks visits every node once: a true cycle.
    for start in range(len(picks) - count + 1):
        assert set(picks[start : start + count]) == {node.key for node in nodes}


def test_round_robin_keeps_a_turn_per_model() -> None:
    nodes = make_nodes(3)
    strategy = RoundRobin()
    rng = random.Random(7)
    picks: dict[str, list[str]] = {"a": [], "b": []}
    pattern = ["a", "a", "b", "a", "b", "b", "b", "a", "a"] * 4  # the two models interleaved unevenly
    for model in pattern:
        picks[model].append(strategy.choose(model, nodes, no_load, rng).key)
    for model_picks in picks.values():
        usable = len(model_picks) - len(model_picks) % 3
        assert Counter(model_picks[:usable]) == {node.key: usable // 3 for node in nodes}
        for start in range(len(model_picks) - 2):
            assert len(set(model_picks[start : start + 3])) == 3


def test_round_robin_start_offsets_vary_with_the_rng() -> None:
    nodes = make_nodes(4)
    firsts = {RoundRobin().choose("digits", nodes, no_load, random.Random(seed)).key for seed in range(40)}
    assert len(firsts) > 1


def test_round_robin_copes_with_a_shrinking_candidate_list() -> None:
    nodes = make_nodes(4)
    strategy = RoundRobin()
    rng = random.Random(3)
    for _ in range(5):
        strategy.choose("digits", nodes, no_load, rng)
    fewer = nodes[:2]
    picks = [strategy.choose("digits", fewer, no_load, rng).key for _ in range(10)]
    assert Counter(picks) == {fewer[0].key: 5, fewer[1].key: 5}


def test_least_loaded_picks_the_fewest_in_flight() -> None:
    nodes = make_nodes(4)
    loads = {nodes[0].key: 3, nodes[1].key: 1, nodes[2].key: 2, nodes[3].key: 5}
    strategy = LeastLoaded()
    rng = random.Random(0)
    for _ in range(50):
        assert strategy.choose("digits", nodes, loads.__getitem__, rng).key == nodes[1].key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_least_loaded_breaks_ties_at_random(seed: int) -> None:
    nodes = make_nodes(3)
    loads = {nodes[0].key: 1, nodes[1].key: 4, nodes[2].key: 1}
    strategy = LeastLoaded()
    rng = random.Random(seed)
    picks = Counter(strategy.choose("digits", nodes, loads.__getitem__, rng).key for _ in range(400))
    assert set(picks) == {nodes[0].key, nodes[2].key}
    assert nodes[1].key not in picks
    # Fair coin over 400 draws: far from all-on-one (registration order) at any seed.
    assert 120 < picks[nodes[0].key] < 280


def test_least_loaded_follows_changing_load() -> None:
    nodes = make_nodes(3)
    loads = dict.fromkeys((node.key for node in nodes), 0)
    strategy = LeastLoaded()
    rng = random.Random(11)
    for _ in range(30):
        chosen = strategy.choose("digits", nodes, loads.__getitem__, rng)
        assert loads[chosen.key] == min(loads.values())
        loads[chosen.key] += 1
    assert sorted(loads.values()) == [10, 10, 10]
