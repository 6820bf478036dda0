"""Where nodes come from: sources (static env and file, Consul, DNS SRV, the admin API) feeding one registry."""

from discovery.consul import ConsulSource
from discovery.dns import DnsSrvSource
from discovery.node import ModelInfo, Node, NodeSpec, NodeStatus, normalise_url
from discovery.registry import NodeAdded, NodeEvent, NodeRegistry, NodeRemoved, NodeUpdated
from discovery.source import Backoff, Source
from discovery.static import NodesFileError, NodesFileSource, StaticSource, parse_nodes_file

__all__ = [
    "Backoff",
    "ConsulSource",
    "DnsSrvSource",
    "ModelInfo",
    "Node",
    "NodeAdded",
    "NodeEvent",
    "NodeRegistry",
    "NodeRemoved",
    "NodeSpec",
    "NodeStatus",
    "NodeUpdated",
    "NodesFileError",
    "NodesFileSource",
    "Source",
    "StaticSource",
    "normalise_url",
    "parse_nodes_file",
]
