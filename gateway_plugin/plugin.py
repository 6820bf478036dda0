"""`DistributedInference`: builds every piece once from settings and hands the host a router.

    distributed = DistributedInference.from_env()
    app.include_router(distributed.router)     # the router carries the lifespan

Background work (discovery, health probes) starts and stops with the host app's lifespan; hosts
that are plain Starlette apps can enter `distributed.lifespan(app)` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
from fastapi import APIRouter, Depends

from balancer import HealthProber, NodePool, RetryPolicy, default_strategies
from discovery import NodeRegistry, StaticSource
from gateway_plugin.api import cluster_router, health_router, inference_router, problem_route, relay_router
from gateway_plugin.catalog import ModelCatalog
from gateway_plugin.dispatch import Dispatcher
from gateway_plugin.errors import NoCapacity, NotFound
from gateway_plugin.local import LocalInference
from gateway_plugin.services import Services
from gateway_plugin.settings import Settings
from worker.client import NodeClient
from worker.protocol import Limits

__all__ = ["DistributedInference"]

log = logging.getLogger(__name__)


class DistributedInference:
    def __init__(self, settings: Settings | None = None, *, rng: random.Random | None = None) -> None:
        self.settings = settings if settings is not None else Settings()
        self._check_discovery()
        self.registry = NodeRegistry()
        self.pool = NodePool(
            self.registry, default_strategies(), default_strategy=self.settings.balancer.strategy, rng=rng
        )
        self._services: Services | None = None
        self.router = self._build_router()

    @classmethod
    def from_env(cls) -> DistributedInference:
        """Settings from the environment and `.env`, read now (CONTRACT §3, §8)."""
        return cls(Settings())

    def _check_discovery(self) -> None:
        # Only static discovery exists so far; refuse loudly rather than route to nothing.
        unsupported = [s for s in self.settings.discovery.sources if s != "static"]
        if unsupported or self.settings.discovery.nodes_file is not None:
            raise ValueError(
                f"discovery {unsupported or ['DISTINFER_NODES_FILE']} is not available in this version; "
                "use DISTINFER_DISCOVERY=static with DISTINFER_NODES"
            )

    # ------------------------------------------------------------------ dependencies

    # Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
    # thread, which cost two thread hops per request (measured with `distinfer bench overhead`).
    async def services(self) -> Services:
        if self._services is None:
            raise NoCapacity("distributed inference is not started: the host app's lifespan has not run")
        return self._services

    async def require_enabled(self) -> None:
        if not self.settings.flags.enabled:
            raise NotFound("distributed inference is disabled (ENABLE_DISTRIBUTED_INFERENCE)")

    def _build_router(self) -> APIRouter:
        route_class = problem_route(self.settings.limits.max_body_bytes)
        router = APIRouter(
            prefix=self.settings.api.prefix,
            lifespan=self.lifespan,
            dependencies=[Depends(self.require_enabled)],
            route_class=route_class,
        )
        for build in (inference_router, relay_router, cluster_router, health_router):
            router.include_router(build(self.services, route_class))
        return router

    # ------------------------------------------------------------------ lifespan

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        settings = self.settings
        limits = Limits(
            max_tensor_elements=settings.limits.max_tensor_elements,
            max_string_bytes=settings.limits.max_string_bytes,
        )
        async with AsyncExitStack() as stack:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=settings.dispatch.connections_per_node)
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            client = NodeClient(session, limits=limits, probe_timeout_s=settings.balancer.probe_timeout_s)
            local = None
            if settings.local.model_repository is not None:
                local = await stack.enter_async_context(
                    LocalInference.open(settings.local.model_repository, threads=settings.local.threads)
                )
            dispatcher = Dispatcher(
                self.pool,
                client,
                retry=RetryPolicy(max_attempts=settings.balancer.max_attempts),
                local=local,
                binary=settings.dispatch.binary_to_nodes,
            )
            prober = HealthProber(self.registry, client, interval_s=settings.balancer.probe_interval_s)
            await StaticSource(settings.discovery.nodes).run(self.registry)
            # One probe round before serving, so the first request already knows the nodes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.balancer.probe_timeout_s * 3):
                    await prober.probe_all()
            self._services = Services(
                settings=settings,
                registry=self.registry,
                pool=self.pool,
                dispatcher=dispatcher,
                catalog=ModelCatalog(self.registry, local),
                local=local,
                limits=limits,
            )
            tasks = [self._owned(prober.run(), "health-prober")]
            try:
                yield
            finally:
                self._services = None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    def _owned(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=f"distinfer-{name}")
        task.add_done_callback(_log_crash)
        return task


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=task.exception())
