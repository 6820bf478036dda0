"""Where nodes come from: sources (static, and later Consul and DNS SRV) feeding one registry."""

from discovery.node import ModelInfo, Node, NodeSpec, NodeStatus, normalise_url
from discovery.registry import NodeAdded, NodeEvent, NodeRegistry, NodeRemoved, NodeUpdated
from discovery.static import StaticSource

__all__ = [
    "ModelInfo",
    "Node",
    "NodeAdded",
    "NodeEvent",
    "NodeRegistry",
    "NodeRemoved",
    "NodeSpec",
    "NodeStatus",
    "NodeUpdated",
    "StaticSource",
    "normalise_url",
]
