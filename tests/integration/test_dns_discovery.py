"""DNS SRV discovery against a real dnsmasq on a loopback port; the tests rewrite its records.

dnsmasq comes from Debian (`make setup` installs `dnsmasq-base` when it is missing). Each test
runs its own instance with its own config file on a free port and never touches the system's.
Records carry TTL 1 (`local-ttl`), so the gateway re-resolves every second.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.dnsmasq import SRV_NAME as SRV
from bench.dnsmasq import Dnsmasq, find_dnsmasq
from discovery.dns import DnsSrvSource
from gateway_plugin.processes import ServerProcess
from gateway_plugin.settings import DiscoverySettings
from tests.integration.conftest import mounted
from tests.integration.discovery_support import BODY, PREFIX, gateway_settings, served_by
from tests.integration.polling import until


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    if find_dnsmasq() is None:
        pytest.skip("dnsmasq is not installed: `make setup` installs dnsmasq-base (apt-get)")
    server = Dnsmasq(tmp_path)
    yield server
    server.stop()


def port_of(node: ServerProcess) -> int:
    port = urlsplit(node.url).port
    assert port is not None
    return port


async def test_routing_follows_the_srv_records(dnsmasq: Dnsmasq, two_nodes: list[ServerProcess]) -> None:
    a, b = two_nodes
    dnsmasq.serve({"a": port_of(a)})
    discovery = DiscoverySettings(sources=["dns"], dns_srv=SRV, dns_nameserver=f"127.0.0.1:{dnsmasq.port}")
    async with mounted(gateway_settings(discovery)) as (client, distributed):
        assert {await served_by(client) for _ in range(5)} == {"node-a"}
        node = distributed.registry.nodes()[0]
        assert node.source == "dns"
        assert node.spec.labels["srv_target"] == "a.nodes.test"

        dnsmasq.serve({"b": port_of(b)})
        moved = await until(lambda: [n.node_id for n in distributed.registry.nodes()] == ["node-b"], timeout_s=5)
        assert moved < 3.0  # TTL 1 s, then one resolution
        await until(lambda: served_by(client), timeout_s=5)
        assert {await served_by(client) for _ in range(5)} == {"node-b"}

        dnsmasq.serve({"a": port_of(a), "b": port_of(b)})
        seen: set[str | None] = set()

        async def both() -> bool:
            seen.add(await served_by(client))
            return {"node-a", "node-b"} <= seen

        await until(both, timeout_s=5)

        dnsmasq.stop()  # the DNS server goes away: the last listing stays
        started = time.monotonic()
        while time.monotonic() - started < 1.5:
            assert await served_by(client) in {"node-a", "node-b"}
        dnsmasq.serve({})  # now it says there are none
        await until(lambda: distributed.registry.nodes() == [], timeout_s=5)
        response = await client.post(f"{PREFIX}/inference", json=BODY)
        assert response.status_code == 503


async def test_a_record_no_client_can_reach_is_skipped_not_fatal(
    dnsmasq: Dnsmasq, two_nodes: list[ServerProcess]
) -> None:
    """Port 0 (RFC 2782: not offered there) makes no node URL; the other records still count."""
    a, _ = two_nodes
    dnsmasq.serve({"a": port_of(a), "z": 0})
    discovery = DiscoverySettings(sources=["dns"], dns_srv=SRV, dns_nameserver=f"127.0.0.1:{dnsmasq.port}")
    async with mounted(gateway_settings(discovery)) as (client, distributed):
        assert [node.node_id for node in distributed.registry.nodes()] == ["node-a"]
        assert {await served_by(client) for _ in range(3)} == {"node-a"}


async def test_a_target_whose_lookup_fails_keeps_its_addresses_and_the_rest_are_followed(
    dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: one SRV target whose A lookup failed (SERVFAIL) failed the whole round, so the
    listing froze: nodes added or removed meanwhile were never seen."""
    source = DnsSrvSource(SRV, nameserver=dnsmasq.nameserver, timeout_s=1.0)
    dnsmasq.serve({"a": 9001, "b.elsewhere.test": 9002})
    first, _ = await source.resolve()
    assert sorted(spec.url for spec in first) == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    # a leaves, c joins, and b's own lookup now fails: b keeps its last address, the rest is followed.
    dnsmasq.serve({"b.elsewhere.test": 9002, "c": 9003}, failing={"b.elsewhere.test"})
    with caplog.at_level(logging.WARNING, logger="discovery.dns"):
        for _ in range(3):
            second, ttl = await source.resolve()
            assert sorted(spec.url for spec in second) == ["http://127.0.0.1:9002", "http://127.0.0.1:9003"]
            assert ttl <= 1.0
    # Said once as it starts failing, not on every round (a round every TTL).
    assert [r.getMessage().split(":")[1] for r in caplog.records] == [" addresses of b.elsewhere.test."]


async def test_backup_priorities_serve_when_the_first_has_no_address(dnsmasq: Dnsmasq) -> None:
    """RFC 2782: a higher priority is a backup; it was ignored even when the lowest gave no address."""
    source = DnsSrvSource(SRV, nameserver=dnsmasq.nameserver, timeout_s=1.0)
    dnsmasq.serve(
        {"gone.elsewhere.test": 9001, "backup": 9002},
        failing={"gone.elsewhere.test"},
        priorities={"backup": 20},
    )
    specs, _ = await source.resolve()
    assert [spec.url for spec in specs] == ["http://127.0.0.1:9002"]
    dnsmasq.serve({"first": 9001, "backup": 9002}, priorities={"backup": 20})
    specs, _ = await source.resolve()
    assert [spec.url for spec in specs] == ["http://127.0.0.1:9001"]  # a backup only while needed
