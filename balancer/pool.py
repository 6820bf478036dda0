"""The pool: which healthy nodes serve which model, what is known about each, and `pick()`.

It follows the registry's events and rebuilds its per-model candidate lists only when membership
or health changes. Per node it keeps requests in flight, a peak EWMA and a p95 of latency, a
circuit breaker fed by outlier detection, and trust (via the shared `TrustLedger`). `pick()` is
synchronous and never waits: candidates → those whose breaker admits traffic and that are not
quarantined → not busy → the strategy. When none is admitted (or fewer than `panic_threshold`
percent), the pool is in panic for that model and routes to the least-bad node rather than
failing everything, as Envoy's panic threshold does. Each attempt reports back through its
`Lease`, which is how breakers, latency and the node's state learn.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from balancer.breaker import BreakerSnapshot, CircuitBreaker
from balancer.latency import Clock, LatencyWindow, PeakEwma
from balancer.outlier import EjectionPolicy
from balancer.strategies import PickContext, Strategy
from balancer.trust import TrustLedger, TrustPolicy
from discovery.node import Node, NodeStatus
from discovery.registry import NodeEvent, NodeRegistry, NodeRemoved
from worker.errors import NodeCallError, NodeUnreachable

__all__ = ["Lease", "NodePool", "PoolConfig", "UnknownStrategy"]

_EMPTY: Mapping[str, str] = MappingProxyType({})


class UnknownStrategy(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PoolConfig:
    ejection: EjectionPolicy = field(default_factory=EjectionPolicy)
    panic_threshold: float = 0.0  # percent of a model's nodes that must be admitted, else panic
    max_in_flight: int = 0  # per node from this gateway; at the limit a node is `busy`; 0: no limit
    latency_decay_s: float = 1.0  # peak EWMA blending; idle decay is 10x this


_LOAD_WEIGHT = 0.02  # the typical in-flight count is averaged over about the last 50 picks of a node


class _NodeState:
    __slots__ = ("advertised", "breaker", "ewma", "in_flight", "load", "window")

    def __init__(self, config: PoolConfig, clock: Clock) -> None:
        self.in_flight = 0
        self.load: float | None = None  # average in flight (this one included) when requests were sent
        self.ewma = PeakEwma(clock, decay_s=config.latency_decay_s)
        self.window = LatencyWindow()
        self.breaker = CircuitBreaker(config.ejection, clock)
        self.advertised: Mapping[str, str] = _EMPTY


@dataclass(slots=True)
class Lease:
    """A picked node. `report()` the attempt's outcome, then `done()` to release its in-flight slot."""

    node: Node
    _pool: NodePool
    trial: bool = False  # a half-open breaker's trial request
    panic: bool = False  # picked in panic mode
    _released: bool = field(default=False)
    _reported: bool = field(default=False)

    def report(self, latency_s: float, error: NodeCallError | None = None) -> None:
        if not self._reported:
            self._reported = True
            self._pool._report(self.node.key, latency_s, error, trial=self.trial)

    def done(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self.node.key, trial=self.trial and not self._reported)


