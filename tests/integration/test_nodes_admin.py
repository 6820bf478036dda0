"""Managing nodes by hand (POST/PATCH/DELETE /nodes) in front of real node processes."""

from __future__ import annotations

import asyncio
from collections import Counter

from gateway_plugin.auth import INFER
from gateway_plugin.processes import ServerProcess
from gateway_plugin.settings import DiscoverySettings
from tests.integration.conftest import StartNodes, bearer, mounted
from tests.integration.discovery_support import BODY, PREFIX, gateway_settings, node_ids, served_by
from tests.integration.polling import until
from worker.errors import NodeServerError

JSON = {"Content-Type": "application/json"}


async def test_register_hold_filter_and_unregister_by_hand(two_nodes: list[ServerProcess]) -> None:
    a, b = two_nodes
    async with mounted(gateway_settings(DiscoverySettings(nodes=[b.url]))) as (client, _):
        created = await client.post(
            f"{PREFIX}/nodes", json={"url": a.url + "/", "node_id": "hand-a", "weight": 2, "labels": {"zone": "x"}}
        )
        assert created.status_code == 201, created.text
        assert created.headers["Location"].endswith(f"{PREFIX}/nodes/hand-a")
        body = created.json()
        assert (body["node_id"], body["source"], body["url"], body["weight"]) == ("hand-a", "manual", a.url, 2.0)
        assert body["labels"] == {"zone": "x"}
        await until(lambda: _statuses_are(client, {"hand-a": "online", "node-b": "online"}))
        assert Counter([await served_by(client) for _ in range(8)]).keys() == {"hand-a", "node-b"}

        # What cannot be done says why, in problem+json.
        for body_, status in [
            ({"url": a.url}, 409),  # already there
            ({"url": "http://127.0.0.1:1", "node_id": "node-b"}, 409),  # id taken
            ({"url": "ftp://x:1"}, 422),
            ({"url": "http://127.0.0.1:99999"}, 422),
            ({"url": "http://a b:80"}, 422),
            ({"url": "http://user:pw@127.0.0.1:1"}, 422),
            ({"url": a.url, "colour": "red"}, 422),
            ({"url": "http://x:1", "status": "error"}, 422),
        ]:
            refused = await client.post(f"{PREFIX}/nodes", json=body_)
            assert refused.status_code == status, (body_, refused.text)
            assert refused.headers["content-type"] == "application/problem+json"
        assert (await client.patch(f"{PREFIX}/nodes/nobody", json={"status": "offline"})).status_code == 404
        # Managing nodes needs the `admin` scope; `infer` reads them only.
        infer_only = bearer(INFER)
        assert (await client.post(f"{PREFIX}/nodes", json={"url": "http://x:1"}, headers=infer_only)).status_code == 403
        assert (await client.patch(f"{PREFIX}/nodes/hand-a", json={}, headers=infer_only)).status_code == 403
        assert (await client.delete(f"{PREFIX}/nodes/hand-a", headers=infer_only)).status_code == 403
        assert (await client.get(f"{PREFIX}/nodes", headers=infer_only)).status_code == 200
        assert (await client.patch(f"{PREFIX}/nodes/hand-a", json={"status": "error"})).status_code == 422
        assert (await client.patch(f"{PREFIX}/nodes/hand-a", content=b"{", headers=JSON)).status_code == 400

        # Offline by hand: nothing new is sent, and probes (every 0.2 s) do not bring it back.
        held = await client.patch(f"{PREFIX}/nodes/hand-a", json={"status": "offline"})
        assert held.json()["status"] == "offline"
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.2:
            assert await served_by(client) == "node-b"
        assert (await node_ids(client))["hand-a"] == "offline"
        assert (await client.patch(f"{PREFIX}/nodes/hand-a", json={"status": "online"})).json()["status"] == "online"
        await until(lambda: _reaches(client, "hand-a"))

        # Busy by hand holds it out too; a filter narrows the models routed to a node.
        await client.patch(f"{PREFIX}/nodes/node-b", json={"status": "busy"})
        assert {await served_by(client) for _ in range(5)} == {"hand-a"}
        await client.patch(f"{PREFIX}/nodes/node-b", json={"status": "online"})
        narrowed = await client.patch(f"{PREFIX}/nodes/hand-a", json={"models": ["digits_a"]})
        assert narrowed.json()["models"] == ["digits_a"]
        assert {await served_by(client) for _ in range(6)} == {"node-b"}
        assert "hand-a" in {await served_by(client, "digits_a") for _ in range(8)}
        widened = await client.patch(f"{PREFIX}/nodes/hand-a", json={"models": None})
        assert "digits" in widened.json()["models"]

        # DELETE removes a node registered by hand; a node another source lists is refused.
        kept = await client.delete(f"{PREFIX}/nodes/node-b")
        assert kept.status_code == 409
        assert "static" in kept.json()["detail"]
        assert (await client.delete(f"{PREFIX}/nodes/hand-a")).status_code == 204
        assert "hand-a" not in await node_ids(client)
        assert {await served_by(client) for _ in range(5)} == {"node-b"}
        assert (await client.delete(f"{PREFIX}/nodes/hand-a")).status_code == 404


