"""Balancing strategies by their CONTRACT §4 names; adding one is a new module and a line here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from balancer.strategies.base import PickContext, Restricting, Signals, Strategy
from balancer.strategies.capability import Capability, Requirement, parse_requirements
from balancer.strategies.latency import Latency
from balancer.strategies.least_loaded import LeastLoaded
from balancer.strategies.model_affinity import ModelAffinity, session_key
from balancer.strategies.round_robin import RoundRobin
from balancer.strategies.weighted import Weighted

__all__ = [
    "Capability",
    "Latency",
    "LeastLoaded",
    "ModelAffinity",
    "PickContext",
    "Requirement",
    "Restricting",
    "RoundRobin",
    "Signals",
    "Strategy",
    "Weighted",
    "default_strategies",
    "parse_requirements",
    "session_key",
]


def default_strategies(
    *, requirements: Mapping[str, Sequence[Requirement]] | None = None, latency_band: float = 0.1
) -> dict[str, Strategy]:
    """A fresh instance of every strategy (they may hold per-gateway state such as a turn)."""
    strategies: tuple[Strategy, ...] = (
        RoundRobin(),
        LeastLoaded(),
        Weighted(),
        Capability(requirements),
        Latency(band=latency_band),
        ModelAffinity(),
    )
    return {strategy.name: strategy for strategy in strategies}
