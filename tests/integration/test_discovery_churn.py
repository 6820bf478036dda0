"""Churn: nodes register, serve and leave (SIGTERM) or crash (SIGKILL) in a loop while traffic flows.

Two promises are checked on every request: none is sent to a node after the gateway saw that
node removed, and none fails while another healthy node serves the model.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.fakes.consul import FakeConsulThread
from discovery import NodeEvent, NodeRemoved
from gateway_plugin.processes import ServerProcess, start_node
from gateway_plugin.settings import DiscoverySettings
from tests.integration.conftest import mounted
from tests.integration.discovery_support import BODY, PREFIX, gateway_settings
from tests.integration.polling import until

CYCLES = 3
WORKERS = 4


async def test_nodes_come_and_go_under_load_without_a_failed_or_stray_request(repository: Path) -> None:
    fake = FakeConsulThread(min_deregister_s=0)
    consul_url = fake.start()
    service = f"distinfer-churn-{uuid.uuid4().hex[:8]}"

    def registered(node_id: str) -> ServerProcess:
        args = ["--models", "digits", "--consul-url", consul_url, "--consul-service", service]
        node = start_node(repository, node_id, extra_args=args)
        node.wait_ready()
        return node

    stable = await asyncio.to_thread(registered, "stable")
    discovery = DiscoverySettings(sources=["consul"], consul_url=consul_url, consul_service=service, consul_wait_s=30)
    loop = asyncio.get_running_loop()
    removed: dict[str, float] = {}
    picks: list[tuple[float, str]] = []
    outcomes: Counter[Any] = Counter()
    served: Counter[str] = Counter()
    try:
        async with mounted(gateway_settings(discovery)) as (client, distributed):

            def on_event(event: NodeEvent) -> None:
                if isinstance(event, NodeRemoved):
                    removed[event.node.key] = loop.time()

            distributed.registry.subscribe(on_event)
            pick = distributed.pool.pick

            def recording_pick(*args: Any, **kwargs: Any) -> Any:
                lease = pick(*args, **kwargs)
                if lease is not None:
                    picks.append((loop.time(), lease.node.key))
                return lease

            distributed.pool.pick = recording_pick  # type: ignore[method-assign]
            await until(lambda: distributed.registry.find("stable") is not None)
            done = asyncio.Event()

            async def traffic() -> None:
                while not done.is_set():
                    response = await client.post(f"{PREFIX}/inference", json=BODY)
                    outcomes[response.status_code] += 1
                    if response.status_code == 200:
                        served[response.json()["node_id"]] += 1
                    else:
                        outcomes[response.text[:200]] += 1

            workers = [asyncio.create_task(traffic()) for _ in range(WORKERS)]
            churned: list[ServerProcess] = []
            try:
                for cycle in range(CYCLES):
                    node = await asyncio.to_thread(registered, f"churn-{cycle}")
                    churned.append(node)
                    await until(lambda: served[node.name] >= 3, timeout_s=15)  # noqa: B023
                    if cycle % 2:
                        await asyncio.to_thread(node.kill)
                    else:
                        await asyncio.to_thread(node.stop)
                    await until(lambda: node.url in removed, timeout_s=15)  # noqa: B023
            finally:
                done.set()
                await asyncio.gather(*workers)
                for node in churned:
                    node.stop()
    finally:
        stable.stop()
        fake.stop()

    assert outcomes[200] > 50, outcomes
    assert set(outcomes) == {200}, outcomes  # not one request failed while `stable` served
    for node in churned:
        assert served[node.name] >= 3
        late = [t for t, key in picks if key == node.url and t > removed[node.url]]
        assert late == [], f"{node.name} was picked {len(late)} times after its removal was seen"
