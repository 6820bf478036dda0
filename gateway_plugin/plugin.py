"""`DistributedInference`: builds every piece once from settings and hands the host a router.

    distributed = DistributedInference.from_env()
    app.include_router(distributed.router)     # the router carries the lifespan

Background work (discovery, health probes) starts and stops with the host app's lifespan; hosts
that are plain Starlette apps can enter `distributed.lifespan(app)` themselves.

Every route needs a bearer token with `infer` (CONTRACT §6) but `/health*`; `require_admin` is
the dependency for admin routes. `/flags` answers even while the flag is off, so that it can be
turned back on at runtime; everything else under the prefix is 404 then.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from balancer import HealthProber, RetryPolicy
from discovery import NodeRegistry
from gateway_plugin.admission import InflightLimiter, admitted
from gateway_plugin.api import (
    batch_router,
    cluster_router,
    flags_router,
    health_router,
    inference_router,
    nodes_admin_router,
    parallel_router,
    pipeline_router,
    problem_route,
    relay_router,
    stream_router,
)
from gateway_plugin.api.health import summary
from gateway_plugin.api.inference import build_call
from gateway_plugin.api.openapi_problems import document_problems
from gateway_plugin.api.routing import Guard, add_not_found_route, record_routes
from gateway_plugin.api.schemas import InferenceRequest
from gateway_plugin.api.stats import stats_router
from gateway_plugin.api.tasks import task_runner, tasks_router
from gateway_plugin.api.v2_metadata import v2_health_router, v2_metadata_router
from gateway_plugin.auth import ADMIN, INFER, Authenticator, node_ssl_context
from gateway_plugin.balancing import build_pool, build_resilience
from gateway_plugin.cache import CachingDispatcher, ResponseCache
from gateway_plugin.catalog import ModelCatalog
from gateway_plugin.dispatch import Dispatcher, Outcome
from gateway_plugin.errors import NoCapacity, NotFound, from_worker
from gateway_plugin.flags import FeatureFlags, FlagProvider
from gateway_plugin.local import LocalInference
from gateway_plugin.services import InferenceDispatcher, Services
from gateway_plugin.settings import Settings
from gateway_plugin.shadow import BackgroundWork, ShadowStats
from gateway_plugin.sharded import ShardedDispatcher, ShardedModels, sharded_models
from gateway_plugin.sources import build_sources, cancel_tasks, wait_synced
from gateway_plugin.streaming import StreamRelay
from gateway_plugin.tasks import TaskService, open_store
from gateway_plugin.telemetry import NodeReaders, Telemetry
from worker.client import NodeClient
from worker.errors import WorkerError
from worker.fast_lane import FastLane
from worker.protocol import Limits

__all__ = ["DistributedInference"]

log = logging.getLogger(__name__)
_STOP_WAIT_S = 10.0  # background tasks get this long to stop once cancelled at shutdown


class DistributedInference:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        rng: random.Random | None = None,
        flag_provider: FlagProvider | None = None,
        metrics_registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings()
        self._check_discovery()
        self.auth = Authenticator(self.settings.auth)
        self.require_infer = self.auth.require_infer  # FastAPI dependencies (async bound methods)
        self.require_admin = self.auth.require_admin
        self.flags = FeatureFlags(self.settings.flags, flag_provider)
        self.shadow = ShadowStats()  # written by compat's shadow mode, read by /stats and metrics
        self.background = BackgroundWork()
        self.registry = NodeRegistry()
        self.pool = build_pool(self.registry, self.settings, rng=rng)
        self._rng = rng
        self._services: Services | None = None
        self.telemetry = self._build_telemetry(metrics_registry, tracer_provider)
        self.metrics_registry = self.telemetry.registry
        self.router = self._with_metrics(self._build_router())

    @classmethod
    def from_env(cls) -> DistributedInference:
        """Settings from the environment and `.env`, read now (CONTRACT §3, §8)."""
        return cls(Settings())

    def _check_discovery(self) -> None:
        # Bad discovery settings (a Consul URL that is not one, a bad nameserver) fail here, not later.
        build_sources(self.settings.discovery)

    # ------------------------------------------------------------------ dependencies

    # Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in a worker
    # thread, which cost two thread hops per request (measured with `distinfer bench overhead`).
    async def services(self) -> Services:
        if self._services is None:
            raise NoCapacity("distributed inference is not started: the host app's lifespan has not run")
        return self._services

    async def require_enabled(self) -> None:
        self._check_enabled()

    def _check_enabled(self) -> None:
        if not self.flags.enabled:
            raise NotFound("distributed inference is disabled (ENABLE_DISTRIBUTED_INFERENCE)")

    async def _guard_infer(self, authorization: str | None) -> None:
        """`require_enabled` and `require_infer` for a route served outside FastAPI's dependencies."""
        self._check_enabled()  # one read of the flag (a provider's may change between two), no coroutine
        await self.auth.authorize(authorization, INFER)

    def fast_lane(self, app: ASGIApp) -> ASGIApp:
        """`app` with the v2 relay served ahead of its middleware and router (`worker.fast_lane`).

        Opt-in: relay requests then skip the host's own middleware. The standalone gateway uses it.
        """
        prefix = self.settings.api.prefix
        # RawRoute.handle: the method check, the telemetry hook and the relay itself.
        routes = [route for route in self._relay_router.routes if isinstance(route, APIRoute)]
        return FastLane(app, [(prefix + route.path, route.handle) for route in routes])

    # ------------------------------------------------------------------ for code in the host (compat)

    async def infer(
        self, request: InferenceRequest, *, local_fallback: bool = True, admit: bool = True, shadow: bool = False
    ) -> Outcome:
        """One inference over the cluster, as `POST /inference` runs it; raises `DistinferError`.

        `local_fallback=False` leaves the plugin's own local models out, for callers that have
        their own fallback (compat runs the host's original handler instead). `admit=False` takes
        no admission place: for background work bounded elsewhere (compat's shadow copies), which
        must neither take places from real traffic nor count the gateway's saturation as a failure.
        `shadow=True`: a copy of a request answered elsewhere, counted in no request metric, /stats
        window, cache lookup or retry budget (its nodes' attempts still count: their work is real).
        """
        svc = await self.services()
        try:
            call = build_call(svc, request, request.request_id or uuid.uuid4().hex)
        except WorkerError as exc:
            raise from_worker(exc) from exc
        # A place like every request of ours (compat's legacy path too: saturated, it runs the host's
        # own handler), so DISTINFER_MAX_INFLIGHT bounds all the cluster work this gateway starts.
        with admitted(svc.admission if admit else None):
            return await svc.dispatcher.infer(dataclasses.replace(call, local_fallback=local_fallback, shadow=shadow))

    def cluster_summary(self) -> dict[str, Any]:
        """The `/health` summary, for a host that adds it to its own health endpoint."""
        if self._services is None:
            return {"status": "not_started", "ready": False}
        return summary(self._services)

    def _build_router(self) -> APIRouter:
        async def infer_guard(request: Request) -> None:
            await self.auth.authorize(request.headers.get("authorization"), INFER)

        async def admin_guard(request: Request) -> None:
            await self.auth.authorize(request.headers.get("authorization"), ADMIN)

        async def enabled_guard(request: Request) -> None:
            self._check_enabled()

        guards: dict[Callable[..., Any], Guard] = {
            self.require_enabled: enabled_guard,
            self.require_infer: infer_guard,
            self.require_admin: admin_guard,
        }
        route_class = problem_route(
            self.settings.limits.max_body_bytes, self.telemetry.route_hook, gate=self.require_enabled, guards=guards
        )
        router = APIRouter(prefix=self.settings.api.prefix, lifespan=self.lifespan, route_class=route_class)
        enabled, infer = Depends(self.require_enabled), Depends(self.require_infer)

        auth = (self.require_infer, self.require_admin)

        def include(sub: APIRouter, *dependencies: Any) -> None:
            # Errors in OpenAPI as they are sent (problem+json), auth's and the flag's included.
            applied = [dependency.dependency for dependency in dependencies]
            document_problems(sub.routes, applied=applied, auth=auth, gate=self.require_enabled)
            router.include_router(sub, dependencies=list(dependencies))
            # For the Allow and 404 of a 405, and the checks made before a body is read.
            record_routes(route_class, sub, gated=enabled in dependencies, dependencies=applied)

        # Hot routes first: FastAPI tries each included router in order, and a miss costs a scan of its routes.
        # The relay is served as plain ASGI (RawRoute): the dependencies document it, `_guard_infer` enforces them.
        relay = self._relay_router = relay_router(self.services, self._guard_infer, route_class)
        include(relay, enabled, infer)
        include(inference_router(self.services, route_class), enabled, infer)
        # No enabled-check here: with the flag off, PUT /flags is how it comes back on.
        include(flags_router(self.flags, self.require_infer, self.require_admin, route_class))
        include(health_router(self.services, route_class), enabled)
        include(v2_health_router(self.services, route_class), enabled)
        include(v2_metadata_router(self.services, route_class), enabled, infer)  # with the relay: one v2 server
        for build in (stream_router, cluster_router):
            include(build(self.services, route_class), enabled, infer)
        include(nodes_admin_router(self.services, route_class, admin=self.require_admin), enabled)  # POST/PATCH/DELETE
        for build in (batch_router, parallel_router, pipeline_router):
            include(build(self.services, route_class), enabled, infer)
        include(tasks_router(self.services, self.require_infer, route_class), enabled, infer)  # owned by `sub`
        include(stats_router(self.telemetry, route_class, self.shadow), enabled, infer)
        add_not_found_route(router, route_class)  # tried last: problem+json for paths under the prefix nobody serves
        return router

    # ------------------------------------------------------------------ telemetry

    def _build_telemetry(self, registry: CollectorRegistry | None, provider: TracerProvider | None) -> Telemetry:
        pool = self.pool
        telemetry = Telemetry(
            self.registry,
            api_prefix=self.settings.api.prefix,
            registry=registry,
            tracer_provider=provider,
            known_model=self._known_model,
        )
        telemetry.cluster.readers = NodeReaders(
            in_flight=pool.in_flight,
            breaker=lambda key: pool.breaker(key).state.value,
            trust=lambda key: round(pool.trust.score(key), 4),
            panic=pool.panic_states,
            status=lambda node: pool.status(node).value,
        )
        pool.add_panic_listener(telemetry.cluster.panic_pick)
        pool.add_ejection_listener(telemetry.cluster.breaker_tripped)
        return telemetry

    def _known_model(self, model: str) -> bool:
        """Whether a model exists (a node lists it, or the local fallback has it): metric labels only for those."""
        return self.pool.knows(model) or (self._services is not None and self._services.catalog.info(model) is not None)

    def _with_metrics(self, api: APIRouter) -> APIRouter:
        """The API router plus `GET /metrics` beside it: outside the prefix, no auth, flag or not."""
        path = self.settings.telemetry.metrics_path
        if path == "off":
            return api
        outer = APIRouter()  # merges the API router's lifespan when it includes it
        outer.include_router(api)

        async def metrics() -> Response:
            body, content_type = self.telemetry.render_metrics()
            return Response(body, media_type=content_type)

        outer.add_api_route(path, metrics, methods=["GET"], include_in_schema=False)
        return outer

    # ------------------------------------------------------------------ lifespan

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        settings = self.settings
        limits = Limits(
            max_tensor_elements=settings.limits.max_tensor_elements,
            max_string_bytes=settings.limits.max_string_bytes,
        )
        async with AsyncExitStack() as stack:
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=settings.dispatch.connections_per_node,
                ssl=node_ssl_context(settings.auth) or True,
            )
            session = await stack.enter_async_context(aiohttp.ClientSession(connector=connector))
            node_token = settings.auth.node_token.get_secret_value() if settings.auth.node_token else None
            client = NodeClient(
                session, limits=limits, probe_timeout_s=settings.balancer.probe_timeout_s, token=node_token
            )
            local = None
            if settings.local.model_repository is not None:
                local = await stack.enter_async_context(
                    LocalInference.open(settings.local.model_repository, threads=settings.local.threads)
                )
            resilience = build_resilience(settings, self.pool, rng=self._rng)
            dispatcher = Dispatcher(
                self.pool,
                client,
                retry=RetryPolicy(max_attempts=settings.balancer.max_attempts),
                local=local,
                binary=settings.dispatch.binary_to_nodes,
                budget=resilience.budget,
                hedge=resilience.hedge,
                attempt_timeout_s=resilience.attempt_timeout_s,
                validator=resilience.validator,
                observer=self.telemetry.observer,
            )
            catalog = ModelCatalog(self.registry, local)
            served: InferenceDispatcher = dispatcher
            sharded = sharded_models(settings.sharding, dispatcher, self.pool)  # models cut into stages
            if sharded is not None:
                served = ShardedDispatcher(served, sharded)
            if settings.cache.models:  # outermost: a sharded model in DISTINFER_CACHE_MODELS is cached too
                cache = settings.cache
                served = CachingDispatcher(
                    served,
                    ResponseCache(max_entries=cache.max_entries, ttl_s=cache.ttl_s, max_bytes=cache.max_bytes),
                    models=frozenset(cache.models),
                    version_of=functools.partial(_served_version, catalog, sharded),
                    observe=self.telemetry.cache_observer(cache.models),
                    observer=self.telemetry.observer,
                )
            prober = HealthProber(
                self.registry, client, interval_s=settings.balancer.probe_interval_s, on_labels=self.pool.learn_labels
            )
            sources = build_sources(settings.discovery)
            watches = [self._owned(source.run(self.registry), f"discovery-{source.name}") for source in sources]
            stack.push_async_callback(cancel_tasks, watches)
            await wait_synced(sources, self.registry, settings.discovery.start_timeout_s)
            # One probe round before serving, so the first request already knows the nodes.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.balancer.probe_timeout_s * 3):
                    await prober.probe_all()
            task_settings = settings.tasks
            task_store = open_store(
                task_settings.store.get_secret_value(),
                max_tasks=task_settings.max_tasks,
                ttl_s=task_settings.ttl_s,
                max_pending_bytes=task_settings.max_pending_bytes,
            )
            stack.push_async_callback(task_store.close)
            task_service = TaskService(
                task_store, task_runner(self.services), task_settings, on_start=self.telemetry.observer.queued
            )
            self.telemetry.queue_depth = lambda: task_service.depth
            self._services = Services(
                settings=settings,
                registry=self.registry,
                pool=self.pool,
                dispatcher=served,
                sharded=sharded,
                catalog=catalog,
                local=local,
                limits=limits,
                streams=StreamRelay(
                    self.pool,
                    client,
                    max_attempts=settings.balancer.max_attempts,
                    local=local,
                    max_new_tokens=settings.limits.max_new_tokens,
                    observer=self.telemetry.observer,
                ),
                admission=InflightLimiter(settings.limits.max_inflight),
                tasks=task_service,
            )
            self.background.open()
            stack.push_async_callback(self.background.close)
            tasks = [self._owned(prober.run(), "health-prober")]
            tasks.append(self._owned(task_service.run(), "task-workers"))  # on stop, running tasks are requeued
            tasks.append(self._owned(self.telemetry.watch_event_loop(), "event-loop-lag"))
            if resilience.validator is not None:
                tasks.append(self._owned(resilience.validator.run(), "result-validator"))
            try:
                yield
            finally:
                self._services = None
                for task in tasks:
                    task.cancel()
                # Bounded: a task that lost its cancel (a library swallowing it) must not hold the shutdown.
                _, stuck = await asyncio.wait(tasks, timeout=_STOP_WAIT_S)
                for task in stuck:
                    log.error("%s did not stop within %.0f s of shutdown; left behind", task.get_name(), _STOP_WAIT_S)
                self.telemetry.flush()

    @staticmethod
    def _owned(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(work, name=f"distinfer-{name}")
        task.add_done_callback(_log_crash)
        return task


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s stopped", task.get_name(), exc_info=task.exception())


def _served_version(catalog: ModelCatalog, sharded: ShardedModels | None, model: str) -> str | None:
    """The version the cluster serves `model` at now (a sharded model's from its pipeline)."""
    info = catalog.info(model) or (sharded.info(model) if sharded is not None else None)
    return info.version if info is not None else None
