"""The Node record: where a node is (from a source) and what it is doing (from health probes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from urllib.parse import urlsplit

from worker.config import TensorSpec

__all__ = ["NODE_ID_PATTERN", "ModelInfo", "Node", "NodeSpec", "NodeStatus", "normalise_url", "valid_node_id"]

# What the admin API accepts for an id it is given (POST /nodes).
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"
MAX_NODE_ID_LENGTH = 128


class NodeStatus(StrEnum):
    """CONTRACT §4 node states."""

    ONLINE = "online"
    BUSY = "busy"
    OFFLINE = "offline"
    ERROR = "error"


# A DNS name or an IPv4 address (letters, digits, dots, hyphens; underscores as in SRV targets),
# or a bracketed IPv6 literal (with its zone, if any); then an optional port.
_AUTHORITY = re.compile(r"(?P<host>[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+(%[A-Za-z0-9_.~-]+)?\])(:(?P<port>[0-9]{1,5}))?")


def valid_node_id(node_id: str) -> bool:
    """An id a source or a node may give: `PATCH /nodes/{id}` reaches it (percent-encoded, any
    printable text but `/`, which a path segment cannot carry) and a log line cannot be forged with it."""
    return 0 < len(node_id) <= MAX_NODE_ID_LENGTH and "/" not in node_id and node_id.isprintable()


def normalise_url(url: str) -> str:
    """`http(s)://host[:port][/path]` with no trailing slash; a ValueError for anything else.

    No user info: credentials in a node's URL would show in `/nodes`, in its default id and in
    metric labels (the gateway authenticates to nodes with DISTINFER_NODE_TOKEN instead). No
    query or fragment either: a base URL has neither.
    """
    parts = urlsplit(url.strip())
    if "@" in parts.netloc:  # said before anything echoes the URL back
        raise ValueError("node URL must not carry credentials (user:password@); nodes use DISTINFER_NODE_TOKEN")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"node URL {url!r} must be http(s)://host[:port]")
    authority = _AUTHORITY.fullmatch(parts.netloc)
    port = authority.group("port") if authority else None
    if authority is None or (port is not None and not 1 <= int(port) <= 65535):
        raise ValueError(f"node URL {url!r} must be http(s)://host[:port] with a valid host and port 1-65535")
    if parts.query or parts.fragment:
        raise ValueError(f"node URL {url!r} must not have a query or fragment")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What a discovery source knows: an address, and optionally an id, weight and labels."""

    url: str
    node_id: str | None = None
    weight: float = 1.0
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalise_url(self.url))


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as a node's v2 metadata describes it."""

    name: str
    version: str | None
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Node:
    """An immutable snapshot of one node; the registry replaces it on every change.

    `key` (the base URL) is the identity; `node_id` is what people see: the source's id, else the
    id the node advertises in its server metadata, else host:port.

    `status` and `models` are what routing uses. Probes set `health` and `advertised`; an admin's
    `manual` status and `model_filter` (PATCH /nodes/{id}) sit on top, so a probe never lifts a
    hand-set `offline`, and clearing the override falls back to what the probes last saw.
    """

    spec: NodeSpec
    node_id: str
    source: str
    status: NodeStatus = NodeStatus.OFFLINE
    models: Mapping[str, ModelInfo] = field(default_factory=lambda: MappingProxyType({}))
    binary: bool = False
    last_error: str | None = None
    health: NodeStatus = NodeStatus.OFFLINE
    advertised: Mapping[str, ModelInfo] = field(default_factory=lambda: MappingProxyType({}))
    manual: NodeStatus | None = None
    model_filter: frozenset[str] | None = None

    @property
    def key(self) -> str:
        return self.spec.url

    @property
    def url(self) -> str:
        return self.spec.url

    def serves(self, model: str) -> bool:
        return model in self.models

    def with_changes(self, **changes: object) -> Node:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_spec(cls, spec: NodeSpec, source: str) -> Node:
        return cls(spec=spec, node_id=spec.node_id or urlsplit(spec.url).netloc, source=source)
