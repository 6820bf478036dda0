"""What the lifespan builds and the request handlers use: one instance per plugin, never global."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from balancer.pool import NodePool
from discovery.registry import NodeRegistry
from gateway_plugin.admission import InflightLimiter
from gateway_plugin.catalog import ModelCatalog
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.local import LocalInference
from gateway_plugin.settings import Settings
from gateway_plugin.streaming import StreamRelay
from gateway_plugin.tasks import TaskService
from worker.protocol import Limits

if TYPE_CHECKING:
    from gateway_plugin.sharded import ShardedModels  # imports this module: only for the annotation

__all__ = ["InferenceDispatcher", "Services", "ServicesDependency"]


class InferenceDispatcher(Protocol):
    """What handlers call: the Dispatcher, or a wrapper of it such as the response cache."""

    async def infer(self, call: InferenceCall) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    registry: NodeRegistry
    pool: NodePool
    dispatcher: InferenceDispatcher
    catalog: ModelCatalog
    local: LocalInference | None
    limits: Limits
    streams: StreamRelay | None = None  # token streaming (generate_stream relay)
    admission: InflightLimiter | None = None  # synchronous requests in flight; 429 beyond the limit
    tasks: TaskService | None = None  # asynchronous tasks: queue (depth, wait times), store, workers
    sharded: ShardedModels | None = None  # models cut into stages (gateway_plugin.sharded): their metadata


# What API modules receive: the plugin's `services` dependency (an async bound method).
ServicesDependency = Callable[[], Awaitable[Services]]
