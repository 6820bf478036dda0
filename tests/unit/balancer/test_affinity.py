"""`model_affinity`: sticky sessions by rendezvous hashing, minimal reshuffle when nodes come and go."""

from __future__ import annotations

import random
from collections import Counter

from balancer.strategies import ModelAffinity, PickContext, session_key
from tests.unit.balancer.conftest import FakeSignals, make_nodes

KEYS = [f"session-{index}" for index in range(5000)]


def _assign(nodes: list, keys: list[str]) -> dict[str, str]:  # type: ignore[type-arg]
    strategy = ModelAffinity()
    rng = random.Random(0)
    return {key: strategy.choose(PickContext("digits", key), nodes, FakeSignals(), rng).key for key in keys}


def test_same_key_same_node_whatever_the_order_or_rng() -> None:
    nodes = make_nodes(5)
    first = _assign(nodes, KEYS[:200])
    again = _assign(list(reversed(nodes)), KEYS[:200])
    assert first == again


def test_keys_spread_evenly() -> None:
    shares = Counter(_assign(make_nodes(5), KEYS).values())
    assert len(shares) == 5
    assert all(800 < count < 1200 for count in shares.values())  # 1000 each, +-20 %


def test_a_node_leaving_moves_only_its_own_keys_about_one_nth() -> None:
    nodes = make_nodes(5)
    before = _assign(nodes, KEYS)
    gone = nodes[2].key
    after = _assign([node for node in nodes if node.key != gone], KEYS)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(before[key] == gone for key in moved)  # nobody else's session moved
    assert {key for key in KEYS if before[key] == gone} == set(moved)
    share = len(moved) / len(KEYS)
    assert 0.15 < share < 0.25  # 1/5 expected
    # ...and the moved keys spread over the remaining four rather than piling onto one.
    assert len(Counter(after[key] for key in moved)) == 4
    # When it comes back, exactly those keys return.
    assert _assign(nodes, KEYS) == before


def test_a_node_joining_takes_about_one_nth_from_everyone() -> None:
    nodes = make_nodes(5)
    before = _assign(nodes[:4], KEYS)
    after = _assign(nodes, KEYS)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == nodes[4].key for key in moved)
    assert 0.15 < len(moved) / len(KEYS) < 0.25


def test_without_a_session_the_model_is_the_key_and_weights_scale_shares() -> None:
    nodes = make_nodes(3)
    strategy = ModelAffinity()
    rng = random.Random(1)
    assert len({strategy.choose(PickContext("digits"), nodes, FakeSignals(), rng).key for _ in range(20)}) == 1
    heavy = make_nodes(2, weights=[3.0, 1.0])
    shares = Counter(_assign(heavy, KEYS).values())
    assert 0.7 < shares[heavy[0].key] / len(KEYS) < 0.8  # 3/4 expected


def test_session_key_from_parameters() -> None:
    assert session_key({"session_id": "abc"}) == "abc"
    assert session_key({"session": 42}) == "42"
    assert session_key({"affinity_key": "k", "session_id": "s"}) == "s"
    assert session_key({"session_id": True}) is None
    assert session_key({"session_id": ""}) is None
    assert session_key({}) is None
