"""Consul discovery: a blocking-query watch of the passing instances of one service.

    GET /v1/health/service/<service>?passing=1&index=<X-Consul-Index>&wait=<wait>s

The query hangs until the service's instances or their checks change (or `wait` runs out) and
answers the new `X-Consul-Index`. Following Consul's "Blocking Queries" notes: an index that goes
backwards (a restored or restarted server) is reset to 0, so the next query answers at once; an
index that is not above 0 is raised to 1, so the next query really blocks; a return is no proof of
a change, so the registry is only reset when the listing differs; quick returns that change nothing
are rate-limited to one per `min_interval_s`, and errors back off with jitter while the last good
listing stays in force.

Each instance becomes a node at `<scheme>://<Service.Address or Node.Address>:<Service.Port>`;
its id, models, runtime, device and memory come from the service's `Meta` (and `key=value`
tags), as `distinfer node --consul-url` registers them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from consul import ConsulException

from discovery.node import NodeSpec
from discovery.registry import NodeRegistry
from discovery.source import Backoff
from worker.consul_http import ConsulClient, consul_address

__all__ = ["ConsulSource", "next_index", "spec_from_entry"]

log = logging.getLogger(__name__)

_LABEL_META = ("models", "runtime", "device", "memory", "version")


def next_index(previous: int, returned: int) -> int:
    """The index to block on next, by Consul's reset rules."""
    if returned < previous:
        return 0  # went backwards: start over with a non-blocking read
    return max(returned, 1)  # 0 (or less) would return at once forever


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def spec_from_entry(entry: Mapping[str, Any]) -> NodeSpec:
    """A node spec from one `/v1/health/service` entry; ValueError when it names no usable address."""
    service = entry.get("Service") or {}
    node = entry.get("Node") or {}
    if not isinstance(service, Mapping) or not isinstance(node, Mapping):
        raise ValueError("entry without Service/Node objects")
    address = _text(service.get("Address")) or _text(node.get("Address"))
    port = service.get("Port")
    if address is None or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"service {service.get('ID')!r} has no address and port")
    meta = {str(k): str(v) for k, v in (service.get("Meta") or {}).items()}
    scheme = meta.get("scheme", "http")
    host = f"[{address}]" if ":" in address else address
    labels: dict[str, str] = {}
    for tag in service.get("Tags") or []:
        key, sep, value = tag.partition("=") if isinstance(tag, str) else ("", "", "")
        if sep and key != "model":  # one `model=` tag per model; Meta["models"] lists them all
            labels.setdefault(key, value)
    labels.update({key: meta[key] for key in _LABEL_META if key in meta})
    labels["consul_service_id"] = str(service.get("ID", ""))
    if _text(node.get("Node")):
        labels["consul_node"] = str(node["Node"])
    if _text(node.get("Datacenter")):
        labels["datacenter"] = str(node["Datacenter"])
    weight = 1.0
    weights = service.get("Weights")
    if isinstance(weights, Mapping) and isinstance(weights.get("Passing"), int | float):
        weight = float(weights["Passing"])
    return NodeSpec(
        url=f"{scheme}://{host}:{port}",
        node_id=meta.get("node_id") or _text(service.get("ID")),
        weight=weight,
        labels=labels,
    )


class ConsulSource:
    name = "consul"

    def __init__(
        self,
        url: str,
        *,
        service: str = "distinfer-node",
        token: str | None = None,
        datacenter: str | None = None,
        wait_s: float = 60.0,
        min_interval_s: float = 0.05,
        backoff: Backoff | None = None,
    ) -> None:
        consul_address(url)  # a bad URL fails when the gateway is built, not in the watch
        self._url = url
        self._service = service
        self._token = token
        self._dc = datacenter
        self._wait_s = wait_s
        self._min_interval = min_interval_s
        self._backoff = backoff or Backoff(base_s=0.2, cap_s=10.0)
        self.synced = asyncio.Event()
        self.index = 0  # the index the next query blocks on (visible for tests and /stats)

    async def run(self, registry: NodeRegistry) -> None:
        # Consul adds up to wait/16 of jitter before answering; allow for it and a slow network.
        read_timeout = self._wait_s * 17 / 16 + 5
        client = ConsulClient(self._url, token=self._token, dc=self._dc, read_timeout_s=read_timeout)
        try:
            await self._watch(client, registry)
        finally:
            await client.close()

    async def _query(self, client: ConsulClient) -> tuple[int, list[NodeSpec]]:
        raw_index, entries = await client.health.service(
            self._service, index=self.index or None, wait=f"{self._wait_s:g}s", passing=True, token=self._token
        )
        try:
            returned = int(raw_index)
        except (TypeError, ValueError) as exc:
            raise ConsulException(f"bad X-Consul-Index {raw_index!r}") from exc
        if not isinstance(entries, list):  # a proxy's or another API's JSON: no listing, keep the last
            raise ConsulException(f"the answer is not a list of instances: {type(entries).__name__}")
        specs: dict[str, NodeSpec] = {}
        for entry in entries:
            try:
                if not isinstance(entry, Mapping):
                    raise ValueError(f"an entry that is not an object: {entry!r:.80}")
                spec = spec_from_entry(entry)
            except ValueError as exc:
                log.warning("consul: skipping an instance of %s: %s", self._service, exc)
                continue
            specs.setdefault(spec.url, spec)
        return returned, list(specs.values())

    async def _watch(self, client: ConsulClient, registry: NodeRegistry) -> None:
        loop = asyncio.get_running_loop()
        listed: list[NodeSpec] | None = None
        while True:
            started = loop.time()
            try:
                returned, specs = await self._query(client)
            except Exception as exc:  # the watch must outlive any one answer (a proxy's
                # non-UTF-8 error page raised UnicodeDecodeError, and ended discovery for good)
                expected = isinstance(exc, ConsulException | aiohttp.ClientError | TimeoutError | ValueError)
                delay = self._backoff.next_delay()
                log.warning(
                    "consul %s: %s: %s; retrying in %.2fs",
                    self._url,
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=None if expected else exc,
                )
                # Whatever index the old answers had, a restarted server counts from 1 again: ask
                # without blocking first (else its new listing waited out a whole `wait`).
                self.index = 0
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()
            if returned < self.index:
                log.warning("consul index went back from %d to %d: starting the watch over", self.index, returned)
            self.index = next_index(self.index, returned)
            changed = specs != listed
            if changed:
                listed = specs
                registry.reset(self.name, specs)
            self.synced.set()
            spent = loop.time() - started
            if not changed and spent < self._min_interval:
                # A quick return that changed nothing (an idempotent write, check output churn):
                # slow down, as Consul asks. A real change is followed at once.
                await asyncio.sleep(self._min_interval - spent)
