"""Showing and keeping a scenario's document: a rich table for people, a JSON file for comparisons."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["RESULTS_DIR", "render_overhead", "save", "wide_console", "write_json"]

RESULTS_DIR = Path("bench-results")


def wide_console() -> Console:
    """A console wide enough for the tables: a pipe reads as 80 columns."""
    return Console(width=max(Console().width, 120))


def publish(
    document: dict[str, Any],
    render: Callable[[dict[str, Any], Console], None],
    out: Path | None,
    scenario: str,
    console: Console,
) -> int:
    """Print the scenario's table, write its JSON; the exit status: 1 when something could not be measured."""
    render(document, console)
    save(document, out, scenario, console)
    return 1 if document["errors"] else 0


def save(document: dict[str, Any], out: Path | None, scenario: str, console: Console) -> Path:
    """Write the document to `out`, or to bench-results/<scenario>-<timestamp>.json, and say where."""
    path = write_json(document, out or RESULTS_DIR / f"{scenario}-{datetime.now():%Y%m%d-%H%M%S}.json")
    console.print(f"results: {path}")
    return path


def write_json(document: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _num(value: Any, digits: int = 3, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def render_overhead(document: dict[str, Any], console: Console) -> None:
    """One row per encoding, concurrency and target; then the ratios and whether the targets are met."""
    table = Table(title="overhead: medians over rounds", title_justify="left")
    columns = ("enc", "c", "target", "p50 ms", "p99 ms", "+p50 ms", "req/s", "x direct", "err/to", "client cpu")
    for column in (*columns, "srv cpu ms/req"):
        table.add_column(column, justify="left" if column in ("enc", "target") else "right", no_wrap=True)
    for encoding, by_concurrency in document["results"].items():
        for concurrency, by_target in by_concurrency.items():
            direct_rps = by_target.get("direct", {}).get("throughput")
            for target, figures in by_target.items():
                rps = figures["throughput"]
                times = None if not direct_rps or rps is None else rps / direct_rps
                table.add_row(
                    encoding,
                    concurrency,
                    target,
                    _num(figures["p50_ms"]),
                    _num(figures["p99_ms"]),
                    _num(figures["p50_over_direct_ms"]),
                    _num(rps, 1),
                    _num(times, 2),
                    f"{figures['errors']}/{figures['timeouts']}",
                    _num(
                        figures["client_cpu_share"] * 100 if figures["client_cpu_share"] is not None else None, 0, "%"
                    ),
                    _num(figures.get("server_cpu_ms_per_request"), 3),
                )
            table.add_section()
    console.print(table)

    verdict = document["targets"]
    summary = Table(title="gateway vs minimal aiohttp pass-through", title_justify="left")
    for column in ("enc", "overhead ratio (c=min)", f"<= {verdict['overhead_ratio_max']}", "throughput ratio (c=max)"):
        summary.add_column(column, no_wrap=True)
    summary.add_column(f">= {verdict['throughput_ratio_min']}", no_wrap=True)
    summary.add_column(f"cpu ms/req, all features (<= {verdict['cpu_ms_per_request_max']})", no_wrap=True)
    summary.add_column("plugin: overhead / throughput ratios", no_wrap=True)  # no fast lane
    for encoding, figures in document["ratios"].items():
        judged = verdict[encoding]
        plugin_over, plugin_rps = (
            figures.get("plugin_overhead_over_passthrough"),
            figures.get("plugin_throughput_over_passthrough"),
        )
        summary.add_row(
            encoding,
            _num(figures["gateway_overhead_over_passthrough"], 2),
            "met" if judged["overhead"]["met"] else "[red]not met[/red]",
            _num(figures["gateway_throughput_over_passthrough"], 2),
            "met" if judged["throughput"]["met"] else "[red]not met[/red]",
            f"{_num(judged['cpu_all_features']['ms_per_request'], 3)} "
            + ("met" if judged["cpu_all_features"]["met"] else "[red]not met[/red]"),
            f"{_num(plugin_over, 2)} / {_num(plugin_rps, 2)}",
        )
    console.print(summary)
    console.print(f"nginx: {document['nginx']}   wall {document['wall_s']} s (setup {document['setup_s']} s)")
    if "tracing_sink" in document:
        console.print(f"spans exported by target `full` (auth + tracing): {document['tracing_sink']}")
    for line in document["errors"]:
        console.print(f"[red]error:[/red] {line}")
    for line in document["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {line}")
