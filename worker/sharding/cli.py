"""`distinfer shard plan|split`, and the node's sharding flags (`--memory-cap-mb`, `--forward-peers`).

Imported by every `distinfer` command, so nothing heavy at module level: onnx, rich and httpx are
imported when a shard command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from worker.sharding.errors import ShardingError
from worker.sharding.plan import NodeCapacity, ShardPlan

__all__ = ["add_node_arguments", "add_shard_parser", "node_labels", "node_options", "parse_capacities"]

_MB = 1024 * 1024


# ---------------------------------------------------------------------------------------------- node flags


def add_node_arguments(node: argparse.ArgumentParser) -> None:
    group = node.add_argument_group("sharding")
    group.add_argument(
        "--memory-cap-mb", type=float, default=None, help="refuse models that would take the node over this many MB"
    )
    group.add_argument(
        "--forward-peers",
        default=None,
        metavar="URL,...",
        help="node-to-node hops of sharded models: the nodes this one may hand activations to ('*': any)",
    )


def node_options(args: argparse.Namespace) -> dict[str, Any]:
    """NodeConfig keyword arguments from the node's sharding flags."""
    peers = frozenset(p.strip() for p in args.forward_peers.split(",") if p.strip()) if args.forward_peers else None
    cap = int(args.memory_cap_mb * _MB) if args.memory_cap_mb else None
    return {"memory_cap_bytes": cap, "forward_peers": peers}


def node_labels(args: argparse.Namespace) -> dict[str, str]:
    """Labels that tell planners (`shard plan --nodes`) how much memory the node offers."""
    return {"memory_cap_mb": f"{args.memory_cap_mb:g}"} if args.memory_cap_mb else {}


# ---------------------------------------------------------------------------------------------- capacities


def parse_capacities(text: str, speeds: str | None = None) -> list[NodeCapacity]:
    """`512,256:2` -> two nodes of 512 and 256 MB, the second twice as fast; `--speeds` may say the same."""
    nodes: list[NodeCapacity] = []
    items = [item.strip() for item in text.split(",") if item.strip()]
    extra = [float(s) for s in speeds.split(",")] if speeds else []
    if extra and len(extra) != len(items):
        raise ShardingError(f"--speeds has {len(extra)} values for {len(items)} capacities")
    for index, item in enumerate(items):
        memory, _, speed = item.partition(":")
        try:
            node = NodeCapacity(
                name=f"node-{index + 1}",
                memory_bytes=int(float(memory) * _MB),
                speed=float(speed) if speed else (extra[index] if extra else 1.0),
            )
        except ValueError as exc:
            raise ShardingError(f"capacity {item!r}: memory in MB, then optionally :speed (e.g. 512:2)") from exc
        nodes.append(node)
    if not nodes:
        raise ShardingError("--capacities is empty")
    return nodes


def fetch_capacities(urls: list[str], speeds: str | None = None) -> list[NodeCapacity]:
    """Ask each node (`GET /v2`) for its memory cap, else its machine memory; speed from a `speed` label."""
    import httpx

    extra = [float(s) for s in speeds.split(",")] if speeds else []
    nodes: list[NodeCapacity] = []
    with httpx.Client(timeout=5.0) as client:
        for index, url in enumerate(urls):
            try:
                meta = client.get(f"{url.rstrip('/')}/v2").raise_for_status().json()
            except (httpx.HTTPError, ValueError) as exc:
                raise ShardingError(f"{url}: no server metadata ({exc}); give --capacities instead") from exc
            labels = meta.get("labels") or {}
            memory = labels.get("memory_cap_mb") or labels.get("memory_mb")
            if memory is None:
                raise ShardingError(f"{url} does not say how much memory it has; give --capacities instead")
            speed = extra[index] if extra else float(labels.get("speed", 1.0))
            nodes.append(NodeCapacity(name=url.rstrip("/"), memory_bytes=int(float(memory) * _MB), speed=speed))
    return nodes


# ---------------------------------------------------------------------------------------------- commands


def _dims(pairs: list[str] | None) -> dict[str, int]:
    dims: dict[str, int] = {}
    for pair in pairs or []:
        name, _, value = pair.partition("=")
        if not (value.isascii() and value.isdigit()) or not name:
            raise ShardingError(f"--dim {pair!r}: NAME=SIZE, e.g. sequence=128")
        dims[name] = int(value)
    return dims


