"""`LegacyInferenceMiddleware` in "an existing service", against real node processes (CONTRACT §2, §3)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway_plugin import DistributedInference
from gateway_plugin.auth import ADMIN, INFER
from gateway_plugin.processes import ServerProcess, free_port
from gateway_plugin.settings import FlagSettings, LimitSettings
from tests.integration.conftest import STARTUP_TIMEOUT_S, StartNodes, bearer, settings_for
from tests.integration.legacy_service import existing_service, serving

PREFIX = "/api/v1/distributed"
IMAGE = (np.arange(64, dtype=np.float32).reshape(8, 8) / 64).round(3).tolist()
BODY = json.dumps({"model": "digits", "inputs": IMAGE}).encode()
JSON = {"Content-Type": "application/json"}
CALLER = bearer()  # one token for the module: the flag-off test compares the handler's headers byte for byte


@asynccontextmanager
async def client_for(app: FastAPI, headers: dict[str, str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the service; it sends a valid `infer` token unless `headers` says otherwise."""
    async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT_S) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        sent = CALLER if headers is None else headers
        async with httpx.AsyncClient(transport=transport, base_url="http://service", headers=sent) as client:
            yield client


async def plain_answer() -> tuple[httpx.Response, list[Any]]:
    app, _, seen = existing_service(None)
    async with client_for(app) as client:
        response = await client.post("/api/inference", content=BODY, headers={**JSON, "X-Trace": "1"})
    return response, seen.requests


async def test_flag_off_the_handler_sees_the_same_request_and_the_client_the_same_bytes(
    two_nodes: list[ServerProcess],
) -> None:
    before, seen_before = await plain_answer()
    app, _, seen = existing_service(settings_for([n.url for n in two_nodes], enabled=False))
    async with client_for(app) as client:
        after = await client.post("/api/inference", content=BODY, headers={**JSON, "X-Trace": "1"})
    assert before.status_code == after.status_code == 200
    assert before.headers.raw == after.headers.raw
    assert before.content == after.content
    assert seen.requests == seen_before  # the same headers, in order, and the same body bytes


