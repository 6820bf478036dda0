"""Balancing strategies by their CONTRACT §4 names."""

from __future__ import annotations

from balancer.strategies.base import InFlight, Strategy
from balancer.strategies.least_loaded import LeastLoaded
from balancer.strategies.round_robin import RoundRobin

__all__ = ["InFlight", "LeastLoaded", "RoundRobin", "Strategy", "default_strategies"]


def default_strategies() -> dict[str, Strategy]:
    """A fresh instance of every strategy (they may hold per-gateway state such as a turn)."""
    return {strategy.name: strategy for strategy in (RoundRobin(), LeastLoaded())}
