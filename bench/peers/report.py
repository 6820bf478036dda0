"""The peer scenarios' tables: every target's medians, then each comparison and whether its target is met."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["render_peers"]


def _num(value: Any, digits: int = 3, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _share(value: float | None) -> str:
    return _num(None if value is None else value * 100, 0, "%")


def _results_table(document: dict[str, Any]) -> Table:
    table = Table(title=f"{document['scenario']}: medians over rounds", title_justify="left")
    columns = (
        "c",
        "target",
        "enc",
        "p50 ms",
        "p99 ms",
        "req/s",
        "err/to",
        "srv cpu",
        "cpu ms/req",
        "client",
        "foreign",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("target", "enc") else "right", no_wrap=True)
    rows: dict[int, list[tuple[str, str, dict[str, Any]]]] = {}
    for encoding, by_concurrency in document["results"].items():
        for level, by_target in by_concurrency.items():
            for target, figures in by_target.items():
                rows.setdefault(int(level), []).append((target, encoding, figures))
    for level in sorted(rows):
        for target, encoding, figures in sorted(rows[level], key=lambda row: (row[0], row[1])):
            table.add_row(
                str(level),
                target,
                encoding,
                _num(figures["p50_ms"]),
                _num(figures["p99_ms"]),
                _num(figures["throughput"], 1),
                f"{figures['errors']}/{figures['timeouts']}",
                _share(figures.get("server_cpu_share")),
                _num(figures.get("server_cpu_ms_per_request"), 3),
                _share(figures.get("client_cpu_share")),
                _share(figures.get("foreign_cpu_share")),
            )
        table.add_section()
    return table


def _comparison_table(document: dict[str, Any]) -> Table:
    table = Table(title="distinfer / peer: ratios of medians (x)", title_justify="left")
    table.add_column("comparison", justify="left")  # the one column that may wrap
    for column in ("c", "req/s x", "p50 x", "p99 x", "cpu/req x", "target"):
        table.add_column(column, justify="left" if column == "target" else "right", no_wrap=True)
    for item in document["comparisons"]:
        verdict = item.get("verdict")
        for level, entry in item["by_concurrency"].items():
            if verdict is None:
                mark = "(info)"
            else:
                met = all(check["met"] for check in verdict["by_concurrency"].get(level, {}).values())
                mark = "met" if met else "[red]not met[/red]"
            table.add_row(
                item["label"],
                level,
                _num(entry["throughput"]["ratio"], 2),
                _num(entry["p50_ms"]["ratio"], 2),
                _num(entry["p99_ms"]["ratio"], 2),
                _num(entry.get("server_cpu_ms_per_request", {}).get("ratio"), 2),
                mark,
            )
        table.add_section()
    return table


def render_peers(document: dict[str, Any], console: Console) -> None:
    """Results, comparisons, the target verdicts with their misses, setup times, errors and warnings."""
    console.print(_results_table(document))
    console.print(_comparison_table(document))
    for item in document["comparisons"]:
        verdict = item.get("verdict")
        if verdict is None:
            continue
        state = "met" if verdict["met"] else "[red]not met[/red]"
        console.print(f"target [bold]{verdict['target']}[/bold] ({item['label']}): {state}", highlight=False)
        for miss in verdict["misses"]:
            console.print(f"  [red]-[/red] {miss}", highlight=False)
    for name, setup in document["peer_envs"].items():
        made = f"created in {setup['setup_s']} s" if setup["created"] else f"reused ({setup['setup_s']} s check)"
        versions = ", ".join(f"{k} {v}" for k, v in setup["versions"].items())
        console.print(f"venv {name}: {made}; {versions}", highlight=False)
    console.print(f"wall {document['wall_s']} s (servers ready after {document['setup_s']} s)")
    for line in document["errors"]:
        console.print(f"[red]error:[/red] {line}", highlight=False)
    for line in document["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False)
