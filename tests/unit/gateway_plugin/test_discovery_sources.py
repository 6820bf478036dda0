"""DISTINFER_DISCOVERY builds the sources it names, combined, with their settings."""

from __future__ import annotations

import asyncio
from pathlib import Path

from discovery import ConsulSource, DnsSrvSource, NodeRegistry, NodesFileSource, StaticSource
from gateway_plugin.settings import DiscoverySettings
from gateway_plugin.sources import build_sources, wait_synced


def kinds(settings: DiscoverySettings) -> list[type]:
    return [type(source) for source in build_sources(settings)]


def test_each_name_builds_its_sources(tmp_path: Path) -> None:
    assert kinds(DiscoverySettings()) == [StaticSource]
    assert kinds(DiscoverySettings(nodes=["http://a:1"], nodes_file=tmp_path / "n.yaml")) == [
        StaticSource,
        NodesFileSource,
    ]
    assert kinds(DiscoverySettings(nodes_file=tmp_path / "n.yaml")) == [NodesFileSource]
    combined = DiscoverySettings(
        sources=["static", "consul", "dns"], nodes=["http://a:1"], dns_srv="_x._tcp.example", dns_nameserver="[::1]:53"
    )
    assert kinds(combined) == [StaticSource, ConsulSource, DnsSrvSource]
    assert kinds(DiscoverySettings(sources=["consul"], consul_token="t")) == [ConsulSource]  # type: ignore[arg-type]


async def test_the_lifespan_waits_for_first_listings_but_not_forever() -> None:
    registry = NodeRegistry()
    listed = StaticSource(["http://a:1"])
    never = NodesFileSource(Path("/nonexistent/never-polled.yaml"))  # not run: never synced
    await listed.run(registry)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_synced([listed, never], registry, timeout_s=0.2)
    assert 0.15 < loop.time() - started < 2.0
    await wait_synced([listed], registry, timeout_s=5)  # already synced: at once
    assert loop.time() - started < 2.0
