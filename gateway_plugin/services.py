"""What the lifespan builds and the request handlers use: one instance per plugin, never global."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from balancer.pool import NodePool
from discovery.registry import NodeRegistry
from gateway_plugin.catalog import ModelCatalog
from gateway_plugin.dispatch import Dispatcher
from gateway_plugin.local import LocalInference
from gateway_plugin.settings import Settings
from worker.protocol import Limits

__all__ = ["Services", "ServicesDependency"]


@dataclass(frozen=True, slots=True)
class Services:
    settings: Settings
    registry: NodeRegistry
    pool: NodePool
    dispatcher: Dispatcher
    catalog: ModelCatalog
    local: LocalInference | None
    limits: Limits


# What API modules receive: the plugin's `services` dependency (an async bound method).
ServicesDependency = Callable[[], Awaitable[Services]]
