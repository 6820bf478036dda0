"""The discovery sources `DISTINFER_DISCOVERY` asks for, built from settings and run by the lifespan.

`static` is `DISTINFER_NODES` and/or `DISTINFER_NODES_FILE`; `consul` watches
`DISTINFER_CONSUL_SERVICE` at `DISTINFER_CONSUL_URL`; `dns` follows `DISTINFER_DNS_SRV`. They
combine: each lists its own nodes in the one registry. The admin API (`POST /nodes`) adds a
`manual` share on top, whatever the settings say.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from discovery import ConsulSource, DnsSrvSource, NodeRegistry, NodesFileSource, Source, StaticSource
from gateway_plugin.settings import DiscoverySettings

__all__ = ["build_sources", "cancel_tasks", "wait_synced"]

log = logging.getLogger(__name__)


def build_sources(settings: DiscoverySettings) -> list[Source]:
    sources: list[Source] = []
    if "static" in settings.sources:
        if settings.nodes or settings.nodes_file is None:
            sources.append(StaticSource(settings.nodes))
        if settings.nodes_file is not None:
            sources.append(NodesFileSource(settings.nodes_file))
    if "consul" in settings.sources:
        token = settings.consul_token.get_secret_value() if settings.consul_token else None
        sources.append(
            ConsulSource(
                settings.consul_url,
                service=settings.consul_service,
                token=token,
                datacenter=settings.consul_dc,
                wait_s=settings.consul_wait_s,
            )
        )
    if "dns" in settings.sources and settings.dns_srv:
        sources.append(DnsSrvSource(settings.dns_srv, nameserver=settings.dns_nameserver))
    return sources


async def wait_synced(sources: Sequence[Source], registry: NodeRegistry, timeout_s: float) -> None:
    """Wait (at most `timeout_s`) for every source's first listing, so the first request knows the nodes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*(source.synced.wait() for source in sources))
            return
    late = [source.name for source in sources if not source.synced.is_set()]
    log.warning("discovery %s not listed within %.1fs; serving with %d nodes", late, timeout_s, len(registry.nodes()))


async def cancel_tasks(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
