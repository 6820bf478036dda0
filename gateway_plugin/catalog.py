"""What the cluster (and the local fallback) can serve, and where: for `/models` and input shapes."""

from __future__ import annotations

from dataclasses import dataclass, field

from discovery.node import ModelInfo, NodeStatus
from discovery.registry import NodeRegistry
from gateway_plugin.local import LocalInference

__all__ = ["CatalogEntry", "ModelCatalog"]


@dataclass(slots=True)
class CatalogEntry:
    info: ModelInfo
    nodes: list[str] = field(default_factory=list)
    ready_nodes: int = 0
    local: bool = False


class ModelCatalog:
    def __init__(self, registry: NodeRegistry, local: LocalInference | None) -> None:
        self._registry = registry
        self._local = local

    def info(self, model: str) -> ModelInfo | None:
        """The model's metadata: from an online node if any, else any node, else the local copy."""
        best: ModelInfo | None = None
        for node in self._registry.nodes():
            found = node.models.get(model)
            if found is not None:
                if node.status is NodeStatus.ONLINE:
                    return found
                best = best or found
        if best is None and self._local is not None:
            best = self._local.info(model)
        return best

    def entries(self) -> list[CatalogEntry]:
        table: dict[str, CatalogEntry] = {}
        for node in self._registry.nodes():
            for name, info in node.models.items():
                entry = table.setdefault(name, CatalogEntry(info))
                entry.nodes.append(node.node_id)
                if node.status is NodeStatus.ONLINE:
                    entry.ready_nodes += 1
                    entry.info = info
        for info in self._local.models() if self._local else []:
            table.setdefault(info.name, CatalogEntry(info)).local = True
        return [table[name] for name in sorted(table)]
