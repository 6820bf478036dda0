"""Running one sharded model: stage after stage on the nodes that hold each stage.

Relayed (the default): the gateway calls each stage through `Dispatcher.infer` and keeps every
activation it gets back, so when a stage's node dies mid-request the dispatcher re-runs *that
stage only* on another replica, from activations the gateway still holds.

Micro-batches: a request of many rows is cut into micro-batches of `micro_batch` rows that go
through the stages concurrently, so stage 2 works on micro-batch 1 while stage 1 works on
micro-batch 2; outputs are put back together in row order. Concurrent requests pipeline the same
way without any help.

Node-to-node (`forwarding`): the gateway sends the first stage a request that names the nodes of
the later stages (`worker.sharding.forward`); each node hands its activations straight to the
next, saving one gateway round trip per hop. If that chain fails, the request is run again
relayed, from the inputs the gateway holds.

Per-request overrides travel in `parameters`: `shard_micro_batch` (rows, 0 = off) and
`shard_forwarding` (bool); they are not passed on to the stages. The configured micro-batch size
applies only while fewer requests than stages are in flight; a request's own always does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from balancer.pool import Lease, NodePool
from discovery.node import ModelInfo
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import BadRequest, DeadlineExceeded, DistinferError, NoCapacity, UnknownModel, from_worker
from gateway_plugin.services import InferenceDispatcher
from worker.engine import check_inputs
from worker.errors import WorkerError
from worker.protocol import Tensor
from worker.sharding.forward import FORWARD_PARAMETER
from worker.sharding.plan import PipelineSpec

__all__ = ["MICRO_BATCH_PARAMETER", "FORWARDING_PARAMETER", "ShardRunner"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_PIECES_PER_STAGE = 4  # micro-batches in flight per stage, at most

MICRO_BATCH_PARAMETER = "shard_micro_batch"
FORWARDING_PARAMETER = "shard_forwarding"
_OWN_PARAMETERS = frozenset({MICRO_BATCH_PARAMETER, FORWARDING_PARAMETER, FORWARD_PARAMETER})


@dataclass(slots=True)
class _Trace:
    """Which nodes ran each stage, and how many attempts it all took."""

    stages: list[list[str]]
    attempts: int = 0  # node calls (a stage run locally makes none)
    runs: int = 0  # stage runs, wherever they ran
    local: int = 0  # stage runs on the gateway's local fallback

    def add(self, stage: int, node: str | None, attempts: int) -> None:
        name = node or "local"
        if name not in self.stages[stage]:
            self.stages[stage].append(name)
        self.attempts += attempts
        self.runs += 1
        self.local += node is None

    def node_id(self) -> str:
        return ">".join("+".join(names) for names in self.stages)


class ShardRunner:
    """Serves one `PipelineSpec`; `stages` is the dispatcher every stage call goes through."""

    def __init__(
        self,
        spec: PipelineSpec,
        stages: InferenceDispatcher,
        pool: NodePool,
        *,
        micro_batch: int = 0,
        forwarding: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.spec = spec
        self._stages = stages
        self._pool = pool
        self._micro_batch = micro_batch
        self._forwarding = forwarding
        self._clock = clock
        self._in_flight = 0
        self.info = ModelInfo(
            name=spec.name,
            version=spec.version,
            platform="distinfer_pipeline",
            inputs=spec.inputs,
            outputs=spec.outputs,
            max_batch_size=spec.max_batch_size,
            labels=spec.labels,
        )
        # Forwarded chains answer with the last stage's outputs only.
        self._forwardable = len(spec.stages) > 1 and {o.name for o in spec.outputs} <= set(spec.stages[-1].outputs)
        self._sends = _sends(spec)

    def _options(self, parameters: Mapping[str, Any]) -> tuple[int, bool]:
        micro = parameters.get(MICRO_BATCH_PARAMETER)
        if micro is None:
            # The default applies only while fewer requests than stages are in flight: beyond that,
            # concurrent requests keep every stage busy already, and more pieces only cost more calls.
            micro = self._micro_batch if self._in_flight < len(self.spec.stages) else 0
        forwarding = parameters.get(FORWARDING_PARAMETER, self._forwarding)
        if isinstance(micro, bool) or not isinstance(micro, int) or micro < 0:
            raise BadRequest(f"parameters.{MICRO_BATCH_PARAMETER} must be a row count (0: no micro-batches)")
        if not isinstance(forwarding, bool):
            raise BadRequest(f"parameters.{FORWARDING_PARAMETER} must be true or false")
        return micro, forwarding

    async def infer(self, call: InferenceCall) -> Outcome:
        start = self._clock()
        micro, forwarding = self._options(call.parameters)
        passed = {k: v for k, v in call.parameters.items() if k not in _OWN_PARAMETERS}
        wanted = list(call.outputs) if call.outputs else [spec.name for spec in self.spec.outputs]
        if unknown := [name for name in wanted if name not in {spec.name for spec in self.spec.outputs}]:
            raise BadRequest(f"model {self.spec.name!r} has no output {unknown[0]!r}")
        try:  # callers that know nothing of the pipeline (the v2 relay) have not checked the inputs
            check_inputs(self.spec.name, self.spec.inputs, call.inputs, max_batch_size=self.spec.max_batch_size)
        except WorkerError as exc:
            raise from_worker(exc) from exc
        inputs = {tensor.name: tensor for tensor in call.inputs}
        trace = _Trace([[] for _ in self.spec.stages])
        deadline = start + call.timeout_s
        chunks = self._chunks(inputs, micro)
        runs = [
            self._chunk(call, chunk, f"{call.request_id}.m{index}" if len(chunks) > 1 else call.request_id)
            for index, chunk in enumerate(chunks)
        ]
        self._in_flight += 1
        try:
            # A few pieces per stage at once (the pipeline overlaps, nodes can batch them): a request
            # of 1,024 rows cut into rows of 1 made 1,024 stage calls at once on one admission place.
            work = [run(passed, deadline, trace, forwarding) for run in runs]
            results = await _gather(work, limit=_PIECES_PER_STAGE * len(self.spec.stages))
        finally:
            self._in_flight -= 1
        outputs = [_concat(name, [result[name] for result in results]) for name in wanted]
        return Outcome(
            model=self.spec.name,
            model_version=self.spec.version,
            outputs=outputs,
            node_id=trace.node_id(),
            mode="local" if trace.runs and trace.local == trace.runs else "distributed",
            attempts=trace.attempts,
            latency_ms=(self._clock() - start) * 1000,
        )

    def _chunks(self, inputs: dict[str, Tensor], micro: int) -> list[dict[str, Tensor]]:
        rows = {tensor.data.shape[0] if tensor.data.ndim else 1 for tensor in inputs.values()}
        if micro <= 0 or not self.spec.batchable or len(rows) != 1 or (count := rows.pop()) <= micro:
            return [inputs]
        return [
            {name: Tensor(name, t.datatype, t.data[first : first + micro]) for name, t in inputs.items()}
            for first in range(0, count, micro)
        ]

    def _chunk(self, call: InferenceCall, inputs: dict[str, Tensor], request_id: str) -> _ChunkRun:
        return _ChunkRun(self, call, inputs, request_id)

    # ------------------------------------------------------------------ one chunk, relayed

    async def relayed(
        self,
        call: InferenceCall,
        env: dict[str, Tensor],
        request_id: str,
        parameters: Mapping[str, Any],
        deadline: float,
        trace: _Trace,
    ) -> dict[str, Tensor]:
        for index, stage in enumerate(self.spec.stages):
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise DeadlineExceeded(f"deadline spent before stage {index} of {self.spec.name!r}")
            try:
                outcome = await self._stages.infer(
                    InferenceCall(
                        model=stage.model,
                        inputs=[env[name] for name in stage.inputs],
                        request_id=f"{request_id}.s{index}",
                        timeout_s=remaining,
                        outputs=list(stage.outputs),
                        parameters=parameters,
                        strategy=call.strategy,
                        local_fallback=call.local_fallback,
                        shadow=call.shadow,
                    )
                )
            except UnknownModel as exc:
                # The sharded model exists (the gateway serves it): a stage no node lists is an outage.
                where = f"stage {index} ({stage.model}) of sharded model {self.spec.name!r}"
                raise NoCapacity(f"{where}: no online node lists the stage") from exc
            except DistinferError as exc:
                exc.detail = f"stage {index} ({stage.model}) of sharded model {self.spec.name!r}: {exc.detail}"
                exc.args = (exc.detail,)
                raise
            trace.add(index, outcome.node_id, outcome.attempts)
            env.update((tensor.name, tensor) for tensor in outcome.outputs)
        return env

    # ------------------------------------------------------------------ one chunk, node to node

    async def forwarded(
        self,
        call: InferenceCall,
        env: dict[str, Tensor],
        request_id: str,
        parameters: Mapping[str, Any],
        deadline: float,
        trace: _Trace,
    ) -> dict[str, Tensor] | None:
        """The chain run node to node; None when it cannot be (no node for a stage, or the chain failed)."""
        if not self._forwardable:
            return None
        leases: list[Lease] = []
        try:
            for stage in self.spec.stages[1:]:
                lease = self._pool.pick(stage.model, strategy=call.strategy)
                if lease is None:
                    return None
                leases.append(lease)
            remaining = deadline - self._clock()
            hops = [
                {"url": lease.node.url, "model": stage.model, "send": list(self._sends[index + 1])}
                for index, (lease, stage) in enumerate(zip(leases, self.spec.stages[1:], strict=True))
            ]
            first = self.spec.stages[0]
            names = list(dict.fromkeys([*first.inputs, *(n for n in self._sends[1] if n in env)]))
            started = self._clock()
            try:
                outcome = await self._stages.infer(
                    InferenceCall(
                        model=first.model,
                        inputs=[env[name] for name in names],
                        request_id=f"{request_id}.fw",
                        timeout_s=remaining,
                        outputs=[spec.name for spec in self.spec.outputs],
                        parameters={
                            **parameters,
                            FORWARD_PARAMETER: {"hops": hops, "timeout_ms": max(1, int(remaining * 1000))},
                        },
                        strategy=call.strategy,
                        local_fallback=False,
                        shadow=call.shadow,
                    )
                )
            except DeadlineExceeded:
                raise
            except DistinferError as exc:  # a node that does not forward, a dead hop: the relay still can
                log.warning("forwarded chain of %s failed, running it relayed: %s", request_id, exc.detail)
                return None
            for lease in leases:
                lease.report(self._clock() - started)
            trace.add(0, outcome.node_id, outcome.attempts)
            for index, lease in enumerate(leases, start=1):
                trace.add(index, lease.node.node_id, 0)
            env.update((tensor.name, tensor) for tensor in outcome.outputs)
            return env
        finally:
            for lease in leases:
                lease.done()


@dataclass(slots=True)
class _ChunkRun:
    runner: ShardRunner
    call: InferenceCall
    inputs: dict[str, Tensor]
    request_id: str

    async def __call__(
        self, parameters: Mapping[str, Any], deadline: float, trace: _Trace, forwarding: bool
    ) -> dict[str, Tensor]:
        env = dict(self.inputs)
        if forwarding:
            done = await self.runner.forwarded(self.call, env, self.request_id, parameters, deadline, trace)
            if done is not None:
                return done
        return await self.runner.relayed(self.call, env, self.request_id, parameters, deadline, trace)


def _sends(spec: PipelineSpec) -> list[tuple[str, ...]]:
    """For each stage j, what a forwarded chain must hand it: what stages >= j read, made before j."""
    made_before = [{s.name for s in spec.inputs}]
    for stage in spec.stages:
        made_before.append(made_before[-1] | set(stage.outputs))
    sends: list[tuple[str, ...]] = []
    for index in range(len(spec.stages)):
        later = [name for stage in spec.stages[index:] for name in stage.inputs]
        sends.append(tuple(dict.fromkeys(name for name in later if name in made_before[index])))
    return sends


async def _gather(work: Sequence[Coroutine[Any, Any, _T]], *, limit: int) -> list[_T]:
    """Run the chunks together, at most `limit` at once; the first failure cancels the others and is
    raised as it is."""
    if len(work) == 1:
        return [await work[0]]
    slots = asyncio.Semaphore(max(limit, 1))

    async def bounded(item: Coroutine[Any, Any, _T]) -> _T:
        try:
            async with slots:
                return await item
        finally:
            item.close()  # cancelled before its turn, it never started: no "never awaited" warning

    tasks = [asyncio.ensure_future(bounded(item)) for item in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _concat(name: str, parts: list[Tensor]) -> Tensor:
    if len(parts) == 1:
        return parts[0]
    return Tensor(name, parts[0].datatype, np.concatenate([part.data for part in parts], axis=0))
