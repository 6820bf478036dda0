"""The node registers itself with a Consul agent (`distinfer node --consul-url URL`).

Once the node answers its own v2 ready endpoint, it registers a service (name
`DISTINFER_CONSUL_SERVICE`, default `distinfer-node`) at its advertised host and port with an HTTP
check on `/v2/health/ready` and `DeregisterCriticalServiceAfter`, its models, runtimes, device
and memory in `Meta` and as `key=value` tags. The check starts `passing` (the node has just
answered it), so gateways can route to the node as soon as their blocking query returns.
Every `resync_s` it checks that the agent still holds the service (an agent restarted in `-dev`
mode forgets it) and registers again if not, or if the node's models changed since (explicit model
control loads and unloads them; `refresh()` makes that happen at once). Consul's register call
replaces a service of the same id, tags and Meta included. Leaving the context deregisters it: the
lifespan's shutdown, which uvicorn runs on SIGTERM and SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from consul import Check, ConsulException

from worker.consul_http import ConsulClient

__all__ = ["ConsulRegistration", "NodeRegistration", "consul_registration", "service_definition", "service_id_for"]

log = logging.getLogger(__name__)

_META_VALUE_MAX = 512  # Consul's limit on one Meta value


@dataclass(frozen=True, slots=True)
class ConsulRegistration:
    """Where and how the node registers; `advertise_host` is the address gateways should dial."""

    url: str
    advertise_host: str
    port: int
    token: str | None = None
    service: str = "distinfer-node"
    check_interval: str = "1s"
    check_timeout: str = "1s"
    deregister_after: str = "1m"  # Consul enforces at least one minute
    resync_s: float = 10.0
    scheme: str = "http"  # https when the node serves TLS (--ssl-certfile)


def service_id_for(service: str, node_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", f"{service}-{node_id}")


def _memory_bytes() -> int | None:
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def service_definition(reg: ConsulRegistration, node_id: str, models: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments of `agent.service.register` for this node (`models`: name -> runtime)."""
    host = reg.advertise_host
    url_host = f"[{host}]" if ":" in host else host
    runtimes = sorted(set(models.values()))
    meta = {
        "node_id": node_id,
        "models": ",".join(sorted(models))[:_META_VALUE_MAX],
        "runtime": ",".join(runtimes),
        "device": "cpu",
        "scheme": reg.scheme,
    }
    memory = _memory_bytes()
    if memory is not None:
        meta["memory"] = str(memory)
    check = Check.http(
        f"{reg.scheme}://{url_host}:{reg.port}/v2/health/ready",
        reg.check_interval,
        timeout=reg.check_timeout,
        deregister=reg.deregister_after,
    )
    check["Status"] = "passing"
    check["Name"] = f"distinfer node {node_id} ready"
    return {
        "name": reg.service,
        "service_id": service_id_for(reg.service, node_id),
        "address": host,
        "port": reg.port,
        "tags": ["distinfer", *(f"model={name}" for name in sorted(models)), *(f"runtime={r}" for r in runtimes)],
        "meta": meta,
        "check": check,
    }


class NodeRegistration:
    def __init__(
        self,
        reg: ConsulRegistration,
        node_id: str,
        models: Callable[[], Mapping[str, str]],
        client: ConsulClient,
    ) -> None:
        self._reg = reg
        self._node_id = node_id
        self._models = models  # read at each sync: what the node serves now
        self._definition = service_definition(reg, node_id, models())
        self.service_id: str = self._definition["service_id"]
        self._client = client
        self.registered = asyncio.Event()
        self._refresh = asyncio.Event()

    def refresh(self) -> None:
        """The node's models changed: sync with the agent now rather than at the next resync."""
        self._refresh.set()

    async def _wait_until_serving(self, timeout_s: float = 30.0) -> None:
        """uvicorn listens only once the lifespan has started (and is ready from then): wait until
        the advertised address accepts connections, which works the same behind TLS and mTLS."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                async with asyncio.timeout(1.0):
                    _, writer = await asyncio.open_connection(self._reg.advertise_host, self._reg.port)
            except (OSError, TimeoutError):
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        log.warning(
            "%s:%d accepted no connection within %.0fs; registering anyway, Consul's check decides",
            self._reg.advertise_host,
            self._reg.port,
            timeout_s,
        )

    async def _register(self, definition: dict[str, Any]) -> None:
        await self._client.agent.service.register(**definition, token=self._reg.token)
        self._definition = definition
        self.registered.set()
        models = definition["meta"]["models"]
        log.info("registered with consul %s as %s (models %s)", self._reg.url, self.service_id, models)

    async def _sync(self) -> None:
        definition = service_definition(self._reg, self._node_id, self._models())
        if not self.registered.is_set():
            await self._register(definition)
        elif definition != self._definition:
            log.info("models changed: registering %s again", self.service_id)
            await self._register(definition)
        else:
            services = await self._client.agent.services(token=self._reg.token)
            if self.service_id not in (services or {}):
                log.warning("consul agent lost service %s: registering again", self.service_id)
                await self._register(definition)

    async def _pause(self, seconds: float) -> None:
        """Sleep until the next resync, or until `refresh()`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._refresh.wait()
        self._refresh.clear()

    async def run(self) -> None:
        await self._wait_until_serving()
        delay = 0.2
        while True:
            try:
                await self._sync()
                delay = 0.2
                await self._pause(self._reg.resync_s)
            except (ConsulException, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("consul %s: %s: %s; retrying in %.1fs", self._reg.url, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def deregister(self, timeout_s: float = 3.0) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                await self._client.agent.service.deregister(self.service_id, token=self._reg.token)
        except (ConsulException, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("could not deregister %s from consul: %s", self.service_id, exc)
        else:
            log.info("deregistered %s from consul", self.service_id)


@asynccontextmanager
async def consul_registration(
    reg: ConsulRegistration | None, node_id: str, models: Callable[[], Mapping[str, str]]
) -> AsyncIterator[NodeRegistration | None]:
    """Registered while inside (from when the node serves); deregistered on the way out. No-op without `reg`."""
    if reg is None:
        yield None
        return
    client = ConsulClient(reg.url, token=reg.token, read_timeout_s=5.0)
    registration = NodeRegistration(reg, node_id, models, client)
    task = asyncio.create_task(registration.run(), name=f"consul-registration-{registration.service_id}")
    try:
        yield registration
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await registration.deregister()
        await client.close()
