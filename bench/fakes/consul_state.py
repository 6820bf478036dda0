"""The state behind the fake Consul agent: a catalog with Raft-style indexes, checks and ACLs.

Modelled on Consul's documented behaviour (HTTP API reference, "Blocking Queries"):

- every write takes the next index; a service name's index moves when any of its instances or
  their checks change (and a node's checks move every service on that node); a query for a name
  that does not exist answers the index of the whole catalog, as Consul's `maxIndexForService` does;
- check status starts `critical` unless the definition gives `Status`; only a status change is a
  write (Consul also rate-limits output-only writes, which this model never makes);
- `DeregisterCriticalServiceAfter` removes a service whose check stayed critical that long; Consul
  enforces at least one minute (`min_deregister_s`), which tests may lower.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Catalog", "CheckState", "ConsulError", "InstanceState", "NodeState", "parse_duration"]

AGENT_NODE = "fake-agent"
DATACENTER = "dc1"
_META_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")
_DURATION = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
STATUSES = ("passing", "warning", "critical")
_VERBATIM = frozenset({"meta", "nodemeta", "header"})


class ConsulError(Exception):
    """An answer other than 200: Consul's plain-text error bodies, with their status."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def parse_duration(text: object, what: str = "duration") -> float:
    """A Go duration (`10s`, `1m30s`, `250ms`; a bare number is seconds, as Consul accepts) in seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str) or not text:
        raise ConsulError(400, f"Invalid {what}: {text!r}")
    if re.fullmatch(r"\d+(\.\d*)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ConsulError(400, f"Invalid {what}: {text!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def lower_keys(value: Any) -> Any:
    """Consul decodes request JSON case-insensitively: compare keys in lower case."""
    if isinstance(value, dict):
        # Meta keys are the user's own and keep their case.
        return {str(k).lower(): v if str(k).lower() in _VERBATIM else lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys(item) for item in value]
    return value


@dataclass
class CheckState:
    check_id: str
    name: str
    node: str
    status: str = "critical"
    output: str = ""
    notes: str = ""
    service_id: str = ""
    service_name: str = ""
    kind: str = ""  # http | ttl | "" (set through the catalog)
    http: str = ""
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    interval_s: float = 0.0
    timeout_s: float = 10.0
    ttl_s: float = 0.0
    deregister_after_s: float | None = None
    critical_since: float | None = None
    ttl_deadline: float | None = None
    create_index: int = 0
    modify_index: int = 0

    def as_json(self, tags: list[str]) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": tags,
            "Type": self.kind,
            "Interval": f"{self.interval_s:g}s" if self.interval_s else "",
            "Timeout": f"{self.timeout_s:g}s" if self.kind == "http" else "",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class InstanceState:
    service_id: str
    name: str
    node: str
    address: str = ""
    port: int = 0
    tags: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    create_index: int = 0
    modify_index: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "ID": self.service_id,
            "Service": self.name,
            "Tags": list(self.tags),
            "Address": self.address,
            "Meta": dict(self.meta),
            "Port": self.port,
            "Weights": dict(self.weights),
            "EnableTagOverride": self.enable_tag_override,
            "Datacenter": DATACENTER,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass
class NodeState:
    name: str
    address: str
    meta: dict[str, str] = field(default_factory=dict)
    node_id: str = ""
    create_index: int = 0
    modify_index: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "ID": self.node_id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": DATACENTER,
            "TaggedAddresses": {"lan": self.address, "wan": self.address},
            "Meta": dict(self.meta),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


def validate_meta(meta: object) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise ConsulError(400, "Invalid Service Meta: not an object")
    if len(meta) > 64:
        raise ConsulError(400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs")
    for key, value in meta.items():
        if not _META_KEY.match(str(key)) or len(str(key)) > 128 or str(key).startswith("consul-"):
            raise ConsulError(400, f"Invalid Service Meta: Key {key!r} is invalid")
        if len(str(value)) > 512:
            raise ConsulError(400, f"Invalid Service Meta: Value is too long (limit: 512 characters): {key}")
    return {str(k): str(v) for k, v in meta.items()}


class Catalog:
    """All state and every write; the HTTP layer calls in, `on_write` wakes blocked queries."""

    def __init__(self, *, on_write: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.index = 1
        self._on_write = on_write
        self._clock = clock
        self.nodes: dict[str, NodeState] = {}
        self.instances: dict[tuple[str, str], InstanceState] = {}  # (node, service id)
        self.checks: dict[tuple[str, str], CheckState] = {}  # (node, check id)
        self.table_index = 1  # the catalog as a whole
        self.name_index: dict[str, int] = {}  # per service name, kept after the last instance goes
        self.writes = 0

    # ------------------------------------------------------------------ indexes

    def _write(self, names: Iterable[str]) -> int:
        self.index += 1
        self.table_index = self.index
        for name in names:
            self.name_index[name] = self.index
        self.writes += 1
        self._on_write()
        return self.index

    def rewind(self, index: int) -> None:
        """As after restoring an older snapshot: the indexes go back (what clients must survive)."""
        self.index = max(1, index)
        self.table_index = self.index
        self.name_index = {name: min(value, self.index) for name, value in self.name_index.items()}
        self._on_write()

    def service_index(self, name: str) -> int:
        exists = any(inst.name == name for inst in self.instances.values())
        if exists or name in self.name_index:
            return self.name_index.get(name, self.table_index)
        return self.table_index

    def _names_on_node(self, node: str) -> set[str]:
        return {inst.name for (n, _), inst in self.instances.items() if n == node}

    # ------------------------------------------------------------------ writes

    def ensure_node(self, name: str, address: str, meta: Mapping[str, str] | None = None) -> None:
        current = self.nodes.get(name)
        if current is not None and current.address == address and (meta is None or current.meta == dict(meta)):
            return
        index = self._write(self._names_on_node(name))
        if current is None:
            self.nodes[name] = NodeState(name, address, dict(meta or {}), f"node-{len(self.nodes)}", index, index)
            if name == AGENT_NODE:
                self.checks[(name, "serfHealth")] = CheckState(
                    "serfHealth",
                    "Serf Health Status",
                    name,
                    "passing",
                    "Agent alive and reachable",
                    create_index=index,
                    modify_index=index,
                )
        else:
            current.address = address
            current.meta = dict(meta) if meta is not None else current.meta
            current.modify_index = index

    def put_instance(self, instance: InstanceState) -> None:
        key = (instance.node, instance.service_id)
        previous = self.instances.get(key)
        names = {instance.name} | ({previous.name} if previous else set())
        index = self._write(names)
        instance.create_index = previous.create_index if previous else index
        instance.modify_index = index
        self.instances[key] = instance

    def put_check(self, check: CheckState) -> None:
        key = (check.node, check.check_id)
        previous = self.checks.get(key)
        names = {check.service_name} if check.service_name else self._names_on_node(check.node)
        index = self._write(names)
        check.create_index = previous.create_index if previous else index
        check.modify_index = index
        check.critical_since = self._clock() if check.status == "critical" else None
        self.checks[key] = check

    def set_status(self, node: str, check_id: str, status: str, output: str | None = None) -> None:
        check = self.checks.get((node, check_id))
        if check is None:
            raise ConsulError(404, f'Unknown check ID "{check_id}"')
        if output is not None:
            check.output = output
        if check.status == status:
            return
        names = {check.service_name} if check.service_name else self._names_on_node(node)
        check.status = status
        check.critical_since = self._clock() if status == "critical" else None
        check.modify_index = self._write(names)

    def remove_check(self, node: str, check_id: str) -> None:
        check = self.checks.pop((node, check_id), None)
        if check is not None:
            self._write({check.service_name} if check.service_name else self._names_on_node(node))

    def remove_instance(self, node: str, service_id: str) -> bool:
        instance = self.instances.pop((node, service_id), None)
        if instance is None:
            return False
        for key in [k for k, c in self.checks.items() if c.node == node and c.service_id == service_id]:
            del self.checks[key]
        self._write({instance.name})
        return True

    def remove_node(self, node: str) -> None:
        names = self._names_on_node(node)
        for key in [k for k in self.instances if k[0] == node]:
            del self.instances[key]
        for key in [k for k in self.checks if k[0] == node]:
            del self.checks[key]
        if self.nodes.pop(node, None) is not None:
            self._write(names)

    # ------------------------------------------------------------------ reads

    def checks_of(self, instance: InstanceState) -> list[CheckState]:
        return [
            c
            for (node, _), c in sorted(self.checks.items())
            if node == instance.node and c.service_id in ("", instance.service_id)
        ]

    def health_entries(self, name: str, *, passing: bool, tags: list[str]) -> list[dict[str, Any]]:
        entries = []
        for (node, _), inst in sorted(self.instances.items()):
            if inst.name != name or not all(tag in inst.tags for tag in tags):
                continue
            checks = self.checks_of(inst)
            if passing and any(c.status != "passing" for c in checks):
                continue
            entries.append(
                {
                    "Node": self.nodes[node].as_json(),
                    "Service": inst.as_json(),
                    "Checks": [c.as_json(inst.tags if c.service_id else []) for c in checks],
                }
            )
        return entries

    def reap(self, now: float, min_deregister_s: float) -> list[str]:
        """Deregister services whose check has been critical longer than its limit; their ids."""
        gone = []
        for check in list(self.checks.values()):
            if check.ttl_deadline is not None and now > check.ttl_deadline and check.status != "critical":
                self.set_status(check.node, check.check_id, "critical", "TTL expired")
            limit = check.deregister_after_s
            if limit is None or check.critical_since is None or not check.service_id:
                continue
            if now - check.critical_since >= max(limit, min_deregister_s) and self.remove_instance(
                check.node, check.service_id
            ):
                gone.append(check.service_id)
        return gone