async def test_a_node_id_a_header_cannot_carry_is_percent_encoded_as_on_every_route(
    start_nodes: StartNodes,
) -> None:
    """Regression (review): the legacy path sent the id's UTF-8 bytes as they were (a comma in an id
    split the header's list); every other route percent-encodes it."""
    (node,) = start_nodes("nœud a,b")
    app, _, _ = existing_service(settings_for([node.url]))
    async with client_for(app) as client:
        response = await client.post("/api/inference", content=BODY, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.headers["X-Inference-Mode"] == "distributed"
    assert response.headers["X-Inference-Node"] == "n%C5%93ud%20a%2Cb"


async def test_flag_on_the_cluster_answers_in_the_endpoints_shape(two_nodes: list[ServerProcess]) -> None:
    local, _ = await plain_answer()
    app, _, seen = existing_service(settings_for([n.url for n in two_nodes]))
    async with client_for(app) as client:
        response = await client.post("/api/inference", content=BODY, headers=JSON)
        hello = await client.get("/hello")
    assert response.status_code == 200, response.text
    assert response.headers["X-Inference-Mode"] == "distributed"
    assert response.headers["X-Inference-Node"] in {"node-a", "node-b"}
    assert seen.requests == []  # the original handler did not run
    got, expected = response.json(), local.json()
    assert got.keys() == expected.keys()
    assert got["model"] == expected["model"]
    assert [o["shape"] for o in got["outputs"]] == [o["shape"] for o in expected["outputs"]]
    np.testing.assert_allclose(got["outputs"][0]["data"], expected["outputs"][0]["data"], atol=1e-4)
    assert hello.json() == {"hello": "world"}  # the service's own auth-free routes are untouched


async def test_cluster_unable_to_serve_falls_back_through_the_original_handler() -> None:
    local, _ = await plain_answer()
    dead = f"http://127.0.0.1:{free_port()}"
    app, _, seen = existing_service(settings_for([dead]))
    async with client_for(app) as client:
        response = await client.post("/api/inference", content=BODY, headers=JSON)
        declined = await client.post("/api/inference", json={"inputs": IMAGE})  # no model: the adapter declines
    assert response.status_code == 200
    assert response.headers["X-Inference-Mode"] == "local-fallback"
    assert response.headers["X-Served-By"] == "legacy-handler"
    assert response.content == local.content  # exactly what the service answers on its own
    assert len(seen.requests) == 2
    assert seen.requests[0][1] == BODY
    assert declined.status_code == 200
    assert declined.headers["X-Inference-Mode"] == "local-fallback"


async def test_a_saturated_gateway_serves_legacy_requests_through_the_original_handler(
    two_nodes: list[ServerProcess],
) -> None:
    """Regression: the legacy path took no admission place: DISTINFER_MAX_INFLIGHT did not bound the
    cluster work it started. Saturated, it is the host's own handler that answers, as before distinfer."""
    settings = settings_for([n.url for n in two_nodes], limits=LimitSettings(max_inflight=1))
    app, distributed, seen = existing_service(settings)
    assert distributed is not None
    async with client_for(app) as client:
        svc = await distributed.services()
        assert svc.admission is not None
        svc.admission.enter()  # the one place is taken (a request in flight)
        try:
            response = await client.post("/api/inference", content=BODY, headers=JSON)
        finally:
            svc.admission.leave()
        served = await client.post("/api/inference", content=BODY, headers=JSON)
    assert response.status_code == 200
    assert response.headers["X-Inference-Mode"] == "local-fallback"
    assert response.headers["X-Served-By"] == "legacy-handler"
    assert len(seen.requests) == 1
    assert served.headers["X-Inference-Mode"] == "distributed"  # with a place free, the cluster again
    assert svc.admission.in_flight == 0


async def test_a_body_over_the_plugins_limit_reaches_the_original_handler_whole() -> None:
    """Regression: the body's last chunk was replayed as if more were coming, so a body just over
    the limit in one chunk left the original handler waiting for the rest forever."""
    app, _, seen = existing_service(settings_for([], limits=LimitSettings(max_body_bytes=1000)))
    big = json.dumps({"model": "digits", "inputs": IMAGE, "pad": "x" * 1200}).encode()
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:  # real uvicorn
        response = await client.post("/api/inference", content=big, headers={**JSON, **CALLER})
    assert response.status_code == 200, response.text
    assert response.headers["X-Inference-Mode"] == "local-fallback"
    assert seen.requests[-1][1] == big  # the handler read the whole body, as sent


async def _mode_of(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    response = await client.post("/api/inference", content=BODY, headers={**JSON, **headers})
    assert response.status_code == 200, response.text
    return response.headers.get("X-Inference-Mode", "legacy")


async def test_rollout_is_sticky_per_caller_and_changes_at_runtime(two_nodes: list[ServerProcess]) -> None:
    settings = settings_for([n.url for n in two_nodes])
    settings.flags = FlagSettings(enabled=True, rollout_percent=50)
    app, distributed, _ = existing_service(settings)
    admin = bearer(INFER, ADMIN, sub="ops")
    async with client_for(app, headers={}) as client:
        modes: dict[str, str] = {}
        for i in range(24):
            caller = bearer(sub=f"user-{i}")
            first, second = await _mode_of(client, caller), await _mode_of(client, caller)
            assert first == second  # sticky
            modes[f"user-{i}"] = first
        share = sum(mode == "distributed" for mode in modes.values()) / len(modes)
        assert 0.15 < share < 0.85, modes
        # No token: the host's own handler (and its own auth) answers; see the test below.
        assert {await _mode_of(client, {}) for _ in range(3)} == {"legacy"}

        # Runtime changes, no restart: 0 %, 100 %, off, and back on while everything else is 404.
        assert (await client.put(f"{PREFIX}/flags", json={"rollout_percent": 0}, headers=admin)).status_code == 200
        assert {await _mode_of(client, bearer(sub=f"user-{i}")) for i in range(6)} == {"legacy"}
        assert (await client.put(f"{PREFIX}/flags", json={"rollout_percent": 100}, headers=admin)).status_code == 200
        assert {await _mode_of(client, bearer(sub=f"user-{i}")) for i in range(6)} == {"distributed"}
        off = await client.put(f"{PREFIX}/flags", json={"enabled": False}, headers=admin)
        assert off.json() == {"enabled": False, "rollout_percent": 100.0, "mode": "serve", "source": "settings"}
        assert await _mode_of(client, admin) == "legacy"
        assert (await client.get(f"{PREFIX}/nodes", headers=admin)).status_code == 404
        assert (await client.get(f"{PREFIX}/flags", headers=admin)).json()["enabled"] is False
        assert (await client.put(f"{PREFIX}/flags", json={"enabled": True}, headers=admin)).status_code == 200
        assert (await client.get(f"{PREFIX}/nodes", headers=admin)).status_code == 200
        assert await _mode_of(client, admin) == "distributed"

        # Changing flags needs admin; reading them needs infer.
        infer_only = bearer(INFER, sub="someone")
        assert (await client.put(f"{PREFIX}/flags", json={"enabled": False}, headers=infer_only)).status_code == 403
        assert (await client.put(f"{PREFIX}/flags", json={"enabled": False})).status_code == 401
        assert (await client.get(f"{PREFIX}/flags", headers=infer_only)).status_code == 200
        bad = await client.put(f"{PREFIX}/flags", json={"rollout_percent": 150}, headers=admin)
        assert bad.status_code == 422
    assert distributed is not None
    assert distributed.flags.current().enabled


async def test_only_callers_the_plugins_auth_admits_are_served_by_the_cluster(two_nodes: list[ServerProcess]) -> None:
    """Regression (audit): with the flag on, the middleware answered from the cluster whoever called:
    the host's own auth never ran, and neither did the plugin's. A caller without a verified `infer`
    token now reaches the host's handler, which refuses it as it always did."""
    urls = [n.url for n in two_nodes]
    app, _, seen = existing_service(settings_for(urls), api_key="host-key")
    forged = bearer(secret="not-the-gateways-secret-but-long-enough-0123456789")
    async with client_for(app, headers={}) as client:
        for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, forged, bearer("reports")):  # no `infer`
            refused = await client.post("/api/inference", content=BODY, headers={**JSON, **headers})
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.json() == {"detail": "the host's own auth refused"}
            assert "X-Inference-Mode" not in refused.headers
        served = await client.post("/api/inference", content=BODY, headers={**JSON, **bearer()})
        assert served.status_code == 200, served.text
        assert served.headers["X-Inference-Mode"] == "distributed"
    assert seen.requests == []

    async def open_endpoint(scope: Any) -> bool:
        return True  # an endpoint open to all: the host says so

    settings = settings_for(urls)
    settings.flags = FlagSettings(enabled=True, rollout_percent=50)
    app, _, _ = existing_service(settings, authorize=open_endpoint)
    async with client_for(app, headers={}) as client:
        # Without a token the client address picks the rollout bucket, stickily.
        assert len({await _mode_of(client, {}) for _ in range(3)}) == 1


async def _wait_compared(distributed: DistributedInference, count: int) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            snap = distributed.shadow.snapshot()
            if snap["compared"] + snap["cluster_errors"] >= count:
                return snap
            await asyncio.sleep(0.02)


async def test_shadow_mode_answers_as_before_and_compares_in_the_background(two_nodes: list[ServerProcess]) -> None:
    local, _ = await plain_answer()
    for weights, agree in (("digits", True), ("digits_b", False)):
        settings = settings_for([n.url for n in two_nodes])
        settings.flags = FlagSettings(enabled=True, mode="shadow")
        app, distributed, seen = existing_service(settings, weights=weights)
        assert distributed is not None
        async with client_for(app) as client:
            responses = [await client.post("/api/inference", content=BODY, headers=JSON) for _ in range(4)]
            snap = await _wait_compared(distributed, 4)
            health = (await client.get("/health")).json()
            stats = (await client.get(f"{PREFIX}/stats", headers=bearer())).json()
            metrics = (await client.get("/metrics")).text
        assert len(seen.requests) == 4  # the original handler answered every request
        for response in responses:
            assert response.status_code == 200
            assert "X-Inference-Mode" not in response.headers
            if agree:
                assert response.content == local.content
        if agree:
            assert (snap["compared"], snap["matched"], snap["diverged"]) == (4, 4, 0)
        else:  # the service runs other weights than the cluster: the operator sees it before switching
            assert snap["diverged"] == 4
            assert "logits: values differ" in snap["recent_divergences"][0]["detail"]
        assert snap["latency_ms"]["cluster"]["p50"] is not None
        assert health["cluster"]["legacy"]["compared"] == 4
        assert stats["shadow"]["compared"] == 4
        # Shadow copies are not the cluster's requests (regression, audit: they filled /stats and
        # the request metrics as if the cluster had served them).
        assert (stats["latency"]["samples"], stats["recent"]) == (0, [])
        served = [
            sample.value
            for family in text_string_to_metric_families(metrics)
            if family.name == "distinfer_gateway_requests"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels.get("model") == "digits"
        ]
        assert sum(served) == 0
        assert health["cluster"]["nodes"]["online"] == 2
        assert health["cluster"]["flags"]["mode"] == "shadow"


async def test_shadow_copies_take_no_admission_place(two_nodes: list[ServerProcess]) -> None:
    """Regression: shadow copies went through `distributed.infer()` with its admission place: with the
    gateway saturated they were recorded as cluster failures, and in flight they took places from
    real plugin traffic (429s)."""
    settings = settings_for([n.url for n in two_nodes], limits=LimitSettings(max_inflight=1))
    settings.flags = FlagSettings(enabled=True, mode="shadow")
    app, distributed, _ = existing_service(settings)
    assert distributed is not None
    async with client_for(app) as client:
        svc = await distributed.services()
        assert svc.admission is not None
        svc.admission.enter()  # real traffic holds the one place
        try:
            response = await client.post("/api/inference", content=BODY, headers=JSON)
            snap = await _wait_compared(distributed, 1)
        finally:
            svc.admission.leave()
    assert response.status_code == 200
    assert (snap["compared"], snap["cluster_errors"]) == (1, 0)


async def test_shadow_mode_with_a_dead_cluster_never_touches_the_real_answer() -> None:
    local, _ = await plain_answer()
    settings = settings_for([f"http://127.0.0.1:{free_port()}"])
    settings.flags = FlagSettings(enabled=True, mode="shadow")
    app, distributed, _ = existing_service(settings)
    assert distributed is not None
    async with client_for(app) as client:
        response = await client.post("/api/inference", content=BODY, headers=JSON)
        snap = await _wait_compared(distributed, 1)
    assert response.content == local.content
    assert snap["cluster_errors"] == 1
    assert snap["compared"] == 0
    assert snap["recent_divergences"][0]["detail"].startswith("cluster failed: ")
