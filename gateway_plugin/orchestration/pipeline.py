"""Pipelines: a DAG of stages whose outputs feed later stages' inputs.

`validate()` checks the whole graph before anything runs (ids, references, cycles, and, where the
models' metadata is known, that every input is given exactly once and every referenced output
exists) and returns every problem at once as a 422. `PipelineRunner.run()` starts every stage at
once; each waits only for its own upstreams, so independent stages overlap. A failed stage fails
its `hard` dependants (they are skipped with an `upstream_failed` problem), never its siblings; a
`soft` dependant still runs, without the inputs its failed upstream would have given, unless its
model declares one of them (it would only be refused by its node). A whole-pipeline deadline, when
given, bounds every attempt of every stage; a stage whose turn comes after it does not run.

    UpstreamFailed (DistinferError)   424 a hard dependency did not succeed, or a needed input is lost
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from discovery.node import ModelInfo
from gateway_plugin.dispatch import InferenceCall, Outcome
from gateway_plugin.errors import DistinferError, Unprocessable
from gateway_plugin.orchestration.calls import Deadline, call_within
from gateway_plugin.orchestration.coalesce import Infer
from worker.config import TensorSpec
from worker.protocol import Tensor

__all__ = ["PipelineRunner", "Stage", "StageResult", "UpstreamFailed", "validate"]

_REFERENCE = re.compile(r"^([^.]+)\.(.+)$")


class UpstreamFailed(DistinferError):
    status, code, title = 424, "upstream_failed", "An upstream stage failed"


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage: its call (explicit inputs only), upstreams, and where its other inputs come from."""

    id: str
    call: InferenceCall
    depends_on: tuple[str, ...] = ()
    input_map: Mapping[str, str] = field(default_factory=dict)  # input name -> "<stage>.<output>"
    retries: int = 0
    soft: bool = False
    declared: frozenset[str] = frozenset()  # the model's inputs by its metadata (empty: unknown)

    def upstreams(self) -> tuple[str, ...]:
        """Explicit dependencies, then every stage `input_map` reads from (once each, in order)."""
        found = dict.fromkeys(self.depends_on)  # ordered and O(1) per lookup: a stage may list thousands
        for reference in self.input_map.values():
            match = _REFERENCE.match(reference)
            if match:
                found.setdefault(match.group(1))
        return tuple(found)


@dataclass(frozen=True, slots=True)
class StageResult:
    status: Literal["ok", "error", "skipped"]
    outcome: Outcome | None = None
    error: DistinferError | None = None
    started_s: float = 0.0  # since the pipeline started
    finished_s: float = 0.0
    attempts: int = 0


def _cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a path `a -> b -> ... -> a`, or None when the graph is acyclic.

    A depth-first walk with its own stack, not recursion: a long chain must not hit Python's
    recursion limit (a RecursionError was a 500).
    """
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in graph:
        if root in state:
            continue
        path: list[str] = [root]
        state[root] = 1
        stack = [iter(graph.get(root, ()))]
        while stack:
            for nxt in stack[-1]:
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if nxt not in state and nxt in graph:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(graph.get(nxt, ())))
                    break
            else:
                state[path.pop()] = 2
                stack.pop()
    return None


def _check_inputs(stage: Stage, stages: Mapping[str, Stage], info_of: Callable[[str], ModelInfo | None]) -> list[str]:
    problems: list[str] = []
    given = [tensor.name for tensor in stage.call.inputs]
    counts = Counter(given)  # not given.count per name: quadratic in a stage's tensors, on the event loop
    twice = sorted({name for name, n in counts.items() if n > 1} | (counts.keys() & stage.input_map.keys()))
    if twice:
        problems.append(f"stage {stage.id!r}: inputs {twice} are given more than once")
    provided = set(given) | set(stage.input_map)
    if not provided:
        problems.append(f"stage {stage.id!r}: no inputs and no input_map")
    info = info_of(stage.call.model)
    if info is not None and provided:
        declared = {spec.name for spec in info.inputs}
        if missing := sorted(declared - provided):
            problems.append(f"stage {stage.id!r}: model {info.name!r} needs inputs {missing} that nothing gives")
        if unknown := sorted(provided - declared):
            problems.append(f"stage {stage.id!r}: model {info.name!r} has no inputs {unknown}")
    for name, reference in stage.input_map.items():
        match = _REFERENCE.match(reference)
        if match is None:
            problems.append(f"stage {stage.id!r}: input_map[{name!r}] = {reference!r} is not '<stage>.<output>'")
            continue
        source, output = match.groups()
        if source == stage.id:
            problems.append(f"stage {stage.id!r}: input_map[{name!r}] reads from the stage itself")
        elif source not in stages:
            problems.append(f"stage {stage.id!r}: input_map[{name!r}] refers to unknown stage {source!r}")
        else:
            upstream = info_of(stages[source].call.model)
            kept = stages[source].call.outputs
            produced = None if upstream is None else next((s for s in upstream.outputs if s.name == output), None)
            if upstream is not None and produced is None:
                problems.append(
                    f"stage {stage.id!r}: stage {source!r} (model {upstream.name!r}) has no output {output!r}"
                )
            elif kept and output not in kept:
                problems.append(
                    f"stage {stage.id!r}: input_map[{name!r}] reads {output!r}, which stage {source!r} leaves out"
                    f" of its outputs {list(kept)}"
                )
            elif produced is not None and info is not None:
                wanted = next((spec for spec in info.inputs if spec.name == name), None)
                if wanted is not None and (mismatch := _mismatch(produced, wanted)):
                    problems.append(f"stage {stage.id!r}: input {name!r} from {reference!r}: {mismatch}")
    return problems


def _mismatch(produced: TensorSpec, wanted: TensorSpec) -> str | None:
    """Why an upstream output cannot be a downstream input as it is, by the models' metadata (-1: any size)."""
    if produced.datatype != wanted.datatype:
        return f"datatype {produced.datatype}, model expects {wanted.datatype}"
    dims = zip(produced.shape, wanted.shape, strict=False)
    if len(produced.shape) != len(wanted.shape) or any(a != b and -1 not in (a, b) for a, b in dims):
        return f"shape {list(produced.shape)}, model expects {list(wanted.shape)}"
    return None


