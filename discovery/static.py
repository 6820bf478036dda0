"""Static discovery: base URLs from `DISTINFER_NODES`, fixed for the life of the process."""

from __future__ import annotations

from collections.abc import Sequence

from discovery.node import NodeSpec
from discovery.registry import NodeRegistry

__all__ = ["StaticSource"]


class StaticSource:
    name = "static"

    def __init__(self, urls: Sequence[str]) -> None:
        self._specs = [NodeSpec(url=url) for url in urls]

    async def run(self, registry: NodeRegistry) -> None:
        registry.reset(self.name, self._specs)
