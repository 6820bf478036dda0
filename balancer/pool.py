"""The pool: which healthy nodes serve which model, what is known about each, and `pick()`.

Per node it keeps requests in flight, a peak EWMA and a p95 of latency, a circuit breaker fed by
outlier detection, and trust (via the shared `TrustLedger`). Which nodes may take a model's next
request (online and serving it → breaker admits and not quarantined → not busy) is an immutable
`Picker` per model (`balancer.picker`), rebuilt only when one of those inputs changes: registry
events, breaker transitions (`on_change`), quarantines (`TrustLedger.version`), busy-limit
crossings, and the timed ends of ejections and quarantines (`Picker.expires`). So `pick()` is
synchronous, never waits and costs the same with 3 nodes or 300 before its strategy runs. When
none is admitted (or fewer than `panic_threshold` percent), the pool is in panic for that model
and routes to the least-bad node rather than failing everything, as Envoy's panic threshold does;
panic listeners hear of every such pick. Each attempt reports back through its `Lease`, which is
how breakers, latency and the node's state learn.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType

from balancer.breaker import BreakerSnapshot, BreakerState
from balancer.latency import Clock
from balancer.node_state import NodeState, PoolConfig, advertised_limit
from balancer.picker import EMPTY_PICKER, Picker, in_panic
from balancer.strategies import PickContext, Restricting, Strategy
from balancer.trust import TrustLedger, TrustPolicy
from discovery.node import Node, NodeStatus
from discovery.registry import NodeEvent, NodeRegistry, NodeRemoved
from worker.errors import NodeBusy, NodeCallError, NodeLacksModel, NodeUnreachable

__all__ = ["Lease", "NodePool", "PoolConfig", "UnknownStrategy"]

# The most a run of failures makes a node's latency estimate (each failure doubles it up to this).
_FAILURE_LATENCY_CAP_S = 10.0


class UnknownStrategy(ValueError):
    pass


@dataclass(slots=True)
class Lease:
    """A picked node. `report()` the attempt's outcome, then `done()` to release its in-flight slot."""

    node: Node
    _pool: NodePool
    trial: bool = False  # a half-open breaker's trial request
    panic: bool = False  # picked in panic mode
    sent_in_flight: int = 1  # the node's requests in flight when this one was sent, itself included
    _released: bool = field(default=False)
    _reported: bool = field(default=False)

    def report(self, latency_s: float, error: NodeCallError | None = None) -> None:
        if not self._reported:
            self._reported = True
            self._pool._report(self.node.key, latency_s, error, trial=self.trial, load=self.sent_in_flight)

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
        # Strategies that rule nodes out (capability): panic and spill-over are judged among the rest.
        self._restricting = {name: s for name, s in strategies.items() if isinstance(s, Restricting)}
        self.default_strategy = default_strategy
        self._rng = rng or random.Random()
        self.config = config or PoolConfig()
        self._clock: Clock = clock or time.monotonic
        self.trust = trust or TrustLedger(TrustPolicy(), self._clock)
        self._states: dict[str, NodeState] = {}
        self._candidates: dict[str, tuple[Node, ...]] | None = None
        self._pickers: dict[str, Picker] = {}  # by model; only models some online node serves
        self._trust_version = self.trust.version
        self._panic_listeners: list[Callable[[str], None]] = []
        self._ejection_listeners: list[Callable[[str], None]] = []
        self.panic_picks = 0
        registry.subscribe(self._on_event)

    # ------------------------------------------------------------------ membership

    @property
    def strategy_names(self) -> list[str]:
        return sorted(self._strategies)

    def _on_event(self, event: NodeEvent) -> None:
        self._candidates = None  # rebuilt on the next pick, and the pickers with them
        self._pickers.clear()
        if isinstance(event, NodeRemoved):
            key = event.node.key
            state = self._states.get(key)
            if state is None or not state.in_flight:
                self._states.pop(key, None)
            self.trust.forget(key)

    def _state(self, key: str) -> NodeState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = NodeState(self.config, self._clock, partial(self._breaker_changed, key))
        return state

    def _breaker_changed(self, key: str) -> None:
        self._invalidate(key)
        state = self._states.get(key)
        if state is not None and state.breaker.state is BreakerState.OPEN:  # a trip: the node is ejected
            for listener in self._ejection_listeners:
                listener(key)

    def _invalidate(self, key: str) -> None:
        """Something about `key`'s admission changed: drop the pickers of the models it serves."""
        node = self._registry.get(key)
        if node is not None:
            for model in node.models:
                self._pickers.pop(model, None)

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
        """What a request sent now should take: the peak EWMA plus the queue beyond the usual one.

        Finagle multiplies the raw EWMA by (in flight + 1). The EWMA already contains the queueing
        of the load it was measured under, so on nodes whose latency grows with load (few model
        threads, busy cores) that counts the queue twice: a fast node with two requests in flight
        then looks as expensive as an idle node ten times slower (tests/unit/balancer/
        test_latency_sim.py: 0.9 % of the traffic on that node at concurrency 8 instead of 0.02 %).
        So only the requests beyond the load the answers were observed at (`PeakEwma.load`, blended
        with the same weights as the latencies) count, each for the node's typical time per request
        at that load (`PeakEwma.mean` over the load): cost = peak + (in flight + 1 - load) x mean /
        load, never below the peak. Never a discount, or a slow node, which holds many requests at
        once because each takes long (Little's law), would look cheap exactly because it is slow.

        Three things this replaced were measured in `bench balance` to send the 10x-slower node
        its traffic there (0.9-6 % of it, where 1 % already sets the p99). The load was a running
        average of the in-flight count at picks, kept apart from the latencies: it moved only when
        the node was picked, so a shunned node kept what an earlier regime taught it (round
        robin's "usually 7 in flight") and took bursts of up to 5 requests at once with no
        in-flight penalty. The whole peak was multiplied by the in-flight ratio: right after a
        pause of the gateway, when every fast node had just peaked and the requests held back by
        the pause all went out at once, a fast node with twice its usual queue cost twice
        its pause-inflated peak, more than the slow node. And peaks faded by time only
        (`PeakEwma` says more).
        """
        state = self._states.get(key)
        if state is None:
            return 0.0
        peak, mean, load = state.ewma.value(), state.ewma.mean(), state.ewma.load()
        if peak is None or mean is None or load is None:  # never observed: try it while idle, not a flood of it
            return 0.0 if state.in_flight == 0 else 1e6 * state.in_flight
        return peak + max(0.0, state.in_flight + 1 - load) * mean / load

    def labels(self, node: Node) -> Mapping[str, str]:
        state = self._states.get(node.key)
        advertised = None if state is None else state.advertised
        if not advertised:
            return node.spec.labels
        return {**advertised, **node.spec.labels}  # what discovery says wins over what the node says

    def learn_labels(self, key: str, labels: Mapping[str, str]) -> None:
        """What a node advertises about itself (device, memory, capacity, --label); from the prober.

        A node started with `--max-concurrency N` advertises `max_concurrency`; unless the operator
        set `DISTINFER_NODE_MAX_IN_FLIGHT`, the node counts as busy at N requests in flight, so load
        goes to nodes with a free slot before it queues at a full one.
        """
        node = self._registry.get(key)
        if node is None:
            return  # removed while its probe ran: a state made now would never be freed
        state = self._state(key)
        state.advertised = MappingProxyType(dict(labels))
        merged = self.labels(node)  # discovery's labels win, as in labels()
        limit = self.config.max_in_flight or advertised_limit(merged)
        if limit != state.limit:
            state.limit = limit
            self._invalidate(key)

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

    def add_ejection_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node key)` each time a node's breaker trips (synchronously: it must not block)."""
        self._ejection_listeners.append(listener)

    def add_panic_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener(model)` on every pick made in panic mode (synchronously: it must not block)."""
        self._panic_listeners.append(listener)

    def picker(self, model: str) -> Picker:
        """The model's current picker: built on first use, rebuilt after a change or once it expires."""
        if self.trust.version != self._trust_version:  # a quarantine began or ended somewhere
            self._trust_version = self.trust.version
            self._pickers.clear()
        picker = self._pickers.get(model)
        if picker is None or (picker.expires != math.inf and self._clock() >= picker.expires):
            nodes = self._by_model().get(model)
            if nodes is None:
                return EMPTY_PICKER  # not cached: callers must not grow the table by naming models
            picker = self._pickers[model] = self._build(nodes)
        return picker

    def _build(self, nodes: tuple[Node, ...]) -> Picker:
        expires = math.inf
        admitted: list[Node] = []
        for node in nodes:
            breaker = self._state(node.key).breaker
            allowed = breaker.allows()
            reopens = breaker.reopens_at
            if reopens is not None:
                expires = min(expires, reopens)
            if self.trust.quarantined(node.key):
                expires = min(expires, self.trust.quarantine_ends(node.key) or math.inf)
            elif allowed:
                admitted.append(node)
        keys = frozenset(node.key for node in admitted)
        return self._snapshot(nodes, admitted, keys, expires)

    def _snapshot(
        self,
        nodes: tuple[Node, ...],
        admitted: list[Node],
        keys: frozenset[str],
        expires: float,
        *,
        again: bool = False,
    ) -> Picker:
        """The picker over `admitted`. `again`: for a retry or hedge, which never goes to a node that
        asked to be left alone (429) while it waits; the first attempt spills over to one if all are busy."""
        if in_panic(len(admitted), len(nodes), self.config.panic_threshold):
            return Picker(nodes, frozenset(n.key for n in nodes), keys, (), True, self._least_bad(nodes), expires)
        ready: list[Node] = admitted
        spill: list[Node] = []
        states = [self._state(node.key) for node in admitted]
        if any(state.limit or state.busy_until for state in states):
            now = self._clock()
            for state in states:
                if state.busy_until and state.busy_until <= now:
                    state.busy_until = 0.0  # its wait is over
            backing_off = [state.busy_until for state in states if state.busy_until]
            expires = min(expires, *backing_off) if backing_off else expires  # back in once its wait ends
            usable = [node for node in admitted if not self._states[node.key].busy_until] if again else admitted
            free = [node for node in usable if not self._busy(node.key)]
            ready = free or usable  # all busy: spill over rather than refuse
            spill = usable if len(usable) > len(ready) else []
        # Admitted: their breakers were just asked, so a half-open one has a trial slot free.
        trial = tuple(node for node in ready if self._states[node.key].breaker.half_open)
        return Picker(
            nodes, frozenset(n.key for n in nodes), keys, tuple(ready), False, (), expires, tuple(spill), trial
        )

    def _eligible(self, picker: Picker, eligible: Sequence[Node], *, again: bool) -> Picker:
        """The picker over the nodes a restricting strategy allows; the same picker if it allows all."""
        if len(eligible) == len(picker.nodes):
            return picker
        if not eligible:
            return EMPTY_PICKER
        admitted = [node for node in eligible if node.key in picker.admitted]
        keys = frozenset(node.key for node in admitted)
        return self._snapshot(tuple(eligible), admitted, keys, picker.expires, again=again)

    def _without(self, picker: Picker, exclude: frozenset[str]) -> Picker:
        """The picker minus nodes already tried (a retry, a hedge): built per call, O(nodes)."""
        nodes = tuple(node for node in picker.nodes if node.key not in exclude)
        if not nodes:
            return EMPTY_PICKER
        admitted = [node for node in nodes if node.key in picker.admitted]
        return self._snapshot(nodes, admitted, picker.admitted - exclude, picker.expires, again=True)

    def pick(
        self,
        model: str,
        *,
        strategy: str | None = None,
        exclude: frozenset[str] = frozenset(),
        affinity_key: str | None = None,
        again: bool | None = None,
    ) -> Lease | None:
        """A lease on a node for `model`, avoiding `exclude`d keys; None when there is none.

        `again`: a retry or hedge of a request already sent (default: whether it excludes any node)."""
        strategy_obj = self._strategies.get(strategy or self.default_strategy)
        if strategy_obj is None:
            strategy_obj = self._strategies[self.check_strategy(strategy)]  # raises UnknownStrategy
        picker = self.picker(model)
        if exclude and not exclude.isdisjoint(picker.keys):
            picker = self._without(picker, exclude)
        context = PickContext(model, affinity_key, bool(exclude) if again is None else again)
        restricting = self._restricting.get(strategy_obj.name)
        if restricting is not None and picker.nodes:
            picker = self._eligible(picker, restricting.eligible(context, picker.nodes, self), again=bool(exclude))
        if not picker.nodes:
            return None
        panic = picker.panic
        chosen: Node | None
        if panic:
            chosen = self._rng.choice(picker.least_bad)
            self.panic_picks += 1
            for listener in self._panic_listeners:
                listener(model)
        else:
            # Sessions stay where they live (model_affinity): a trial comes when the hash picks the node.
            trying = picker.trial if picker.trial and strategy_obj.name != "model_affinity" else ()
            chosen = strategy_obj.choose(context, trying, self, self._rng) if trying else None
            # Empty for a retry or hedge when every node left is backing off (strategies need one).
            if chosen is None and picker.ready:
                chosen = strategy_obj.choose(context, picker.ready, self, self._rng)
            if chosen is None and picker.spill:  # none it may use among the free: a busy one, not a refusal
                chosen = strategy_obj.choose(context, picker.spill, self, self._rng)
        if chosen is None:
            return None
        state = self._state(chosen.key)
        state.in_flight += 1
        if state.in_flight == state.limit:
            self._invalidate(chosen.key)  # it just became busy
        trial = state.breaker.acquire() if not panic else False
        return Lease(chosen, self, trial=trial, panic=panic, sent_in_flight=state.in_flight)

    def _least_bad(self, nodes: tuple[Node, ...]) -> tuple[Node, ...]:
        """In panic: not quarantined before quarantined, then the fewest trips, then the soonest back.

        All the nodes tied for least bad; the pick draws one. Frozen in a picker, the order still
        holds later: every term but the time left changes only through a rebuild, and the time left
        shrinks alike for every ejected node (until one comes back, which is the picker's expiry).
        """

        def badness(node: Node) -> tuple[bool, int, float]:
            snap = self._state(node.key).breaker.snapshot()
            return self.trust.quarantined(node.key), snap.trips, snap.open_for_s

        ranked = [(badness(node), node) for node in nodes]
        best = min(rank for rank, _ in ranked)
        return tuple(node for rank, node in ranked if rank == best)

    def panic_models(self) -> list[str]:
        """Models every one of whose probed-healthy nodes is ejected or quarantined right now."""
        return sorted(model for model in self._by_model() if self.picker(model).panic)

    def panic_states(self) -> dict[str, bool]:
        """Every model some node lists (healthy or not) and whether it is in panic now (for metrics)."""
        states = {model: False for node in self._registry.nodes() for model in node.models}
        states.update((model, self.picker(model).panic) for model in self._by_model())
        return states

    # ------------------------------------------------------------------ feedback

    def _report(self, key: str, latency_s: float, error: NodeCallError | None, *, trial: bool, load: int = 1) -> None:
        state = self._states.get(key)
        if state is None:
            return
        if error is None:
            if state.busy_until:  # it served a request spilled over to it: it can take work again
                state.busy_until = 0.0
                self._invalidate(key)
            state.breaker.record_success(trial=trial)
            state.ewma.observe(latency_s, load)
            state.window.observe(latency_s)
        elif not error.retryable:  # a 4xx: the node judged the request, so the node itself is fine
            state.breaker.record_success(trial=trial)
        elif isinstance(error, NodeLacksModel):
            # Unloaded since the prober last looked (it notices within an interval): the node is fine.
            if trial:
                state.breaker.release_trial()
        elif isinstance(error, NodeBusy):
            # Busy (429, 408), not broken: left alone for its Retry-After (round robin and weighted
            # read no latency: they kept sending it every nth request) and a slower estimate after;
            # its breaker is left alone (tripping it would pile its load on the others, who then shed).
            self._back_off(key, state, error.retry_after_s)
            doubled = min(2 * (state.ewma.value() or latency_s), _FAILURE_LATENCY_CAP_S)
            state.ewma.observe(max(latency_s, doubled), load)
            if trial:  # a half-open breaker's trial that gave no verdict: its slot goes back for the next
                state.breaker.release_trial()
        else:
            state.breaker.record_failure(trial=trial)
            # A failure is no evidence of speed: a node failing fast must not look attractive. Doubling
            # per failure, but bounded: 18 failures in a row once made it 648 s, and a recovered node
            # then looked that slow until many seconds of successes had blended it back down.
            doubled = min(2 * (state.ewma.value() or latency_s), _FAILURE_LATENCY_CAP_S)
            state.ewma.observe(max(latency_s, doubled), load)
            if isinstance(error, NodeUnreachable):
                self.report_unreachable(key, error.message)

    def _back_off(self, key: str, state: NodeState, retry_after_s: float | None) -> None:
        wait = self.config.busy_backoff_s if retry_after_s is None else retry_after_s
        until = self._clock() + min(max(wait, 0.0), self.config.busy_backoff_max_s)
        if until > state.busy_until:
            state.busy_until = until
            self._invalidate(key)  # its pickers rebuild without it, and again once the wait is over

    def _release(self, key: str, *, trial: bool) -> None:
        state = self._states.get(key)
        if state is None:
            return
        state.in_flight = max(state.in_flight - 1, 0)
        if state.in_flight == state.limit - 1:
            self._invalidate(key)  # no longer busy
        if trial:
            state.breaker.release_trial()
        if not state.in_flight and self._registry.get(key) is None:
            del self._states[key]  # removed while in flight: forget it now

    def _busy(self, key: str) -> bool:
        state = self._states.get(key)
        if state is None:
            return False
        return 0 < state.limit <= state.in_flight or (state.busy_until > 0 and self._clock() < state.busy_until)

    def report_unreachable(self, key: str, reason: str) -> None:
        """Passive health: a node that refuses connections is taken out until a probe brings it back."""
        self._registry.update(key, status=NodeStatus.OFFLINE, last_error=reason)

    def status(self, node: Node) -> NodeStatus:
        """CONTRACT §4 state as users see it: probes first, then breaker/quarantine, then the busy limit."""
        if node.status is not NodeStatus.ONLINE:
            return node.status
        if not self._admits(node.key):
            return NodeStatus.ERROR
        if self._busy(node.key):
            return NodeStatus.BUSY
        return NodeStatus.ONLINE
