"""HTTP plumbing of the fake Consul agent: ACL tokens, errors, blocking reads, request definitions.

Kept apart from `bench.fakes.consul` (the endpoints, checks and lifecycle) to keep each short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from bench.fakes.consul_state import (
    DATACENTER,
    STATUSES,
    Catalog,
    CheckState,
    ConsulError,
    InstanceState,
    lower_keys,
    parse_duration,
    validate_meta,
)

__all__ = ["ConsulHTTP", "status_of"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_MAX_WAIT_S = 600.0
_DEFAULT_WAIT_S = 300.0
_OTHER_CHECKS = ("args", "script", "tcp", "udp", "h2ping", "grpc", "docker", "alias")


def status_of(http_status: int) -> str:
    """Consul's reading of an HTTP check's answer."""
    if 200 <= http_status < 300:
        return "passing"
    return "warning" if http_status == 429 else "critical"


class ConsulHTTP:
    """What every endpoint shares: the catalog, ACLs, wake-ups of blocked reads, the write log."""

    def __init__(self, *, acl_tokens: Mapping[str, str] | None, rng: random.Random | None) -> None:
        self.acl = dict(acl_tokens) if acl_tokens is not None else None  # token -> "read" | "write"
        self._rng = rng or random.Random()
        self._changed = asyncio.Event()
        self.catalog = Catalog(on_write=self._wake)
        self.requests: list[tuple[float, str, str]] = []  # (monotonic time, method, path) of every write
        self.reads = 0

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.method != "GET":
                self.requests.append((asyncio.get_running_loop().time(), request.method, request.path))
                del self.requests[:-1000]
            else:
                self.reads += 1
            self._check_dc(request)
            return await handler(request)
        except ConsulError as exc:
            return web.Response(status=exc.status, text=exc.text)

    @staticmethod
    def _check_dc(request: web.Request) -> None:
        dc = request.query.get("dc")
        if dc and dc != DATACENTER and not request.path.startswith("/v1/agent/"):
            raise ConsulError(500, "No path to datacenter")

    def _token(self, request: web.Request) -> str:
        token = request.headers.get("X-Consul-Token") or request.query.get("token", "")
        auth = request.headers.get("Authorization", "")
        if not token and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        return token

    def _may_read(self, request: web.Request) -> bool:
        """True to answer, False to answer filtered (anonymous under default deny); 403 for a bad token."""
        if self.acl is None:
            return True
        token = self._token(request)
        if not token:
            return False
        if token not in self.acl:
            raise ConsulError(403, "ACL not found")
        return True

    def _must_write(self, request: web.Request) -> None:
        if self.acl is None:
            return
        token = self._token(request)
        if token and token not in self.acl:
            raise ConsulError(403, "ACL not found")
        if self.acl.get(token) != "write":
            raise ConsulError(403, "Permission denied: token lacks permission 'service:write'")

    @staticmethod
    async def _body(request: web.Request) -> Any:
        raw = await request.read()
        if not raw:
            return {}
        try:
            return lower_keys(json.loads(raw))
        except ValueError as exc:
            raise ConsulError(400, f"Request decode failed: {exc}") from exc

    @staticmethod
    def _json(data: object, index: int | None = None, *, filtered: bool = False) -> web.Response:
        headers = {"X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}
        if index is not None:
            headers["X-Consul-Index"] = str(index)
        if filtered:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return web.json_response(data, headers=headers)

    async def _blocking(
        self, request: web.Request, compute: Callable[[], tuple[int, object]], empty: object
    ) -> web.Response:
        readable = self._may_read(request)
        try:
            min_index = int(request.query.get("index", "0") or 0)
        except ValueError as exc:
            raise ConsulError(400, "Invalid index") from exc
        if min_index < 0:
            raise ConsulError(400, "Invalid index")
        wait = parse_duration(request.query["wait"], "wait time") if "wait" in request.query else _DEFAULT_WAIT_S
        wait = min(wait, _MAX_WAIT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait + self._rng.uniform(0, wait / 16)
        while True:
            index, data = compute()
            remaining = deadline - loop.time()
            if min_index == 0 or index > min_index or remaining <= 0:
                break
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # not wait_for: on 3.11 it can drop a cancel
                    await changed.wait()
        return self._json(data if readable else empty, index, filtered=not readable)

    # ------------------------------------------------------------------ definitions

    def _check_from(self, raw: Any, node: str, service_id: str, service_name: str, *, agent: bool) -> CheckState:
        if not isinstance(raw, dict):
            raise ConsulError(400, "Invalid check: not an object")
        status = raw.get("status") or "critical"
        if status not in STATUSES:
            raise ConsulError(400, f"Invalid check status: {status!r}")
        check = CheckState(
            check_id=str(raw.get("checkid") or raw.get("id") or ""),
            name=str(raw.get("name") or (f"Service '{service_name}' check" if service_name else "")),
            node=node,
            status=status,
            notes=str(raw.get("notes") or ""),
            output=str(raw.get("output") or ""),
            service_id=service_id,
            service_name=service_name,
        )
        if not agent:
            return check
        if raw.get("http"):
            check.kind, check.http = "http", str(raw["http"])
            check.method = str(raw.get("method") or "GET")
            check.interval_s = parse_duration(raw.get("interval") or "0s", "interval")
            if check.interval_s <= 0:
                raise ConsulError(400, "Interval must be > 0 for Script, HTTP, H2PING, or TCP checks")
            check.timeout_s = parse_duration(raw.get("timeout") or "10s", "timeout")
        elif raw.get("ttl"):
            check.kind, check.ttl_s = "ttl", parse_duration(raw["ttl"], "TTL")
            check.ttl_deadline = asyncio.get_running_loop().time() + check.ttl_s
        else:
            unsupported = [kind for kind in _OTHER_CHECKS if raw.get(kind)]
            if unsupported:
                raise ConsulError(400, f"this fake agent runs http and ttl checks only, not {unsupported}")
            kinds = ", ".join(_OTHER_CHECKS[1:])
            raise ConsulError(400, f"Invalid check: one of {kinds}, http or ttl must be specified")
        if raw.get("deregistercriticalserviceafter"):
            check.deregister_after_s = parse_duration(raw["deregistercriticalserviceafter"], "deregister timeout")
        return check

    @staticmethod
    def _instance_from(body: dict[str, Any], node: str, *, name_key: str) -> InstanceState:
        name = body.get(name_key)
        if not isinstance(name, str) or not name:
            raise ConsulError(400, "Missing service name")
        port = body.get("port", 0) or 0
        if not isinstance(port, int) or not 0 <= port < 65536:
            raise ConsulError(400, f"Invalid service port: {port!r}")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ConsulError(400, "Invalid service tags")
        weights = body.get("weights") or {}
        return InstanceState(
            service_id=str(body.get("id") or name),
            name=name,
            node=node,
            address=str(body.get("address") or ""),
            port=port,
            tags=list(tags),
            meta=validate_meta(body.get("meta")),
            weights={"Passing": int(weights.get("passing", 1)), "Warning": int(weights.get("warning", 1))},
            enable_tag_override=bool(body.get("enabletagoverride", False)),
        )
