"""Paths under the prefix that nothing serves: a problem+json 404, without taking what others serve.

Regression: such a request fell through to the host's default 404 (`{"detail": "Not Found"}`,
application/json), the one error of ours that was not problem+json (CONTRACT §5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from gateway_plugin.auth import ADMIN, INFER
from gateway_plugin.plugin import DistributedInference
from tests.integration.conftest import STARTUP_TIMEOUT_S, bearer, mounted, settings_for

PREFIX = "/api/v1/distributed"


async def test_an_unknown_path_under_the_prefix_is_a_problem_json_404() -> None:
    async with mounted(settings_for([])) as (client, _):
        for method, path in [("GET", "/nope"), ("POST", "/v2/models/digits/infer/extra"), ("DELETE", "/a/b/c")]:
            response = await client.request(method, PREFIX + path, headers={"X-Request-ID": "lost-1"})
            assert response.status_code == 404, (method, path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            body = response.json()
            assert (body["status"], body["request_id"], body["title"]) == (404, "lost-1", "Not found")
            assert f"{method} {PREFIX}{path}" in body["detail"]
            assert response.headers["X-Request-ID"] == "lost-1"


@asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=STARTUP_TIMEOUT_S) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://h", headers=bearer(INFER, ADMIN)) as client:
            yield client


async def test_known_paths_keep_their_405_and_slash_redirects() -> None:
    """The catch-all is tried last: a path another route serves with another method or slash is not its."""
    async with mounted(settings_for([])) as (client, _):
        wrong_method = await client.get(f"{PREFIX}/inference")
        assert wrong_method.status_code == 405
        assert wrong_method.headers["allow"] == "POST"
        for slashes in ("/", "//"):
            redirected = await client.get(f"{PREFIX}/health{slashes}")
            assert redirected.status_code == 307
            assert redirected.headers["location"].endswith(f"{PREFIX}/health")
        assert (await client.get(f"{PREFIX}/health")).status_code == 200
        bare = await client.get(PREFIX)  # not under the prefix: the host's 404, no redirect to ours
        assert bare.status_code == 404
        assert bare.headers["content-type"] == "application/json"


async def test_in_a_mounted_sub_app_405s_and_the_sub_apps_own_routes_stay() -> None:
    """Regression (review): a catch-all that looked for its siblings in the outermost router took a
    mounted sub-app's 405s, slash redirects and routes for 404s."""
    inner = FastAPI()
    inner.include_router(DistributedInference(settings=settings_for([])).router)

    @inner.get(f"{PREFIX}/host-extra")
    async def host_extra() -> dict[str, str]:
        return {"served": "host"}

    outer = FastAPI()
    outer.mount("/gw", inner)
    async with _client(outer) as client:
        assert (await client.get(f"/gw{PREFIX}/inference")).status_code == 405
        assert (await client.get(f"/gw{PREFIX}/health/")).status_code == 307
        assert (await client.get(f"/gw{PREFIX}/host-extra")).json() == {"served": "host"}
        unknown = await client.get(f"/gw{PREFIX}/nope")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"


async def test_a_frontend_the_host_serves_under_the_prefix_stays_served(tmp_path: Path) -> None:
    """Regression (review): a host's `frontend()` files under the prefix were answered 404 by the catch-all."""
    (tmp_path / "index.html").write_text("<h1>ui</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    app = FastAPI()
    app.include_router(DistributedInference(settings=settings_for([])).router)
    app.frontend(f"{PREFIX}/ui", directory=str(tmp_path))
    async with _client(app) as client:
        script = await client.get(f"{PREFIX}/ui/app.js")
        assert (script.status_code, script.text) == (200, "console.log(1)")
        assert (await client.get(f"{PREFIX}/nope")).headers["content-type"] == "application/problem+json"


async def test_with_the_flag_off_an_unknown_path_says_the_flag_is_off() -> None:
    async with mounted(settings_for([], enabled=False)) as (client, _):
        response = await client.get(f"{PREFIX}/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "ENABLE_DISTRIBUTED_INFERENCE" in response.json()["detail"]


async def test_host_routes_under_the_prefix_and_outside_it_stay_the_hosts() -> None:
    """A host route added after ours, even under our prefix, is served; elsewhere the host's 404 stands."""
    app = FastAPI()

    @app.get("/before")
    async def before() -> dict[str, str]:
        return {"served": "before"}

    distributed = DistributedInference(settings=settings_for([]))
    app.include_router(distributed.router)

    @app.get(f"{PREFIX}/host-extra")
    async def host_extra() -> dict[str, str]:
        return {"served": "host"}

    async with _client(app) as client:
        assert (await client.get(f"{PREFIX}/host-extra")).json() == {"served": "host"}
        assert (await client.get("/before")).json() == {"served": "before"}
        host_404 = await client.get("/not-ours")
        assert host_404.status_code == 404
        assert host_404.headers["content-type"] == "application/json"  # the host's, untouched
        host_405 = await client.post(f"{PREFIX}/host-extra")
        assert host_405.status_code == 405


async def test_unknown_paths_share_one_metric_series() -> None:
    """Any number of unknown paths is one route label, not one series per path."""
    async with mounted(settings_for([])) as (client, _):
        for index in range(5):
            assert (await client.get(f"{PREFIX}/nope-{index}")).status_code == 404
        text = (await client.get("/metrics")).text
    lines = [
        line for line in text.splitlines() if line.startswith("distinfer_gateway_http_request_duration_seconds_count")
    ]
    unknown = [line for line in lines if 'status="404"' in line]
    assert len(unknown) == 1, unknown
    assert unknown[0].endswith(" 5.0")
    assert "nope" not in text
