"""What the pool keeps per node, and the settings it is built with.

`NodeState` is one node's mutable record (requests in flight, busy back-off, latency estimate and
window, circuit breaker, advertised labels); the pool owns one per node key and drops it when the
node leaves and its last request is done.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from balancer.breaker import CircuitBreaker
from balancer.latency import Clock, LatencyWindow, PeakEwma
from balancer.outlier import EjectionPolicy

__all__ = ["NodeState", "PoolConfig", "advertised_limit"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PoolConfig:
    ejection: EjectionPolicy = field(default_factory=EjectionPolicy)
    panic_threshold: float = 0.0  # percent of a model's nodes that must be admitted, else panic
    max_in_flight: int = 0  # per node from this gateway; at the limit a node is `busy`; 0: no limit
    latency_decay_s: float = 1.0  # peak EWMA blending; idle decay is 10x this
    latency_samples: int = 16  # under traffic a latency peak fades after about this many faster answers
    # A node that answered busy (429, 408) is `busy` for its Retry-After, else `busy_backoff_s`, at
    # most `busy_backoff_max_s`: picks go to the others meanwhile (all busy: they spill over).
    busy_backoff_s: float = 1.0
    busy_backoff_max_s: float = 10.0


class NodeState:
    __slots__ = ("advertised", "breaker", "busy_until", "ewma", "in_flight", "limit", "window")

    def __init__(self, config: PoolConfig, clock: Clock, on_change: Callable[[], None]) -> None:
        self.in_flight = 0
        self.busy_until = 0.0  # clock reading until which the node asked to be left alone (429, 408)
        # Requests in flight at which the node is `busy`: the operator's limit, else what it advertises.
        self.limit = config.max_in_flight
        self.ewma = PeakEwma(clock, decay_s=config.latency_decay_s, samples=config.latency_samples)
        self.window = LatencyWindow()
        self.breaker = CircuitBreaker(config.ejection, clock, on_change=on_change)
        self.advertised: Mapping[str, str] = _EMPTY


def advertised_limit(labels: Mapping[str, str]) -> int:
    """The node's `max_concurrency` label as a positive count; 0 (no limit) when absent or not one."""
    value = labels.get("max_concurrency", "")
    return int(value) if value.isascii() and value.isdigit() else 0  # not '²': int() refuses it