class NodePool:
    def __init__(
        self,
        registry: NodeRegistry,
        strategies: Mapping[str, Strategy],
        *,
        default_strategy: str,
        rng: random.Random | None = None,
        config: PoolConfig | None = None,
        trust: TrustLedger | None = None,
        clock: Clock | None = None,
    ) -> None:
        if default_strategy not in strategies:
            raise UnknownStrategy(f"unknown default strategy {default_strategy!r}")
        self._registry = registry
        self._strategies = dict(strategies)
        self.default_strategy = default_strategy
        self._rng = rng or random.Random()
        self.config = config or PoolConfig()
        self._clock: Clock = clock or time.monotonic
        self.trust = trust or TrustLedger(TrustPolicy(), self._clock)
        self._states: dict[str, _NodeState] = {}
        self._candidates: dict[str, tuple[Node, ...]] | None = None
        self.panic_picks = 0
        registry.subscribe(self._on_event)

    # ------------------------------------------------------------------ membership

    @property
    def strategy_names(self) -> list[str]:
        return sorted(self._strategies)

    def _on_event(self, event: NodeEvent) -> None:
        self._candidates = None  # rebuilt on the next pick
        if isinstance(event, NodeRemoved):
            key = event.node.key
            state = self._states.get(key)
            if state is None or not state.in_flight:
                self._states.pop(key, None)
            self.trust.forget(key)

    def _state(self, key: str) -> _NodeState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _NodeState(self.config, self._clock)
        return state

    def _by_model(self) -> dict[str, tuple[Node, ...]]:
        if self._candidates is None:
            table: dict[str, list[Node]] = {}
            for node in self._registry.nodes():
                if node.status is NodeStatus.ONLINE:
                    for model in node.models:
                        table.setdefault(model, []).append(node)
            self._candidates = {model: tuple(nodes) for model, nodes in table.items()}
        return self._candidates

    def candidates(self, model: str) -> tuple[Node, ...]:
        """Nodes that serve `model` and answer their probes (whatever their breakers say)."""
        return self._by_model().get(model, ())

    def knows(self, model: str) -> bool:
        """Whether any node, healthy or not, has ever listed the model."""
        return any(node.serves(model) for node in self._registry.nodes())

    def any_online(self) -> bool:
        return any(node.status is NodeStatus.ONLINE for node in self._registry.nodes())

    # ------------------------------------------------------------------ signals (strategies read these)

    def in_flight(self, key: str) -> int:
        state = self._states.get(key)
        return 0 if state is None else state.in_flight

    def latency_cost(self, key: str) -> float:
        """Peak EWMA latency x how much more than usual is in flight now.

        Finagle multiplies the raw EWMA by (in flight + 1). The EWMA already contains the queueing
        of the load it was measured under, so on nodes whose latency grows with load (few model
        threads, busy cores) that counts the queue twice: a fast node with two requests in flight
        then looks as expensive as an idle node ten times slower (tests/unit/balancer/
        test_latency_sim.py: 0.9 % of the traffic on that node at concurrency 8 instead of 0.02 %).
        So the multiplier is (in flight + 1) over the node's usual (in flight + 1), and never below
        1: never a discount, or a slow node, which holds many requests at once because each takes
        long (Little's law), would look cheap exactly because it is slow (`bench balance` saw that:
        round robin's runs taught the gateway that the slow node "usually" had 6 in flight).
        """
        state = self._states.get(key)
        if state is None:
            return 0.0
        ewma = state.ewma.value()
        if ewma is None:  # never observed: try it while idle, not a flood of it (Finagle's penalty)
            return 0.0 if state.in_flight == 0 else 1e6 * state.in_flight
        return ewma * max(1.0, (state.in_flight + 1) / (state.load or 1.0))

    def labels(self, node: Node) -> Mapping[str, str]:
        state = self._states.get(node.key)
        advertised = _EMPTY if state is None else state.advertised
        if not advertised:
            return node.spec.labels
        return {**advertised, **node.spec.labels}  # what discovery says wins over what the node says

    def learn_labels(self, key: str, labels: Mapping[str, str]) -> None:
        """What a node advertises about itself (device, memory, capacity, --label); from the prober."""
        self._state(key).advertised = MappingProxyType(dict(labels))

    def latency_ewma_s(self, key: str) -> float | None:
        state = self._states.get(key)
        return None if state is None else state.ewma.value()

    def p95_s(self, key: str) -> float | None:
        state = self._states.get(key)
        return None if state is None else state.window.quantile(0.95)

    def breaker(self, key: str) -> BreakerSnapshot:
        return self._state(key).breaker.snapshot()

    # ------------------------------------------------------------------ picking

    def check_strategy(self, name: str | None) -> str:
        chosen = name or self.default_strategy
        if chosen not in self._strategies:
            raise UnknownStrategy(f"unknown strategy {chosen!r}; available: {self.strategy_names}")
        return chosen

    def _admits(self, key: str) -> bool:
        return self._state(key).breaker.allows() and not self.trust.quarantined(key)

    def _in_panic(self, admitted: int, total: int) -> bool:
        return admitted == 0 or admitted * 100 < self.config.panic_threshold * total

    def pick(
        self,
        model: str,
        *,
        strategy: str | None = None,
        exclude: frozenset[str] = frozenset(),
        affinity_key: str | None = None,
    ) -> Lease | None:
        """A lease on a node for `model`, avoiding `exclude`d keys; None when there is none."""
        strategy_obj = self._strategies[self.check_strategy(strategy)]
        nodes = self.candidates(model)
        if exclude:
            nodes = tuple(node for node in nodes if node.key not in exclude)
        if not nodes:
            return None
        admitted = [node for node in nodes if self._admits(node.key)]
        panic = self._in_panic(len(admitted), len(nodes))
        chosen: Node | None
        if panic:
            chosen = self._least_bad(nodes)
            self.panic_picks += 1
        else:
            limit = self.config.max_in_flight
            if limit:
                free = [node for node in admitted if self.in_flight(node.key) < limit]
                admitted = free or admitted  # all busy: spill over rather than refuse
            chosen = strategy_obj.choose(PickContext(model, affinity_key), admitted, self, self._rng)
        if chosen is None:
            return None
        state = self._state(chosen.key)
        state.in_flight += 1
        load = state.load
        state.load = state.in_flight if load is None else load + (state.in_flight - load) * _LOAD_WEIGHT
        trial = state.breaker.acquire() if not panic else False
        return Lease(chosen, self, trial=trial, panic=panic)

    def _least_bad(self, nodes: tuple[Node, ...]) -> Node:
        """In panic: not quarantined before quarantined, then the fewest trips, then the soonest back."""

        def badness(node: Node) -> tuple[bool, int, float]:
            snap = self._state(node.key).breaker.snapshot()
            return self.trust.quarantined(node.key), snap.trips, snap.open_for_s

        best = min(badness(node) for node in nodes)
        return self._rng.choice([node for node in nodes if badness(node) == best])

    def panic_models(self) -> list[str]:
        """Models every one of whose probed-healthy nodes is ejected or quarantined right now."""
        return sorted(
            model
            for model, nodes in self._by_model().items()
            if self._in_panic(sum(self._admits(node.key) for node in nodes), len(nodes))
        )

    # ------------------------------------------------------------------ feedback

    def _report(self, key: str, latency_s: float, error: NodeCallError | None, *, trial: bool) -> None:
        state = self._states.get(key)
        if state is None:
            return
        if error is None:
            state.breaker.record_success(trial=trial)
            state.ewma.observe(latency_s)
            state.window.observe(latency_s)
        elif not error.retryable:  # a 4xx: the node judged the request, so the node itself is fine
            state.breaker.record_success(trial=trial)
        else:
            state.breaker.record_failure(trial=trial)
            # A failure is no evidence of speed: a node failing fast must not look attractive.
            state.ewma.observe(max(latency_s, 2 * (state.ewma.value() or latency_s)))
            if isinstance(error, NodeUnreachable):
                self.report_unreachable(key, error.message)

    def _release(self, key: str, *, trial: bool) -> None:
        state = self._states.get(key)
        if state is None:
            return
        state.in_flight = max(state.in_flight - 1, 0)
        if trial:
            state.breaker.release_trial()
        if not state.in_flight and self._registry.get(key) is None:
            del self._states[key]  # removed while in flight: forget it now

    def report_unreachable(self, key: str, reason: str) -> None:
        """Passive health: a node that refuses connections is taken out until a probe brings it back."""
        self._registry.update(key, status=NodeStatus.OFFLINE, last_error=reason)

    def status(self, node: Node) -> NodeStatus:
        """CONTRACT §4 state as users see it: probes first, then breaker/quarantine, then the busy limit."""
        if node.status is not NodeStatus.ONLINE:
            return node.status
        if not self._admits(node.key):
            return NodeStatus.ERROR
        if self.config.max_in_flight and self.in_flight(node.key) >= self.config.max_in_flight:
            return NodeStatus.BUSY
        return NodeStatus.ONLINE
