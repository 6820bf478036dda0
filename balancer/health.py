"""Active health: probe every node's v2 ready endpoint and learn what it serves.

A node that answers ready is described (server metadata for the binary extension and its id,
the repository index and each model's metadata) when it comes online and every
`refresh_every` probes after, so routing follows the models a node loads or drops. A node that
stops answering goes `offline` until it answers again. What a node advertises about its hardware
and labels goes to `on_labels` (the pool's `learn_labels`), for the `capability` strategy.

Active probes only say whether a node is up; whether its answers are good is passive health
(`balancer.outlier`, `balancer.breaker`), fed by real traffic through the pool's leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from discovery.node import ModelInfo, Node, NodeStatus
from discovery.registry import NodeAdded, NodeEvent, NodeRegistry, NodeRemoved
from worker.client import NodeClient
from worker.config import TensorSpec
from worker.errors import NodeCallError, NodeUnreachable
from worker.protocol.models import MetadataTensor, ModelMetadata

__all__ = ["HealthProber", "advertised_labels", "describe_node"]

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


def advertised_labels(server: Mapping[str, Any]) -> dict[str, str]:
    """What a node says about itself in `GET /v2` (`labels`: device, memory_mb, cpus, capacity, --label)."""
    labels = server.get("labels")
    if not isinstance(labels, dict):
        return {}
    return {str(k): str(v) for k, v in labels.items() if isinstance(v, str | int | float) and not isinstance(v, bool)}


async def describe_node(client: NodeClient, node: Node) -> dict[str, object]:
    """The registry fields a ready node's metadata gives: models, binary support, advertised id."""
    changes, _ = await _describe(client, node)
    return changes


async def _describe(client: NodeClient, node: Node) -> tuple[dict[str, object], dict[str, str]]:
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
    return changes, advertised_labels(server)


class HealthProber:
    def __init__(
        self,
        registry: NodeRegistry,
        client: NodeClient,
        *,
        interval_s: float,
        refresh_every: int = 10,
        on_labels: Callable[[str, Mapping[str, str]], None] | None = None,
        unhealthy_after: int = 3,
    ) -> None:
        self._registry = registry
        # A node busy with a big batch may miss one probe; only a run of misses takes it out.
        # A refused connection is different: nothing listens there, so it goes at once.
        self._unhealthy_after = unhealthy_after
        self._misses: dict[str, int] = {}
        self._on_labels = on_labels
        self._client = client
        self._interval = interval_s
        self._refresh_every = refresh_every
        self._rounds = 0
        self._completed = 0
        self._wake = asyncio.Event()
        registry.subscribe(self._on_event)

    def _on_event(self, event: NodeEvent) -> None:
        if isinstance(event, NodeAdded):
            self._wake.set()  # probe a new node now rather than at the next tick
        elif isinstance(event, NodeRemoved):
            self._misses.pop(event.node.key, None)  # churn (DNS, Consul) would grow it without end

    async def run(self) -> None:
        """A round every `interval_s`, and one at once when a node is added.

        The first round waits its interval when a round already ran (the lifespan probes once
        before serving): two rounds back to back gave nothing but a race with the first requests.
        """
        while True:
            if self._completed:
                # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancel that lands just as the
                # wait ends (a node added right before shutdown), and the lifespan would wait forever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
            await self.probe_all()

    async def probe_all(self) -> None:
        self._wake.clear()  # this round covers every node added so far
        refresh = self._rounds % self._refresh_every == 0
        self._rounds += 1
        await asyncio.gather(*(self.probe(node, refresh=refresh) for node in self._registry.nodes()))
        self._completed += 1  # a round cut short (the lifespan's has a deadline) is not one to wait after

    async def _models_changed(self, node: Node) -> bool:
        """One small call a round (the repository index), so routing follows a node that loads or
        drops a model within a probe interval; servers without the extension wait for `refresh`."""
        try:
            index = await self._client.repository_index(node.url)
        except NodeCallError:
            return True  # let the full description say what is wrong
        if index is None:
            return False
        # Names and versions: a model reloaded under a new version must not keep its old metadata
        # (and 404 for the new version) until the next full refresh.
        ready = {(entry.name, entry.version) for entry in index if entry.state in (None, "READY")}
        known = {(name, info.version) for name, info in node.advertised.items()}
        return {name for name, _ in ready} != set(node.advertised) or any(
            version is not None and (name, version) not in known for name, version in ready
        )

    async def probe(self, node: Node, *, refresh: bool = False) -> None:
        # `health` is what probes saw last; `status` may be an admin's hold, which probes never lift.
        try:
            await self._client.check_ready(node.url)
        except NodeCallError as exc:
            if self._registry.get(node.key) is None:
                return  # removed while the probe ran
            misses = self._misses[node.key] = self._misses.get(node.key, 0) + 1
            if isinstance(exc, NodeUnreachable) or misses >= self._unhealthy_after:
                if node.health is not NodeStatus.OFFLINE:
                    log.warning("node %s is not ready (%s): offline", node.node_id, exc.message)
                self._registry.update(node.key, status=NodeStatus.OFFLINE, last_error=exc.message)
            return
        self._misses.pop(node.key, None)
        changes: dict[str, object] = {}
        stale = refresh or node.health is not NodeStatus.ONLINE or not node.advertised
        if stale or await self._models_changed(node):
            try:
                changes, labels = await _describe(self._client, node)
            except NodeCallError as exc:
                self._registry.update(node.key, status=NodeStatus.ERROR, last_error=exc.message)
                return
            if self._on_labels is not None:
                self._on_labels(node.key, labels)
        if node.health is not NodeStatus.ONLINE:
            log.info("node %s is online", node.node_id)
        self._registry.update(node.key, status=NodeStatus.ONLINE, last_error=None, **changes)
