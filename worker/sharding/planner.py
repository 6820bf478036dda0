"""Cutting a model's layers into one contiguous stage per node, sized to each node.

Every node gets a share of the model in proportion to what it offers: a node with twice the
memory should hold about twice the parameters, a node twice as fast about twice the compute. A
stage's *load* is the larger of its parameter share over the node's memory share and its compute
share over the node's speed share; the plan minimises the busiest node's load (1.0 means every
node holds exactly its fair share), which is also what bounds a pipeline's throughput. A stage
must fit its node's memory outright, and ties go to the plan that moves fewer bytes between
nodes. Stages are made of whole layers (`OpGraph.units`), in the order the nodes are given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import accumulate, pairwise

from worker.sharding.errors import PlanError
from worker.sharding.graph import OpGraph, Unit
from worker.sharding.plan import NodeCapacity, ShardPlan, StagePlan

__all__ = ["make_plan", "stage_memory"]

_MB = 1024 * 1024
_Cost = tuple[float, int]  # (busiest load so far, bytes per row crossing the cuts so far)


def stage_memory(param_bytes: int) -> int:
    """What a stage holding `param_bytes` of parameters needs: the graph and runtime take a little more."""
    return int(param_bytes * 1.02) + 256 * 1024


class _Costs:
    def __init__(self, graph: OpGraph, units: Sequence[Unit], nodes: Sequence[NodeCapacity]) -> None:
        self.graph, self.units, self.nodes = graph, units, nodes
        self.params = [0, *accumulate(unit.param_bytes for unit in units)]
        self.flops = [0.0, *accumulate(unit.flops for unit in units)]
        memory, speed = sum(n.memory_bytes for n in nodes), sum(n.speed for n in nodes)
        self.memory_share = [n.memory_bytes / memory for n in nodes]
        self.speed_share = [n.speed / speed for n in nodes]
        self.crossing = [graph.row_bytes(graph.activations(unit.start)) for unit in units]

    def stage(self, node: int, first: int, stop: int) -> _Cost | None:
        """Cost of units [first, stop) on `node`; None when they do not fit its memory."""
        params = self.params[stop] - self.params[first]
        if stage_memory(params) > self.nodes[node].memory_bytes:
            return None
        flops = self.flops[stop] - self.flops[first]
        load = 0.0
        if self.params[-1]:
            load = params / self.params[-1] / self.memory_share[node]
        if self.flops[-1]:
            load = max(load, flops / self.flops[-1] / self.speed_share[node])
        return load, self.crossing[first] if first else 0


def _search(costs: _Costs, layers: int, stages: int) -> list[int] | None:
    """Unit indices where stages 1..k-1 start, minimising (busiest load, crossing bytes); None if none fits."""
    best: list[dict[int, tuple[_Cost, int]]] = [{} for _ in range(stages)]
    for stop in range(1, layers - stages + 2):
        if (cost := costs.stage(0, 0, stop)) is not None:
            best[0][stop] = (cost, 0)
    for node in range(1, stages):
        for stop in range(node + 1, layers - stages + node + 2):
            for first, (before, _) in best[node - 1].items():
                if first >= stop or (cost := costs.stage(node, first, stop)) is None:
                    continue
                total = (max(before[0], cost[0]), before[1] + cost[1])
                if stop not in best[node] or total < best[node][stop][0]:
                    best[node][stop] = (total, first)
    if layers not in best[-1]:
        return None
    starts, stop = [], layers
    for node in range(stages - 1, 0, -1):
        stop = best[node][stop][1]
        starts.append(stop)
    return starts[::-1]


def _explain(graph: OpGraph, units: Sequence[Unit], nodes: Sequence[NodeCapacity]) -> str:
    need = stage_memory(sum(unit.param_bytes for unit in units))
    offered = sum(node.memory_bytes for node in nodes)
    biggest = max(units, key=lambda unit: unit.param_bytes)
    roomiest = max(nodes, key=lambda node: node.memory_bytes)
    why = (
        f"the model's {len(units)} layers need {need / _MB:.1f} MB in all, the nodes offer {offered / _MB:.1f} MB"
        f"; its largest layer ({graph.ops[biggest.start].name}) needs {stage_memory(biggest.param_bytes) / _MB:.1f} MB"
        f" and the roomiest node ({roomiest.name}) offers {roomiest.memory_bytes / _MB:.1f} MB"
    )
    return f"no plan fits: {why}. Add nodes, give them more memory, or order them so the roomy ones take the big layers"


def make_plan(
    graph: OpGraph,
    nodes: Sequence[NodeCapacity],
    *,
    model: str,
    source: str,
    sha256: str,
    runtime: str = "onnx",
    max_activations: int = 2,
    dims: Mapping[str, int] | None = None,
    starts: Sequence[int] | None = None,
) -> ShardPlan:
    """One stage per node, in the order given; PlanError when the model cannot be cut or cannot fit.

    `starts` fixes the plan instead of searching it: the layer (unit) index each stage after the
    first begins at; the stages must still fit their nodes.
    """
    if not nodes:
        raise PlanError("a plan needs at least one node")
    units = graph.units(max_activations)
    if len(units) < len(nodes):
        raise PlanError(
            f"model {model!r} has {len(units)} layer(s) between cuts that let at most {max_activations} "
            f"activation(s) through, too few for {len(nodes)} stages of at least one layer each: "
            "use fewer nodes, or allow more activations per cut (--max-activations)"
        )
    costs = _Costs(graph, units, nodes)
    if starts is None:
        starts = _search(costs, len(units), len(nodes))
        if starts is None:
            raise PlanError(_explain(graph, units, nodes))
    elif len(starts) != len(nodes) - 1 or list(starts) != sorted(set(starts)) or min(starts, default=1) < 1:
        raise PlanError(f"starts {list(starts)}: {len(nodes) - 1} increasing layer indices in 1..{len(units) - 1}")
    elif starts and starts[-1] >= len(units):
        raise PlanError(f"starts {list(starts)}: the model has only {len(units)} layers")
    bounds = [0, *starts, len(units)]
    stages: list[StagePlan] = []
    busiest = 0.0
    for index, (first, stop) in enumerate(pairwise(bounds)):
        start, end = units[first].start, units[stop - 1].end
        params = graph.params_of(start, end)
        cost = costs.stage(index, first, stop)
        if cost is None:
            need = stage_memory(params) / _MB
            raise PlanError(f"stage {index} needs {need:.1f} MB, more than {nodes[index].name} has")
        busiest = max(busiest, cost[0])
        outputs = graph.stage_outputs(start, end)
        stages.append(
            StagePlan(
                index=index,
                node=nodes[index],
                start=start,
                end=end,
                layers=stop - first,
                first_op=graph.ops[start].name,
                last_op=graph.ops[end - 1].name,
                param_bytes=params,
                memory_bytes=stage_memory(params),
                flops=sum(unit.flops for unit in units[first:stop]),
                inputs=tuple(graph.stage_inputs(start, end)),
                outputs=tuple(outputs),
                output_row_bytes=graph.row_bytes(outputs),
            )
        )
    return ShardPlan(
        model=model,
        source=source,
        sha256=sha256,
        runtime=runtime,
        max_activations=max_activations,
        dims=dict(dims or {}),
        param_bytes=sum(graph.param_bytes.values()),
        flops=sum(unit.flops for unit in units),
        layers=len(units),
        bottleneck=round(busiest, 4),
        stages=tuple(stages),
    )
