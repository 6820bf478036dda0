"""Active health: probe every node's v2 ready endpoint and learn what it serves.

A node that answers ready is described (server metadata for the binary extension and its id,
the repository index and each model's metadata) when it comes online and every
`refresh_every` probes after, so routing follows the models a node loads or drops. A node that
stops answering goes `offline` until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import MappingProxyType

from discovery.node import ModelInfo, Node, NodeStatus
from discovery.registry import NodeAdded, NodeEvent, NodeRegistry
from worker.client import NodeClient
from worker.config import TensorSpec
from worker.errors import NodeCallError
from worker.protocol.models import MetadataTensor, ModelMetadata

__all__ = ["HealthProber", "describe_node"]

log = logging.getLogger(__name__)

BINARY_EXTENSION = "binary_tensor_data"


def _specs(tensors: list[MetadataTensor]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name=t.name, datatype=t.datatype, shape=tuple(t.shape)) for t in tensors)


def _model_info(meta: ModelMetadata) -> ModelInfo:
    params = meta.parameters or {}
    max_batch = params.get("max_batch_size", 0)
    labels = params.get("labels", [])
    return ModelInfo(
        name=meta.name,
        version=meta.versions[-1] if meta.versions else None,
        platform=meta.platform,
        inputs=_specs(meta.inputs),
        outputs=_specs(meta.outputs),
        max_batch_size=max_batch if isinstance(max_batch, int) else 0,
        labels=tuple(str(label) for label in labels) if isinstance(labels, list) else (),
    )


async def describe_node(client: NodeClient, node: Node) -> dict[str, object]:
    """The registry fields a ready node's metadata gives: models, binary support, advertised id."""
    server = await client.server_metadata(node.url)
    index = await client.repository_index(node.url)
    names = [entry.name for entry in index or [] if entry.state in (None, "READY")]
    metas = await asyncio.gather(*(client.model_metadata(node.url, name) for name in names))
    changes: dict[str, object] = {
        "models": MappingProxyType({meta.name: _model_info(meta) for meta in metas}),
        "binary": BINARY_EXTENSION in server.get("extensions", []),
    }
    advertised = server.get("node_id")
    if node.spec.node_id is None and isinstance(advertised, str) and advertised:
        changes["node_id"] = advertised
    return changes


class HealthProber:
    def __init__(
        self, registry: NodeRegistry, client: NodeClient, *, interval_s: float, refresh_every: int = 10
    ) -> None:
        self._registry = registry
        self._client = client
        self._interval = interval_s
        self._refresh_every = refresh_every
        self._rounds = 0
        self._wake = asyncio.Event()
        registry.subscribe(self._on_event)

    def _on_event(self, event: NodeEvent) -> None:
        if isinstance(event, NodeAdded):
            self._wake.set()  # probe a new node now rather than at the next tick

    async def run(self) -> None:
        while True:
            self._wake.clear()
            await self.probe_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)

    async def probe_all(self) -> None:
        refresh = self._rounds % self._refresh_every == 0
        self._rounds += 1
        await asyncio.gather(*(self.probe(node, refresh=refresh) for node in self._registry.nodes()))

    async def probe(self, node: Node, *, refresh: bool = False) -> None:
        if not await self._client.ready(node.url):
            if node.status is not NodeStatus.OFFLINE:
                log.warning("node %s is not ready: offline", node.node_id)
            self._registry.update(node.key, status=NodeStatus.OFFLINE, last_error="not ready")
            return
        changes: dict[str, object] = {}
        if refresh or node.status is not NodeStatus.ONLINE or not node.models:
            try:
                changes = await describe_node(self._client, node)
            except NodeCallError as exc:
                self._registry.update(node.key, status=NodeStatus.ERROR, last_error=exc.message)
                return
        if node.status is not NodeStatus.ONLINE:
            log.info("node %s is online", node.node_id)
        self._registry.update(node.key, status=NodeStatus.ONLINE, last_error=None, **changes)