def validate(stages: Sequence[Stage], info_of: Callable[[str], ModelInfo | None]) -> None:
    """Every problem of the graph at once, as one 422; nothing has run yet."""
    problems: list[str] = []
    counts = Counter(stage.id for stage in stages)
    if duplicates := sorted(i for i, n in counts.items() if n > 1):
        problems.append(f"stage ids {duplicates} are used more than once")
    by_id = {stage.id: stage for stage in stages}
    for stage in stages:
        for upstream in stage.depends_on:
            if upstream == stage.id:
                problems.append(f"stage {stage.id!r} depends on itself")
            elif upstream not in by_id:
                problems.append(f"stage {stage.id!r} depends on unknown stage {upstream!r}")
        problems.extend(_check_inputs(stage, by_id, info_of))
    graph: dict[str, list[str]] = {}
    for stage in stages:  # a repeated id merges its edges: a cycle through either copy is still found
        graph.setdefault(stage.id, []).extend(u for u in stage.upstreams() if u in by_id and u != stage.id)
    if cycle := _cycle(graph):
        problems.append(f"the stages form a cycle: {' -> '.join(reversed(cycle))}")
    if problems:
        raise Unprocessable(problems[0], errors=[{"msg": p} for p in problems])


class PipelineRunner:
    def __init__(self, infer: Infer, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._infer = infer
        self._clock = clock

    async def run(self, stages: Sequence[Stage], *, timeout_s: float | None = None) -> dict[str, StageResult]:
        """Run a validated pipeline within `timeout_s`; every stage ends `ok`, `error` or `skipped`."""
        start = self._clock()
        deadline = Deadline("pipeline", start, timeout_s)
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[StageResult]] = {s.id: loop.create_future() for s in stages}

        async def stage_task(stage: Stage) -> None:
            try:
                result = await self._stage(stage, futures, start, deadline)
            except Exception as exc:  # a stage must always settle, or its dependants would wait forever
                now = self._clock() - start
                result = StageResult(
                    "error", error=DistinferError(f"stage failed: {type(exc).__name__}"), finished_s=now
                )
            futures[stage.id].set_result(result)

        tasks = [asyncio.create_task(stage_task(stage)) for stage in stages]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return {stage.id: futures[stage.id].result() for stage in stages}

    async def _stage(
        self, stage: Stage, futures: Mapping[str, asyncio.Future[StageResult]], start: float, deadline: Deadline
    ) -> StageResult:
        upstream = {name: await asyncio.shield(futures[name]) for name in stage.upstreams()}
        failed = sorted(name for name, result in upstream.items() if result.status != "ok")
        begun = self._clock() - start
        if failed and not stage.soft:
            skipped = UpstreamFailed(f"stage {stage.id!r} did not run: upstream {failed} failed")
            return StageResult("skipped", error=skipped, started_s=begun, finished_s=begun)
        lost = sorted(name for name, ref in stage.input_map.items() if upstream[ref.split(".", 1)[0]].outcome is None)
        if needed := [name for name in lost if name in stage.declared]:
            detail = f"stage {stage.id!r} did not run: model {stage.call.model!r} needs inputs {needed}"
            skipped = UpstreamFailed(f"{detail}, which failed upstream {failed} would have given")
            return StageResult("skipped", error=skipped, started_s=begun, finished_s=begun)
        inputs = list(stage.call.inputs)
        for name, reference in stage.input_map.items():
            source, output = reference.split(".", 1)
            result = upstream[source]
            if result.outcome is None:
                continue  # a soft dependency that failed, and an input the model may go without
            tensor = next((t for t in result.outcome.outputs if t.name == output), None)
            if tensor is None:
                error = Unprocessable(f"stage {source!r} returned no output {output!r} for stage {stage.id!r}")
                return StageResult("error", error=error, started_s=begun, finished_s=self._clock() - start)
            inputs.append(Tensor(name, tensor.datatype, tensor.data))
        call = replace(stage.call, inputs=inputs)
        attempts = 0
        while True:
            remaining = deadline.remaining(self._clock())
            if remaining <= 0:
                if attempts == 0:
                    spent = deadline.spent()
                    return StageResult("skipped", error=spent, started_s=begun, finished_s=self._clock() - start)
                break  # the last attempt's own error stands
            attempts += 1
            answer = await call_within(self._infer, call, remaining)
            retryable = isinstance(answer, DistinferError) and answer.status >= 500
            if not retryable or attempts > stage.retries:
                break
        finished = self._clock() - start
        if isinstance(answer, Outcome):
            return StageResult("ok", outcome=answer, started_s=begun, finished_s=finished, attempts=attempts)
        if attempts > 1:  # the node-level error counts its own attempts; say the stage's too
            answer = _retold(answer, f"stage {stage.id!r} failed {attempts} times, the last: {answer.detail}")
        return StageResult("error", error=answer, started_s=begun, finished_s=finished, attempts=attempts)


def _retold(error: DistinferError, detail: str) -> DistinferError:
    """The same error (class, status, headers, extra fields) with another detail."""
    retold = copy.copy(error)
    retold.detail = detail
    retold.args = (detail,)
    return retold