def _print_plan(plan: ShardPlan) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{plan.model}: {len(plan.stages)} stages, {plan.layers} layers, bottleneck {plan.bottleneck:g}"
    )
    for column in ("stage", "node", "layers", "ops", "params MB", "needs / has MB", "compute", "hands on"):
        table.add_column(column, justify="right" if column in ("stage", "layers", "params MB", "compute") else "left")
    for stage in plan.stages:
        hands = ", ".join(stage.outputs) if len(stage.outputs) <= 2 else f"{len(stage.outputs)} tensors"
        table.add_row(
            str(stage.index),
            stage.node.name,
            str(stage.layers),
            f"{stage.start}-{stage.end - 1}: {stage.first_op} .. {stage.last_op}",
            f"{stage.param_bytes / _MB:.2f}",
            f"{stage.memory_bytes / _MB:.1f} / {stage.node.memory_bytes / _MB:.1f}",
            f"{stage.flops / plan.flops:.0%}" if plan.flops else "-",
            f"{hands} ({stage.output_row_bytes / 1024:.1f} KB/row)",
        )
    Console(width=200).print(table)


def _run_plan(args: argparse.Namespace) -> int:
    from worker.sharding.planner import make_plan
    from worker.sharding.source import open_source, sha256_of
    from worker.sharding.split import load_graph

    source = open_source(Path(args.model))
    nodes = fetch_capacities(args.nodes, args.speeds) if args.nodes else parse_capacities(args.capacities, args.speeds)
    dims = _dims(args.dim)
    plan = make_plan(
        load_graph(source, dims),
        nodes,
        model=args.name or source.config.name,
        source=str(source.weights),
        sha256=sha256_of(source.weights),
        runtime=source.runtime,
        max_activations=args.max_activations,
        dims=dims,
    )
    _print_plan(plan)
    out = Path(args.out or f"{plan.model}.{len(plan.stages)}-stages.plan.json")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(plan.model_dump_json(indent=2) + "\n", "utf-8")
    except OSError as exc:
        raise ShardingError(f"cannot write the plan to {out}: {exc.strerror or exc}") from exc
    print(f"plan written to {out}")
    return 0


def _run_split(args: argparse.Namespace) -> int:
    from worker.sharding.plan import read_model_file
    from worker.sharding.source import open_source
    from worker.sharding.split import split_model

    plan = read_model_file(ShardPlan, Path(args.plan))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShardingError(f"cannot create {out}: {exc.strerror or exc}") from exc
    pipeline, path = split_model(open_source(Path(args.model)), plan, out, name=args.name)
    for stage in pipeline.stages:
        print(f"{out / stage.model}  reads {', '.join(stage.inputs)}  writes {', '.join(stage.outputs)}")
    print(f"pipeline description: {path}  (gateway: DISTINFER_SHARDED_MODELS={out})")
    return 0


def _guarded(run: Any) -> Any:
    def call(args: argparse.Namespace) -> int:
        try:
            return int(run(args))
        except ShardingError as exc:
            print(f"distinfer shard: {exc}", file=sys.stderr)
            return 2

    return call


def add_shard_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `shard plan` and `shard split` on the `distinfer` command's subparsers."""
    shard = subparsers.add_parser("shard", help="plan and split a model into stages served by several nodes")
    commands = shard.add_subparsers(dest="shard_command", required=True)

    plan = commands.add_parser("plan", help="cut a model into one stage per node, sized by memory and speed")
    plan.add_argument("--model", required=True, help="model folder (config.json + weights) or .onnx file")
    where = plan.add_mutually_exclusive_group(required=True)
    where.add_argument("--nodes", nargs="+", metavar="URL", help="nodes to ask for their memory (GET /v2)")
    where.add_argument("--capacities", metavar="MB[:SPEED],...", help="node memory in MB, optional relative speed")
    plan.add_argument("--speeds", default=None, metavar="S,...", help="relative node speeds (default all 1)")
    plan.add_argument("--max-activations", type=int, default=2, help="tensors a cut may let through (default 2)")
    plan.add_argument("--dim", action="append", metavar="NAME=SIZE", help="size of a symbolic dimension")
    plan.add_argument("--name", default=None, help="name the sharded model is served under")
    plan.add_argument("--out", default=None, help="plan JSON (default <model>.<n>-stages.plan.json)")
    plan.set_defaults(run=_guarded(_run_plan))

    split = commands.add_parser("split", help="write each stage of a plan as a model folder + a pipeline description")
    split.add_argument("--model", required=True, help="the model the plan was made for")
    split.add_argument("--plan", required=True, help="plan JSON from `distinfer shard plan`")
    split.add_argument("--out", required=True, help="model repository folder to write the stages into")
    split.add_argument("--name", default=None, help="name the sharded model is served under (default: the plan's)")
    split.set_defaults(run=_guarded(_run_split))
