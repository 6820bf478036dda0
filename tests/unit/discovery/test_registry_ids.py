"""Node ids are unique and reachable by the admin API, whatever the sources and nodes say."""

from __future__ import annotations

import logging

import pytest

from discovery.node import NodeSpec, NodeStatus
from discovery.registry import NodeRegistry


def test_two_instances_naming_one_id_do_not_both_answer_to_it(registry: NodeRegistry) -> None:
    # Consul services registered from agent config files all get Service.ID "distinfer-node".
    same = "distinfer-node"
    registry.reset("consul", [NodeSpec("http://a:1", node_id=same), NodeSpec("http://b:1", node_id=same)])
    assert registry.get("http://a:1").node_id == "distinfer-node"  # type: ignore[union-attr]  # the first keeps it
    assert registry.get("http://b:1").node_id == "b:1"  # type: ignore[union-attr]


def test_an_id_that_path_parameters_cannot_carry_is_replaced_by_host_and_port(
    registry: NodeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.reset("file", [NodeSpec("http://a:1", node_id="rack/1"), NodeSpec("http://b:1", node_id="ok-1")])
    assert registry.get("http://a:1").node_id == "a:1"  # type: ignore[union-attr]
    assert registry.get("http://b:1").node_id == "ok-1"  # type: ignore[union-attr]
    assert "rack/1" in caplog.text


def test_two_paths_on_one_server_get_distinct_default_ids(registry: NodeRegistry) -> None:
    registry.reset("static", [NodeSpec("http://a:1/one"), NodeSpec("http://a:1/two")])
    assert sorted(node.node_id for node in registry.nodes()) == ["a:1", "a:1-2"]


def test_a_renamed_spec_keeps_its_id_when_the_new_one_is_taken(registry: NodeRegistry) -> None:
    registry.reset("file", [NodeSpec("http://a:1", node_id="x"), NodeSpec("http://b:1", node_id="y")])
    registry.reset("file", [NodeSpec("http://a:1", node_id="x"), NodeSpec("http://b:1", node_id="x")])
    assert registry.get("http://b:1").node_id == "y"  # type: ignore[union-attr]
    registry.reset("file", [NodeSpec("http://b:1", node_id="x")])  # a leaves: the id is free
    registry.reset("file", [NodeSpec("http://b:1", node_id="x", weight=2.0)])
    assert registry.get("http://b:1").node_id == "x"  # type: ignore[union-attr]


def test_an_advertised_id_that_cannot_be_addressed_is_refused_once(
    registry: NodeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.reset("static", [NodeSpec("http://a:1")])
    with caplog.at_level(logging.WARNING, logger="discovery.registry"):
        for _ in range(3):  # a probe round each
            registry.update("http://a:1", status=NodeStatus.ONLINE, node_id="forged\nlog line")
    assert registry.get("http://a:1").node_id == "a:1"  # type: ignore[union-attr]
    assert registry.get("http://a:1").status is NodeStatus.ONLINE  # type: ignore[union-attr]
    assert caplog.text.count("forged") == 1


def test_a_refused_id_is_taken_once_its_holder_leaves(registry: NodeRegistry) -> None:
    registry.reset("dns", [NodeSpec("http://10.0.0.1:8001", node_id="pod-a")])
    registry.add("admin", NodeSpec("http://10.0.0.2:8001", node_id="pod-a"))
    assert registry.get("http://10.0.0.2:8001").node_id == "10.0.0.2:8001"  # type: ignore[union-attr]
    registry.reset("dns", [])
    assert registry.get("http://10.0.0.2:8001").node_id == "pod-a"  # type: ignore[union-attr]


def test_an_id_freed_by_a_rename_passes_on_too(registry: NodeRegistry) -> None:
    registry.reset("file", [NodeSpec("http://a:1", node_id="x"), NodeSpec("http://b:1", node_id="x")])
    registry.reset("file", [NodeSpec("http://a:1", node_id="y"), NodeSpec("http://b:1", node_id="x")])
    assert registry.get("http://a:1").node_id == "y"  # type: ignore[union-attr]
    assert registry.get("http://b:1").node_id == "x"  # type: ignore[union-attr]


def test_any_printable_id_without_a_slash_is_kept(registry: NodeRegistry) -> None:
    registry.reset("static", [NodeSpec("http://a:1")])
    registry.update("http://a:1", node_id="nœud a,b")  # PATCH /nodes/n%C5%93ud%20a%2Cb reaches it
    assert registry.get("http://a:1").node_id == "nœud a,b"  # type: ignore[union-attr]
