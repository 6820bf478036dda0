"""One logical inference call: pick a node, call it, retry elsewhere, fall back to local, keep the deadline.

Batch, parallel, pipeline and tasks are compositions of `Dispatcher.infer`; nothing else in the
gateway talks to nodes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from balancer.pool import NodePool
from balancer.retry import RetryPolicy
from gateway_plugin.errors import DeadlineExceeded, NoCapacity, UnknownModel, from_worker
from gateway_plugin.local import LocalInference
from worker.client import NodeClient
from worker.errors import NodeCallError, NodeTimeout, NodeUnreachable
from worker.protocol import Tensor

__all__ = ["Dispatcher", "InferenceCall", "Outcome"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InferenceCall:
    model: str
    inputs: Sequence[Tensor]
    request_id: str
    timeout_s: float
    outputs: Sequence[str] | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strategy: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    model: str
    model_version: str | None
    outputs: list[Tensor]
    node_id: str | None
    mode: Literal["distributed", "local"]
    attempts: int
    latency_ms: float


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
    ) -> None:
        self._pool = pool
        self._client = client
        self._retry = retry
        self._local = local
        self._binary = binary
        self._clock = clock

    async def infer(self, call: InferenceCall) -> Outcome:
        start = self._clock()
        deadline = start + call.timeout_s
        strategy = self._pool.check_strategy(call.strategy)
        tried: set[str] = set()
        attempts = 0
        last_error: NodeCallError | None = None
        while (lease := self._pool.pick(call.model, strategy=strategy, exclude=frozenset(tried))) is not None:
            remaining = deadline - self._clock()
            if remaining <= 0:
                lease.done()
                raise DeadlineExceeded(f"deadline of {call.timeout_s * 1000:.0f} ms spent after {attempts} attempts")
            node = lease.node
            attempts += 1
            tried.add(node.key)
            try:
                response = await self._client.infer(
                    node.url,
                    call.model,
                    call.inputs,
                    timeout_s=remaining,
                    outputs=call.outputs,
                    binary=self._binary and node.binary,
                    request_id=call.request_id,
                    parameters=call.parameters,
                )
            except NodeCallError as exc:
                last_error = exc
                log.warning("attempt %d of %s on %s failed: %s", attempts, call.request_id, node.node_id, exc.message)
                if isinstance(exc, NodeUnreachable):
                    self._pool.report_unreachable(node.key, exc.message)
                if not exc.retryable:
                    raise from_worker(exc) from exc
                if not self._retry.should_retry(exc, attempts):
                    break
                continue
            finally:
                lease.done()
            return Outcome(
                model=response.model_name,
                model_version=response.model_version,
                outputs=response.outputs,
                node_id=node.node_id,
                mode="distributed",
                attempts=attempts,
                latency_ms=(self._clock() - start) * 1000,
            )
        return await self._without_cluster(call, start, deadline, attempts, last_error)

    async def _without_cluster(
        self, call: InferenceCall, start: float, deadline: float, attempts: int, last_error: NodeCallError | None
    ) -> Outcome:
        """The cluster could not serve: run locally if we can, else say why."""
        remaining = deadline - self._clock()
        if remaining <= 0 or (isinstance(last_error, NodeTimeout) and remaining < 0.001):
            raise DeadlineExceeded(f"deadline of {call.timeout_s * 1000:.0f} ms spent after {attempts} attempts")
        if self._local is not None and self._local.has(call.model):
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
