"""The `bench balance` tables: strategies with a slow node, against the healthy cluster, and failover."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_balance"]


def _num(value: Any, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def render_balance(document: dict[str, Any], console: Console) -> None:
    slow_node = document.get("slow_node", {})
    healthy = document.get("healthy", {})
    table = Table(
        title=f"balance: one node ({slow_node.get('node')}) adds {slow_node.get('added_latency_ms')} ms; "
        f"medians over {document.get('parameters', {}).get('rounds', '?')} interleaved rounds",
        title_justify="left",
    )
    for column in ("cluster", "strategy", "p50 ms", "p99 ms", "req/s", "slow share", "failed", "p99 / healthy"):
        table.add_column(column, justify="left" if column in ("cluster", "strategy") else "right", no_wrap=True)
    base = healthy.get("latency", {}).get("p99_ms")
    for cluster in ("healthy", "slow"):
        for strategy, figures in document.get(cluster, {}).items():
            ratio = None if not base or figures["p99_ms"] is None else figures["p99_ms"] / base
            table.add_row(
                cluster,
                strategy,
                _num(figures["p50_ms"]),
                _num(figures["p99_ms"]),
                _num(figures["throughput"], 1),
                _num(None if figures.get("slow_share") is None else figures["slow_share"] * 100, 1, "%"),
                str(figures["failed"]),
                _num(ratio, 2, "x"),
            )
        table.add_section()
    console.print(table)
    failover = document.get("failover", {})
    console.print(
        f"failover ({failover.get('strategy')}): killed {failover.get('killed_node')} after "
        f"{failover.get('kill_at_s')} s; sent {failover.get('sent')}, failed {failover.get('failed')}, "
        f"kill to ejection {failover.get('kill_to_ejection_ms')} ms, p99 {failover.get('p99_ms')} ms"
    )
    goals = document.get("goals", {})
    for name, goal in goals.items():
        if isinstance(goal, dict):
            figure = goal.get("ratio", goal.get("value"))
            bound = f"<= {goal['max']}" if "max" in goal else f">= {goal['min']}"
            verdict = "met" if goal["met"] else "[red]not met[/red]"
            rounds = goal.get("by_round")
            per_round = f", by round {', '.join(_num(r, 2) for r in rounds)}" if rounds else ""
            console.print(f"  {name}: {figure} ({bound}{per_round}) {verdict}")
    console.print(f"wall {document.get('wall_s')} s (setup {document.get('setup_s')} s)")
    for line in document.get("errors", []):
        console.print(f"[red]error:[/red] {line}")
