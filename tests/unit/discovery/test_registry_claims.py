"""Several sources listing one URL, nodes added by hand, and an admin's holds that probes never lift."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from discovery.node import ModelInfo, NodeSpec, NodeStatus
from discovery.registry import NodeEvent, NodeRegistry, NodeRemoved, NodeUpdated
from worker.config import TensorSpec


def info(name: str) -> ModelInfo:
    spec = (TensorSpec(name="x", datatype="FP32", shape=(-1, 1)),)
    return ModelInfo(name=name, version="1", platform="onnxruntime_onnx", inputs=spec, outputs=spec)


MODELS = MappingProxyType({name: info(name) for name in ("digits", "digits_a")})


def test_a_node_lives_while_any_source_lists_it_and_changes_hands(
    registry: NodeRegistry, events: list[NodeEvent]
) -> None:
    registry.reset("consul", [NodeSpec("http://x:1", node_id="from-consul")])
    registry.reset("dns", [NodeSpec("http://x:1", weight=3.0)])
    registry.update("http://x:1", status=NodeStatus.ONLINE, models=MODELS)
    assert registry.claimants("http://x:1") == ["consul", "dns"]
    events.clear()
    registry.reset("consul", [])
    (event,) = events
    assert isinstance(event, NodeUpdated)
    assert event.node.source == "dns"
    assert event.node.spec.weight == 3.0
    assert event.node.node_id == "from-consul"  # the dns spec names no id: the known one stays
    assert event.node.status is NodeStatus.ONLINE
    assert event.node.serves("digits")
    events.clear()
    registry.reset("dns", [])
    assert [type(e) for e in events] == [NodeRemoved]
    assert registry.nodes() == []


def test_add_and_remove_one_node_for_a_source(registry: NodeRegistry, events: list[NodeEvent]) -> None:
    node = registry.add("manual", NodeSpec("http://m:1", node_id="m"))
    assert node.source == "manual"
    assert registry.find("m") == node
    registry.reset("static", [NodeSpec("http://s:1")])
    assert registry.get("http://m:1") is not None  # another source's reset leaves it alone
    registry.remove("manual", "http://nobody:1")
    registry.remove("static", "http://m:1")
    assert registry.get("http://m:1") is not None
    registry.remove("manual", "http://m:1")
    assert registry.get("http://m:1") is None
    assert isinstance(events[-1], NodeRemoved)


def test_a_manual_hold_survives_probes_and_lifting_it_restores_their_view(registry: NodeRegistry) -> None:
    registry.reset("static", [NodeSpec("http://a:1")])
    registry.update("http://a:1", status=NodeStatus.ONLINE, models=MODELS)
    held = registry.set_manual_status("http://a:1", NodeStatus.OFFLINE)
    assert held is not None
    assert held.status is NodeStatus.OFFLINE
    assert held.manual is NodeStatus.OFFLINE
    node = registry.update("http://a:1", status=NodeStatus.ONLINE, last_error=None)
    assert node is not None
    assert node.status is NodeStatus.OFFLINE  # a probe said online; the hold stands
    assert node.health is NodeStatus.ONLINE
    registry.update("http://a:1", status=NodeStatus.OFFLINE)  # the node then really goes down
    node = registry.set_manual_status("http://a:1", None)
    assert node is not None
    assert node.status is NodeStatus.OFFLINE
    assert node.manual is None
    node = registry.update("http://a:1", status=NodeStatus.ONLINE)
    assert node is not None
    assert node.status is NodeStatus.ONLINE
    busy = registry.set_manual_status("http://a:1", NodeStatus.BUSY)
    assert busy is not None
    assert busy.status is NodeStatus.BUSY
    # A source changing the node's spec keeps the hold.
    registry.reset("static", [NodeSpec("http://a:1", weight=2.0)])
    node = registry.get("http://a:1")
    assert node is not None
    assert node.status is NodeStatus.BUSY
    assert node.spec.weight == 2.0
    assert registry.set_manual_status("http://ghost:1", NodeStatus.OFFLINE) is None


def test_a_model_filter_narrows_what_is_routed_and_follows_new_descriptions(registry: NodeRegistry) -> None:
    registry.reset("static", [NodeSpec("http://a:1")])
    registry.update("http://a:1", status=NodeStatus.ONLINE, models=MODELS)
    node = registry.set_model_filter("http://a:1", ["digits_a", "not_served"])
    assert node is not None
    assert sorted(node.models) == ["digits_a"]
    assert sorted(node.advertised) == sorted(MODELS)
    node = registry.update("http://a:1", models=MappingProxyType({"digits": info("digits")}))
    assert node is not None
    assert dict(node.models) == {}
    assert list(node.advertised) == ["digits"]
    node = registry.set_model_filter("http://a:1", None)
    assert node is not None
    assert list(node.models) == ["digits"]
    assert registry.set_model_filter("http://ghost:1", None) is None
    with pytest.raises(TypeError):
        registry.update("http://a:1", models=["digits"])
