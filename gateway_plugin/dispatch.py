"""One logical inference call: pick a node, call it, retry elsewhere, hedge, fall back to local, keep the deadline.

Batch, parallel, pipeline and tasks are compositions of `Dispatcher.infer`; nothing else in the
gateway talks to nodes. The policies live in `balancer` (which node, when to retry, the retry
budget, when to hedge, result validation); this module only applies them around attempts and
reports each attempt's outcome back through its lease (breakers, latency, node state).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from balancer.hedging import HedgePolicy, race
from balancer.pool import Lease, NodePool
from balancer.retry import RetryBudget, RetryPolicy
from balancer.strategies import session_key
from balancer.validation import Validator
from discovery.node import Node
from gateway_plugin.errors import DeadlineExceeded, NoCapacity, UnknownModel, from_worker
from gateway_plugin.local import LocalInference
from gateway_plugin.telemetry.observer import NO_OBSERVER, DispatchObserver
from worker.client import ForwardedAnswer, NodeClient, RawMessage
from worker.errors import NodeCallError, NodeTimeout
from worker.protocol import DecodedResponse, Tensor

__all__ = ["Dispatcher", "InferenceCall", "Outcome"]

log = logging.getLogger(__name__)

_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class InferenceCall:
    model: str
    inputs: Sequence[Tensor]
    request_id: str
    timeout_s: float
    outputs: Sequence[str] | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strategy: str | None = None
    affinity_key: str | None = None  # session for model_affinity; else the parameters' session_id
    local_fallback: bool = True  # False: compat falls back to the host's own handler instead
    # The client's own v2 body (the relay): sent to nodes as is, and their answer returned unread.
    # `inputs` must still hold its tensors, for nodes that cannot take its encoding and for local fallback.
    raw: RawMessage | None = None
    # A copy of a request answered elsewhere, sent only to compare (compat's shadow mode): it is not
    # a request of the cluster's, so it counts in no request metric, /stats, cache or retry budget.
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    model: str
    model_version: str | None
    outputs: list[Tensor]
    node_id: str | None
    mode: Literal["distributed", "local"]
    attempts: int
    latency_ms: float
    hedged: bool = False  # the answer came from a hedged copy
    panic: bool = False  # the node was picked in panic mode
    raw: RawMessage | None = None  # the node's answer as bytes (a raw call), `outputs` then empty


@dataclass(slots=True)
class _Run:
    """The state of one call across its attempts (and hedges)."""

    call: InferenceCall
    strategy: str
    deadline: float
    affinity: str | None
    tried: set[str] = field(default_factory=set)
    attempts: int = 0


@dataclass(slots=True)
class _Answer:
    node: Node
    response: DecodedResponse | ForwardedAnswer
    panic: bool


class Dispatcher:
    def __init__(
        self,
        pool: NodePool,
        client: NodeClient,
        *,
        retry: RetryPolicy,
        local: LocalInference | None = None,
        binary: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        budget: RetryBudget | None = None,
        hedge: HedgePolicy | None = None,
        attempt_timeout_s: float | None = None,
        validator: Validator | None = None,
        observer: DispatchObserver = NO_OBSERVER,
    ) -> None:
        self._pool = pool
        self._client = client
        self._retry = retry
        self._local = local
        self._binary = binary
        self._clock = clock
        self._budget = budget
        self._hedge = hedge or HedgePolicy()
        self._attempt_timeout = attempt_timeout_s
        self._validator = validator
        self._observer = observer  # telemetry: metrics, spans, stats, request logs

    async def infer(self, call: InferenceCall) -> Outcome:
        strategy = self._pool.check_strategy(call.strategy)
        observer = NO_OBSERVER if call.shadow else self._observer  # its nodes' attempts still count
        with observer.dispatch(call.model, call.request_id, strategy) as seen:
            outcome = await self._infer(call, strategy)
            seen.finished(outcome.node_id, outcome.mode, outcome.attempts)
        return outcome

    async def _infer(self, call: InferenceCall, strategy: str) -> Outcome:
        start = self._clock()
        run = _Run(
            call,
            strategy,
            start + call.timeout_s,
            call.affinity_key or session_key(call.parameters),
        )
        if self._budget is not None and not call.shadow:  # shadow copies earn real traffic no retries
            self._budget.deposit()
        last_error: NodeCallError | None = None
        while last_error is None or self._retry.should_retry(last_error, run.attempts):
            if self._clock() >= run.deadline:
                raise DeadlineExceeded(_spent(call, run.attempts))
            # The budget pays for retries really sent: taken after the deadline check, given back
            # when no node can take it (a retry spent either way left real requests short).
            retry = last_error is not None
            if retry and not self._withdraw(run):
                break
            lease = self._pick(run)
            if lease is None and run.tried:
                # No other node left: retry on one already tried rather than fail (as Envoy does when
                # its retry host predicate finds no other host). A dead node is offline by now.
                lease = self._pick(run, frozenset())
            if lease is None:
                if retry and self._budget is not None and not run.call.shadow:
                    self._budget.refund()
                break
            try:
                if self._hedge.enabled:
                    answer, hedged = await self._attempt_hedged(run, lease)
                else:
                    answer, hedged = await self._attempt(run, lease), False
            except NodeCallError as exc:
                last_error = exc
                log.warning("attempt %d of %s failed: %s", run.attempts, call.request_id, exc.message)
                if not exc.retryable:
                    raise from_worker(exc) from exc
                continue
            if self._validator is not None and self._validator.enabled:
                # Read (decoded, for a relayed answer) only if sampled, off the request's path.
                read = functools.partial(self._outputs, answer)
                self._validator.offer(answer.node.key, read, lambda skip: self._rerun(run, skip))
            response = answer.response
            forwarded = response.message if isinstance(response, ForwardedAnswer) else None
            return Outcome(
                model=response.model_name,
                model_version=response.model_version,
                outputs=[] if isinstance(response, ForwardedAnswer) else response.outputs,
                node_id=answer.node.node_id,
                mode="distributed",
                attempts=run.attempts,
                latency_ms=(self._clock() - start) * 1000,
                hedged=hedged,
                panic=answer.panic,
                raw=forwarded,
            )
        return await self._without_cluster(call, start, run.deadline, run.attempts, last_error)

    def _withdraw(self, run: _Run) -> bool:
        """A retry or hedge from the budget. A shadow copy paid nothing in, so it takes nothing out:
        its retries are bounded by the attempts and compat's background limit alone."""
        return self._budget is None or run.call.shadow or self._budget.withdraw()

    def _pick(self, run: _Run, exclude: frozenset[str] | None = None) -> Lease | None:
        skip = (frozenset(run.tried) if run.tried else _NONE) if exclude is None else exclude
        return self._pool.pick(
            run.call.model, strategy=run.strategy, exclude=skip, affinity_key=run.affinity, again=bool(run.tried)
        )

    async def _attempt(self, run: _Run, lease: Lease) -> _Answer:
        """One call to one node; its outcome goes back to the pool (breaker, latency) through the lease."""
        node, call = lease.node, run.call
        run.attempts += 1
        run.tried.add(node.key)
        began = self._clock()
        timeout = run.deadline - began
        bounded = self._attempt_timeout is not None and self._attempt_timeout <= timeout
        if self._attempt_timeout is not None:
            timeout = min(timeout, self._attempt_timeout)
        try:
            with self._observer.attempt(call.model, node.node_id, run.attempts) as observed:
                response: DecodedResponse | ForwardedAnswer
                if call.raw is not None and (call.raw.header_length is None or node.binary):
                    response = await self._client.forward(
                        node.url, call.model, call.raw, timeout_s=max(timeout, 0.001), headers=observed.headers
                    )
                else:
                    response = await self._client.infer(
                        node.url,
                        call.model,
                        call.inputs,
                        timeout_s=max(timeout, 0.001),
                        outputs=call.outputs,
                        # Binary off still sends NaN and infinity (a stage's outputs) as binary: JSON has none.
                        binary=node.binary and (self._binary or not json_safe(call.inputs)),
                        request_id=call.request_id,
                        parameters=call.parameters,
                        headers=observed.headers,
                    )
        except NodeCallError as exc:
            # A trial's timeout always counts: unreported, it freed the trial slot, and a hung
            # half-open node took every next request.
            if not isinstance(exc, NodeTimeout) or bounded or lease.trial or self._had_time(node.key, timeout):
                lease.report(self._clock() - began, exc)
            raise
        finally:
            # At once, whatever happened: a slot held until the answer is out would count a slow
            # client's download, or a sharded model's later stages, as load on this node.
            lease.done()  # a cancelled hedge reports nothing: neither success nor failure
        elapsed = self._clock() - began
        if lease.trial:  # a half-open breaker's trial: its verdict must land before anything else is picked
            lease.report(elapsed)
        else:  # a success informs later picks only: no need to delay the answer for it
            self._observer.later(lambda: lease.report(elapsed))
        return _Answer(node, response, lease.panic)

    def _had_time(self, key: str, budget_s: float) -> bool:
        """Whether a node that timed out within `budget_s` (the caller's deadline) had time to answer.

        A caller asking 20 ms of a model that takes 50 ms learns nothing of the node: counted as
        failures, a few such requests opened every healthy node's breaker, for everyone. The timeout
        is the node's fault when the node usually answers within the budget (its p95), or when it
        has no p95 yet (nothing tells it from a hung node then).
        """
        p95 = self._pool.p95_s(key)
        return p95 is None or budget_s >= p95

    async def _attempt_hedged(self, run: _Run, lease: Lease) -> tuple[_Answer, bool]:
        primary = self._attempt(run, lease)
        delay = self._hedge.delay_s(self._pool.p95_s(lease.node.key))  # sorts a latency window: hedging only
        if delay is None or self._clock() + delay >= run.deadline:
            return await primary, False

        def start_hedge() -> Coroutine[Any, Any, _Answer] | None:
            if self._clock() >= run.deadline:
                return None
            second = self._pick(run)
            if second is None:
                return None
            if not self._withdraw(run):
                second.done()
                return None
            return self._attempt(run, second)

        return await race(primary, start_hedge, delay)

    async def _rerun(self, run: _Run, skip: frozenset[str]) -> tuple[str, Sequence[Tensor]] | None:
        """The same request on a node not in `skip`, for result validation (its own deadline)."""
        again = _Run(run.call, run.strategy, self._clock() + run.call.timeout_s, run.affinity)
        lease = self._pick(again, skip)
        if lease is None:
            return None
        answer = await self._attempt(again, lease)
        return answer.node.key, self._outputs(answer)

    def _outputs(self, answer: _Answer) -> Sequence[Tensor]:
        """The answer's tensors; a forwarded answer is decoded only here, for its few readers."""
        response = answer.response
        if isinstance(response, ForwardedAnswer):
            return self._client.decode(response.message).outputs
        return response.outputs

    async def _without_cluster(
        self, call: InferenceCall, start: float, deadline: float, attempts: int, last_error: NodeCallError | None
    ) -> Outcome:
        """The cluster could not serve: run locally if we can, else say why."""
        remaining = deadline - self._clock()
        if remaining <= 0 or (isinstance(last_error, NodeTimeout) and remaining < 0.001):
            raise DeadlineExceeded(_spent(call, attempts))
        if call.local_fallback and self._local is not None and self._local.has(call.model):
            try:
                async with asyncio.timeout(remaining):
                    config, outputs = await self._local.infer(call.model, call.inputs, call.outputs)
            except TimeoutError as exc:
                raise DeadlineExceeded(f"local fallback did not finish within {remaining * 1000:.0f} ms") from exc
            return Outcome(
                model=config.name,
                model_version=config.version,
                outputs=outputs,
                node_id=None,
                mode="local",
                attempts=attempts,
                latency_ms=(self._clock() - start) * 1000,
            )
        # Only a cluster with someone online can tell that a model does not exist.
        if last_error is None and not self._pool.knows(call.model) and self._pool.any_online():
            raise UnknownModel(f"no node and no local copy has model {call.model!r}")
        reason = last_error.message if last_error else "no healthy node serves it"
        raise NoCapacity(f"model {call.model!r} cannot be served now: {reason}")


def json_safe(tensors: Sequence[Tensor]) -> bool:
    """Whether JSON carries these tensors: no NaN or infinity, which nodes refuse in JSON (it has none)."""
    return all(tensor.data.dtype.kind != "f" or bool(np.isfinite(tensor.data).all()) for tensor in tensors)


def _spent(call: InferenceCall, attempts: int) -> str:
    return f"deadline of {call.timeout_s * 1000:.0f} ms spent after {attempts} attempts"
