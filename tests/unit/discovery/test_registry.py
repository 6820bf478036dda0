"""The node registry: sources reset their nodes, probes update them, subscribers see the difference."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from discovery.node import ModelInfo, Node, NodeSpec, NodeStatus, normalise_url
from discovery.registry import NodeAdded, NodeEvent, NodeRegistry, NodeRemoved, NodeUpdated
from worker.config import TensorSpec

DIGITS = ModelInfo(
    name="digits",
    version="1",
    platform="onnxruntime_onnx",
    inputs=(TensorSpec(name="image", datatype="FP32", shape=(-1, 1, 8, 8)),),
    outputs=(TensorSpec(name="logits", datatype="FP32", shape=(-1, 10)),),
)


def summary(events: list[NodeEvent]) -> list[tuple[str, str]]:
    return [(type(event).__name__, event.node.key) for event in events]


def test_reset_adds_new_and_removes_gone(registry: NodeRegistry, events: list[NodeEvent]) -> None:
    registry.reset("static", [NodeSpec("http://a:1"), NodeSpec("http://b:2/")])
    assert summary(events) == [("NodeAdded", "http://a:1"), ("NodeAdded", "http://b:2")]
    assert all(event.node.source == "static" and event.node.status is NodeStatus.OFFLINE for event in events)
    events.clear()
    registry.reset("static", [NodeSpec("http://b:2"), NodeSpec("http://c:3")])
    assert summary(events) == [("NodeRemoved", "http://a:1"), ("NodeAdded", "http://c:3")]
    assert sorted(node.key for node in registry.nodes()) == ["http://b:2", "http://c:3"]
    assert registry.get("http://a:1") is None
    events.clear()
    registry.reset("static", [NodeSpec("http://c:3"), NodeSpec("http://b:2")])
    assert events == []


def test_reset_only_removes_nodes_of_the_same_source(registry: NodeRegistry, events: list[NodeEvent]) -> None:
    registry.reset("consul", [NodeSpec("http://x:1")])
    registry.reset("static", [NodeSpec("http://a:1")])
    events.clear()
    registry.reset("static", [])
    assert summary(events) == [("NodeRemoved", "http://a:1")]
    assert [node.key for node in registry.nodes()] == ["http://x:1"]
    events.clear()
    registry.reset("dns", [])
    assert events == []
    assert [node.key for node in registry.nodes()] == ["http://x:1"]


def test_a_node_another_source_owns_is_left_alone(registry: NodeRegistry, events: list[NodeEvent]) -> None:
    registry.reset("consul", [NodeSpec("http://x:1", weight=1.0)])
    events.clear()
    registry.reset("static", [NodeSpec("http://x:1", weight=5.0, node_id="mine")])
    assert events == []
    node = registry.get("http://x:1")
    assert node is not None
    assert node.source == "consul"
    assert node.spec.weight == 1.0
    registry.reset("static", [])
    assert events == []
    assert registry.get("http://x:1") is not None


def test_reset_publishes_updated_on_spec_change_and_keeps_state(
    registry: NodeRegistry, events: list[NodeEvent]
) -> None:
    registry.reset("static", [NodeSpec("http://a:1")])
    registry.update("http://a:1", status=NodeStatus.ONLINE, models=MappingProxyType({"digits": DIGITS}))
    events.clear()
    registry.reset("static", [NodeSpec("http://a:1", node_id="node-a", weight=2.0, labels={"gpu": "no"})])
    assert summary(events) == [("NodeUpdated", "http://a:1")]
    (event,) = events
    assert isinstance(event, NodeUpdated)
    assert event.node.node_id == "node-a"
    assert event.node.spec.weight == 2.0
    assert dict(event.node.spec.labels) == {"gpu": "no"}
    assert event.node.status is NodeStatus.ONLINE
    assert event.node.serves("digits")
    assert registry.get("http://a:1") == event.node
    assert registry.find("node-a") == event.node
    events.clear()
    # Dropping the id from the spec keeps the one the node already has.
    registry.reset("static", [NodeSpec("http://a:1", weight=2.0, labels={"gpu": "no"})])
    assert summary(events) == [("NodeUpdated", "http://a:1")]
    assert events[0].node.node_id == "node-a"


def test_default_node_id_is_host_and_port(registry: NodeRegistry, events: list[NodeEvent]) -> None:
    registry.reset("static", [NodeSpec("http://a.example:8001/"), NodeSpec("https://b:9/", node_id="bee")])
    added = {event.node.key: event.node.node_id for event in events if isinstance(event, NodeAdded)}
    assert added == {"http://a.example:8001": "a.example:8001", "https://b:9": "bee"}
    assert registry.find("bee") is not None
    assert registry.find("nobody") is None


def test_one_advertised_id_names_one_node(registry: NodeRegistry) -> None:
    """Regression: two URLs of one server (localhost, 127.0.0.1) both took its advertised id, and
    PATCH /nodes/{id} (which acts on the first match) drained only one of them."""
    registry.reset("static", [NodeSpec("http://127.0.0.1:8301"), NodeSpec("http://localhost:8301")])
    registry.update("http://127.0.0.1:8301", node_id="nodeA")
    registry.update("http://localhost:8301", node_id="nodeA")
    assert sorted(node.node_id for node in registry.nodes()) == ["localhost:8301", "nodeA"]
    assert registry.find("nodeA") is registry.get("http://127.0.0.1:8301")
    registry.reset("static", [NodeSpec("http://localhost:8301")])  # the first goes: the id is free again
    registry.update("http://localhost:8301", node_id="nodeA")
    assert [node.node_id for node in registry.nodes()] == ["nodeA"]


def test_update_publishes_only_on_change(registry: NodeRegistry, events: list[NodeEvent]) -> None:
    registry.reset("static", [NodeSpec("http://a:1")])
    events.clear()
    node = registry.update("http://a:1", status=NodeStatus.OFFLINE)
    assert node is not None
    assert node.status is NodeStatus.OFFLINE
    assert events == []
    node = registry.update("http://a:1", status=NodeStatus.ONLINE, binary=True)
    assert node is not None
    assert summary(events) == [("NodeUpdated", "http://a:1")]
    assert events[0].node.status is NodeStatus.ONLINE
    assert events[0].node.binary is True
    assert registry.get("http://a:1") == node
    events.clear()
    assert registry.update("http://a:1", status=NodeStatus.ONLINE, binary=True) == node
    assert events == []
    registry.update("http://a:1", models=MappingProxyType({"digits": DIGITS}))
    registry.update("http://a:1", models=MappingProxyType({"digits": DIGITS}))
    assert summary(events) == [("NodeUpdated", "http://a:1")]
    events.clear()
    registry.update("http://a:1", last_error="timeout")
    registry.update("http://a:1", last_error=None)
    assert [event.node.last_error for event in events] == ["timeout", None]


def test_update_of_an_unknown_node_does_nothing(registry: NodeRegistry, events: list[NodeEvent]) -> None:
    assert registry.update("http://ghost:1", status=NodeStatus.ONLINE) is None
    assert events == []
    assert registry.nodes() == []


def test_every_subscriber_sees_every_event_in_order(registry: NodeRegistry) -> None:
    first: list[NodeEvent] = []
    second: list[NodeEvent] = []
    registry.subscribe(first.append)
    registry.subscribe(second.append)
    registry.reset("static", [NodeSpec("http://a:1")])
    registry.update("http://a:1", status=NodeStatus.ONLINE)
    registry.reset("static", [])
    assert [type(event) for event in first] == [NodeAdded, NodeUpdated, NodeRemoved]
    assert first == second
    removed = first[-1]
    assert isinstance(removed, NodeRemoved)
    assert removed.node.status is NodeStatus.ONLINE  # the last known state goes with it


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://a:8000/", "http://a:8000"),
        ("http://a:8000///", "http://a:8000"),
        ("  https://a.example/  ", "https://a.example"),
        ("http://a:8000/prefix/", "http://a:8000/prefix"),
        ("http://10.0.0.1:9", "http://10.0.0.1:9"),
    ],
)
def test_normalise_url_strips_trailing_slashes(raw: str, expected: str) -> None:
    assert normalise_url(raw) == expected
    assert NodeSpec(raw).url == expected
    assert Node.from_spec(NodeSpec(raw), "static").key == expected


@pytest.mark.parametrize(
    "raw",
    [
        "http://127.0.0.1:abc",
        "http://127.0.0.1:99999",
        "http://a:0",
        "http://a:",
        "http://a b:80",
        "http://%zz:80",
        "http://a:1/?x=1",
        "http://a:1/#top",
    ],
)
def test_normalise_url_rejects_what_no_client_can_reach(raw: str) -> None:
    """Regression: these were accepted (201 from POST /nodes) and the node stayed offline for good."""
    with pytest.raises(ValueError, match=r"host|query"):
        NodeSpec(raw)


def test_credentials_in_a_node_url_are_refused_without_echoing_them() -> None:
    """They would show in /nodes, in the node's default id and in metric labels."""
    with pytest.raises(ValueError, match="credentials") as caught:
        NodeSpec("http://user:s3cret@10.0.0.5:8001")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("raw", ["http://[::1]:8000", "http://[fe80::1%25eth0]:80", "http://node1.example.:80"])
def test_ipv6_literals_and_absolute_names_are_accepted(raw: str) -> None:
    assert normalise_url(raw) == raw


@pytest.mark.parametrize(
    "raw", ["ftp://a:21", "grpc://a:8001", "a:8000", "localhost", "http://", "https:///path", "", "file:///tmp/x"]
)
def test_normalise_url_rejects_non_http(raw: str) -> None:
    with pytest.raises(ValueError, match="http"):
        normalise_url(raw)
    with pytest.raises(ValueError, match="http"):
        NodeSpec(raw)
