"""A fake Consul agent: the HTTP API endpoints distinfer uses, with Consul's semantics, on loopback.

No Consul binary can be had on these machines, so tests and `distinfer bench discovery` run
against this, and the same tests run against a real agent when one is there
(`CONSUL_HTTP_ADDR`, or `consul` on PATH). Endpoints (Consul HTTP API v1):

    GET  /v1/status/leader · /v1/agent/self · /v1/agent/services · /v1/agent/service/<id> · /v1/agent/checks
    PUT  /v1/agent/service/register[?replace-existing-checks] · /v1/agent/service/deregister/<id>
    PUT  /v1/agent/check/register · /v1/agent/check/deregister/<id> · /v1/agent/check/{pass,warn,fail}/<id>
    PUT  /v1/catalog/register · /v1/catalog/deregister
    GET  /v1/catalog/services · /v1/catalog/service/<name> · /v1/catalog/nodes            (blocking)
    GET  /v1/health/service/<name>[?passing&tag=] · /v1/health/checks/<name> · /v1/health/state/<s>  (blocking)

Blocking reads take `index` and `wait` (Go durations, default 5m, at most 10m, plus up to wait/16
of jitter), hang while the resource's index is not above `index`, and answer `X-Consul-Index`.
The agent runs HTTP checks (first run staggered within the interval; 2xx passing, 429 warning,
else critical) and TTL checks, and reaps services by `DeregisterCriticalServiceAfter`. With
`acl_tokens`, a token (`X-Consul-Token`, `Authorization: Bearer`, or `?token=`) is required:
unknown ones get 403 "ACL not found", anonymous reads are filtered empty
(`X-Consul-Results-Filtered-By-ACLs`), writes without `write` get 403 "Permission denied".
Only the agent's datacenter (`dc1`) exists: `?dc=` anything else is 500 "No path to datacenter".

    python -m bench.fakes.consul --port 8500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from bench.fakes.consul_http import ConsulHTTP, status_of
from bench.fakes.consul_state import (
    AGENT_NODE,
    DATACENTER,
    STATUSES,
    CheckState,
    ConsulError,
    InstanceState,
    validate_meta,
)

__all__ = ["FakeConsul", "FakeConsulThread"]

T = TypeVar("T")


class FakeConsul(ConsulHTTP):
    def __init__(
        self,
        *,
        acl_tokens: Mapping[str, str] | None = None,
        min_deregister_s: float = 60.0,
        reap_interval_s: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(acl_tokens=acl_tokens, rng=rng)
        self.min_deregister_s = min_deregister_s
        self._reap_interval = reap_interval_s
        self._runners: dict[tuple[str, str], tuple[CheckState, asyncio.Task[None]]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.catalog.ensure_node(AGENT_NODE, "127.0.0.1")
        self._session = aiohttp.ClientSession()
        app = web.Application(middlewares=[self._errors])
        self._routes(app)
        # Like Consul, drop a blocking query whose client went away; do not hold shutdown for it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound[1]}"
        self._reaper = asyncio.create_task(self._reap_loop(), name="fake-consul-reaper")
        return self.url

    async def stop(self) -> None:
        tasks = [task for _, task in self._runners.values()]
        if self._reaper is not None:
            tasks.append(self._reaper)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runners.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def rewind(self, index: int) -> None:
        """Make the indexes go back, as a restored snapshot or a restarted server does."""
        self.catalog.rewind(index)

    # ------------------------------------------------------------------ checks

    async def _reap_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._reap_interval)
            self.catalog.reap(loop.time(), self.min_deregister_s)
            self._sync_runners()

    def _sync_runners(self) -> None:
        for key, (check, task) in list(self._runners.items()):
            if self.catalog.checks.get(key) is not check:
                task.cancel()
                del self._runners[key]
        for key, check in self.catalog.checks.items():
            if check.kind == "http" and key not in self._runners:
                task = asyncio.create_task(self._run_http_check(check), name=f"fake-consul-check-{check.check_id}")
                self._runners[key] = (check, task)

    async def _run_http_check(self, check: CheckState) -> None:
        assert self._session is not None
        await asyncio.sleep(self._rng.uniform(0, check.interval_s))  # Consul staggers the first run
        while True:
            try:
                async with self._session.request(
                    check.method, check.http, timeout=aiohttp.ClientTimeout(total=check.timeout_s), headers=None
                ) as response:
                    body = (await response.content.read(4096)).decode("utf-8", "replace")
                    status = status_of(response.status)
                    output = f"HTTP {check.method} {check.http}: {response.status} {response.reason} Output: {body}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, output = "critical", f"Get {check.http!r}: {type(exc).__name__}: {exc}"
            if self.catalog.checks.get((check.node, check.check_id)) is not check:
                return
            self.catalog.set_status(check.node, check.check_id, status, output)
            await asyncio.sleep(check.interval_s)

    # ------------------------------------------------------------------ routes

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/status/leader", self._leader)
        r.add_get("/v1/agent/self", self._agent_self)
        r.add_get("/v1/agent/services", self._agent_services)
        r.add_get("/v1/agent/service/{id}", self._agent_service)
        r.add_put("/v1/agent/service/register", self._agent_register)
        r.add_put("/v1/agent/service/deregister/{id}", self._agent_deregister)
        r.add_get("/v1/agent/checks", self._agent_checks)
        r.add_put("/v1/agent/check/register", self._agent_check_register)
        r.add_put("/v1/agent/check/deregister/{id}", self._agent_check_deregister)
        r.add_put("/v1/agent/check/{verb:pass|warn|fail}/{id}", self._agent_check_ttl)
        r.add_put("/v1/catalog/register", self._catalog_register)
        r.add_put("/v1/catalog/deregister", self._catalog_deregister)
        r.add_get("/v1/catalog/services", self._catalog_services)
        r.add_get("/v1/catalog/service/{name}", self._catalog_service)
        r.add_get("/v1/catalog/nodes", self._catalog_nodes)
        r.add_get("/v1/health/service/{name}", self._health_service)
        r.add_get("/v1/health/checks/{name}", self._health_checks)
        r.add_get("/v1/health/state/{state}", self._health_state)

    async def _leader(self, request: web.Request) -> web.Response:
        return web.json_response("127.0.0.1:8300")

    async def _agent_self(self, request: web.Request) -> web.Response:
        self._may_read(request)
        config = {"Datacenter": DATACENTER, "NodeName": AGENT_NODE, "Version": "1.20.0-distinfer-fake"}
        return web.json_response({"Config": config, "Member": {"Name": AGENT_NODE, "Addr": "127.0.0.1"}})

    def _agent_instances(self) -> dict[str, InstanceState]:
        return {sid: inst for (node, sid), inst in self.catalog.instances.items() if node == AGENT_NODE}

    async def _agent_services(self, request: web.Request) -> web.Response:
        if not self._may_read(request):
            return self._json({}, filtered=True)
        return self._json({sid: inst.as_json() for sid, inst in self._agent_instances().items()})

    async def _agent_service(self, request: web.Request) -> web.Response:
        instance = self._agent_instances().get(request.match_info["id"])
        if not self._may_read(request) or instance is None:
            raise ConsulError(404, f"unknown service ID: {request.match_info['id']}")
        return self._json(instance.as_json(), instance.modify_index)

    async def _agent_register(self, request: web.Request) -> web.Response:
        self._must_write(request)
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ConsulError(400, "Request decode failed: not an object")
        instance = self._instance_from(body, AGENT_NODE, name_key="name")
        raw_checks = ([body["check"]] if body.get("check") else []) + list(body.get("checks") or [])
        checks = []
        for number, raw in enumerate(raw_checks, start=1):
            check = self._check_from(raw, AGENT_NODE, instance.service_id, instance.name, agent=True)
            if not check.check_id:
                suffix = "" if len(raw_checks) == 1 else f":{number}"
                check.check_id = f"service:{instance.service_id}{suffix}"
            checks.append(check)
        self.catalog.put_instance(instance)
        keep = {check.check_id for check in checks}
        if "replace-existing-checks" in request.query:
            for (node, check_id), old in list(self.catalog.checks.items()):
                if node == AGENT_NODE and old.service_id == instance.service_id and check_id not in keep:
                    self.catalog.remove_check(node, check_id)
        for check in checks:
            self.catalog.put_check(check)
        self._sync_runners()
        return web.Response(status=200)

    async def _agent_deregister(self, request: web.Request) -> web.Response:
        self._must_write(request)
        service_id = request.match_info["id"]
        if not self.catalog.remove_instance(AGENT_NODE, service_id):
            raise ConsulError(404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed')
        self._sync_runners()
        return web.Response(status=200)

    async def _agent_checks(self, request: web.Request) -> web.Response:
        if not self._may_read(request):
            return self._json({}, filtered=True)
        checks = {}
        for (node, check_id), check in self.catalog.checks.items():
            if node == AGENT_NODE and check_id != "serfHealth":
                tags = self._agent_instances().get(check.service_id)
                checks[check_id] = check.as_json(tags.tags if tags else [])
        return self._json(checks)

    async def _agent_check_register(self, request: web.Request) -> web.Response:
        self._must_write(request)
        body = await self._body(request)
        service_id = str(body.get("serviceid") or "")
        instance = self._agent_instances().get(service_id) if service_id else None
        if service_id and instance is None:
            raise ConsulError(500, f'ServiceID "{service_id}" does not exist')
        check = self._check_from(body, AGENT_NODE, service_id, instance.name if instance else "", agent=True)
        check.check_id = check.check_id or check.name
        if not check.check_id:
            raise ConsulError(400, "Missing check name")
        self.catalog.put_check(check)
        self._sync_runners()
        return web.Response(status=200)

    async def _agent_check_deregister(self, request: web.Request) -> web.Response:
        self._must_write(request)
        check_id = request.match_info["id"]
        if (AGENT_NODE, check_id) not in self.catalog.checks:
            raise ConsulError(404, f'Unknown check ID "{check_id}"')
        self.catalog.remove_check(AGENT_NODE, check_id)
        self._sync_runners()
        return web.Response(status=200)

    async def _agent_check_ttl(self, request: web.Request) -> web.Response:
        self._must_write(request)
        check = self.catalog.checks.get((AGENT_NODE, request.match_info["id"]))
        if check is None or check.kind != "ttl":
            raise ConsulError(404, f'Unknown check ID "{request.match_info["id"]}"')
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[request.match_info["verb"]]
        check.ttl_deadline = asyncio.get_running_loop().time() + check.ttl_s
        self.catalog.set_status(AGENT_NODE, check.check_id, status, request.query.get("note", ""))
        return web.Response(status=200)

    async def _catalog_register(self, request: web.Request) -> web.Response:
        self._must_write(request)
        body = await self._body(request)
        node = body.get("node")
        address = body.get("address")
        if not isinstance(node, str) or not node:
            raise ConsulError(400, "Must provide node")
        if not isinstance(address, str) or not address:
            raise ConsulError(400, "Must provide address if SkipNodeUpdate is not set")
        self.catalog.ensure_node(node, address, validate_meta(body.get("nodemeta")))
        instance = None
        if body.get("service"):
            instance = self._instance_from(body["service"], node, name_key="service")
            self.catalog.put_instance(instance)
        raw_checks = ([body["check"]] if body.get("check") else []) + list(body.get("checks") or [])
        for raw in raw_checks:
            service_id = str(raw.get("serviceid") or "")
            owner = self.catalog.instances.get((node, service_id)) if service_id else None
            check = self._check_from(raw, node, service_id, owner.name if owner else "", agent=False)
            check.check_id = check.check_id or check.name
            self.catalog.put_check(check)
        return web.json_response(True)

    async def _catalog_deregister(self, request: web.Request) -> web.Response:
        self._must_write(request)
        body = await self._body(request)
        node = body.get("node")
        if not isinstance(node, str) or not node:
            raise ConsulError(400, "Must provide node")
        if body.get("serviceid"):
            self.catalog.remove_instance(node, str(body["serviceid"]))
        elif body.get("checkid"):
            self.catalog.remove_check(node, str(body["checkid"]))
        else:
            self.catalog.remove_node(node)
        self._sync_runners()
        return web.json_response(True)

    async def _catalog_services(self, request: web.Request) -> web.Response:
        def compute() -> tuple[int, dict[str, list[str]]]:
            names: dict[str, set[str]] = {}
            for inst in self.catalog.instances.values():
                names.setdefault(inst.name, set()).update(inst.tags)
            return self.catalog.table_index, {name: sorted(tags) for name, tags in sorted(names.items())}

        return await self._blocking(request, compute, {})

    async def _catalog_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def compute() -> tuple[int, list[dict[str, Any]]]:
            rows = []
            for (node, _), inst in sorted(self.catalog.instances.items()):
                if inst.name != name:
                    continue
                n = self.catalog.nodes[node]
                rows.append(
                    {
                        "ID": n.node_id,
                        "Node": n.name,
                        "Address": n.address,
                        "Datacenter": DATACENTER,
                        "TaggedAddresses": {"lan": n.address, "wan": n.address},
                        "NodeMeta": dict(n.meta),
                        "ServiceID": inst.service_id,
                        "ServiceName": inst.name,
                        "ServiceTags": list(inst.tags),
                        "ServiceAddress": inst.address,
                        "ServicePort": inst.port,
                        "ServiceMeta": dict(inst.meta),
                        "ServiceWeights": dict(inst.weights),
                        "ServiceEnableTagOverride": inst.enable_tag_override,
                        "CreateIndex": inst.create_index,
                        "ModifyIndex": inst.modify_index,
                    }
                )
            return self.catalog.service_index(name), rows

        return await self._blocking(request, compute, [])

    async def _catalog_nodes(self, request: web.Request) -> web.Response:
        def compute() -> tuple[int, list[dict[str, Any]]]:
            return self.catalog.table_index, [n.as_json() for _, n in sorted(self.catalog.nodes.items())]

        return await self._blocking(request, compute, [])

    async def _health_service(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        passing = "passing" in request.query and request.query["passing"].lower() not in ("false", "0")
        tags = request.query.getall("tag", [])

        def compute() -> tuple[int, list[dict[str, Any]]]:
            return self.catalog.service_index(name), self.catalog.health_entries(name, passing=passing, tags=tags)

        return await self._blocking(request, compute, [])

    async def _health_checks(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]

        def compute() -> tuple[int, list[dict[str, Any]]]:
            rows = []
            for check in self.catalog.checks.values():
                if check.service_name == name:
                    owner = self.catalog.instances.get((check.node, check.service_id))
                    rows.append(check.as_json(owner.tags if owner else []))
            return self.catalog.service_index(name), rows

        return await self._blocking(request, compute, [])

    async def _health_state(self, request: web.Request) -> web.Response:
        state = request.match_info["state"]
        if state not in ("any", *STATUSES):
            raise ConsulError(400, f"Invalid state: {state}")

        def compute() -> tuple[int, list[dict[str, Any]]]:
            rows = [
                check.as_json([]) for check in self.catalog.checks.values() if state == "any" or check.status == state
            ]
            return self.catalog.table_index, rows

        return await self._blocking(request, compute, [])


class FakeConsulThread:
    """The fake on its own event loop in a daemon thread, for synchronous tests and benches."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-consul", daemon=True)
        self.fake: FakeConsul | None = None
        self.url = ""

    def call(self, work: Coroutine[Any, Any, T], timeout_s: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout_s)

    def start(self, port: int = 0) -> str:
        self._thread.start()

        async def build() -> str:
            self.fake = FakeConsul(**self._options)
            return await self.fake.start(port=port)

        self.url = self.call(build())
        return self.url

    def rewind(self, index: int) -> None:
        async def rewind() -> None:
            assert self.fake is not None
            self.fake.rewind(index)

        self.call(rewind())

    def write_times(self, method: str, path_prefix: str) -> list[float]:
        """Loop-clock (monotonic) times of the writes the fake received to paths under `path_prefix`."""

        async def times() -> list[float]:
            assert self.fake is not None
            return [t for t, m, p in self.fake.requests if m == method and p.startswith(path_prefix)]

        return self.call(times())

    def stop(self) -> None:
        if self.fake is not None:
            with contextlib.suppress(Exception):
                self.call(self.fake.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="a fake Consul agent (HTTP API subset) for local tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--min-deregister-s", type=float, default=60.0)
    args = parser.parse_args()

    async def serve() -> None:
        fake = FakeConsul(min_deregister_s=args.min_deregister_s)
        print(await fake.start(args.host, args.port), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