async def _statuses_are(client: object, wanted: dict[str, str]) -> bool:
    return await node_ids(client) == wanted  # type: ignore[arg-type]


async def _reaches(client: object, node_id: str) -> bool:
    return node_id in {await served_by(client) for _ in range(4)}  # type: ignore[arg-type]


async def test_a_node_set_offline_by_hand_drains(start_nodes: StartNodes, two_nodes: list[ServerProcess]) -> None:
    (slow,) = start_nodes("slow-1", extra_args=["--models", "digits", "--fault-latency-ms", "1500"])
    b = two_nodes[1]
    async with mounted(gateway_settings(DiscoverySettings(nodes=[slow.url, b.url]))) as (client, distributed):
        await until(lambda: _statuses_are(client, {"slow-1": "online", "node-b": "online"}))
        await client.patch(f"{PREFIX}/nodes/node-b", json={"status": "busy"})  # so the slow one gets it
        in_flight = asyncio.create_task(client.post(f"{PREFIX}/inference", json=BODY))
        await until(lambda: distributed.pool.in_flight(slow.url) == 1, timeout_s=5)
        held = await client.patch(f"{PREFIX}/nodes/slow-1", json={"status": "offline"})
        assert held.json()["status"] == "offline"
        assert held.json()["in_flight"] == 1
        await client.patch(f"{PREFIX}/nodes/node-b", json={"status": "online"})
        assert {await served_by(client) for _ in range(5)} == {"node-b"}  # nothing new for the drained node
        finished = await in_flight
        assert finished.status_code == 200
        assert finished.json()["node_id"] == "slow-1"  # the one in flight finished where it was
        assert distributed.pool.in_flight(slow.url) == 0


async def test_post_and_patch_answer_the_status_get_shows(two_nodes: list[ServerProcess]) -> None:
    a, b = two_nodes
    async with mounted(gateway_settings(DiscoverySettings(nodes=[b.url]))) as (client, distributed):
        await until(lambda: _statuses_are(client, {"node-b": "online"}))
        pool = distributed.pool
        while pool.breaker(b.url).state.value != "open":  # failures until it opens; probes still say online
            lease = pool.pick("digits")
            assert lease is not None
            lease.report(0.001, NodeServerError("boom", node_url=b.url, status=500))
            lease.done()
        listed = (await node_ids(client))["node-b"]
        assert listed == "error"
        patched = await client.patch(f"{PREFIX}/nodes/node-b", json={"models": None})
        assert patched.json()["status"] == listed  # not the probe's "online"
        assert patched.json()["breaker"] == "open"
        created = await client.post(f"{PREFIX}/nodes", json={"url": a.url, "node_id": "hand-a", "status": "busy"})
        assert created.json()["status"] == "busy"
