"""The chaos document for people: a rich table in the terminal, a Markdown table for the README."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["COLUMNS", "markdown", "render", "rows"]

COLUMNS = ("scenario", "sent", "failed", "lost", "p99 ms", "p99 fault ms", "eject s", "recover s", "met")


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 10 else f"{value:.0f}"
    return str(value)


def rows(document: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per fault scenario, then one per fuzz and the big bodies."""
    out: list[tuple[str, ...]] = []
    for fault in document["faults"]:
        figures = fault.get("figures", {})
        out.append(
            (
                fault["name"],
                _num(figures.get("sent")),
                _num(figures.get("failed")),
                _num(figures.get("lost")),
                _num(figures.get("p99_ms")),
                _num(figures.get("p99_fault_ms")),
                _num(figures.get("time_to_eject_s")),
                _num(figures.get("time_to_recover_s")),
                "yes" if fault.get("met") else ("skipped" if fault.get("status") == "skipped" else "NO"),
            )
        )
    for key, label in (("schemathesis", "schemathesis (cases / 5xx)"), ("parser_fuzz", "v2 parser fuzz (cases / 5xx)")):
        if key in document:
            fuzz = document[key]
            escapes = fuzz.get("parser_escapes", 0)
            met = fuzz["server_errors"] == 0 and escapes == 0
            out.append(
                (
                    label,
                    _num(fuzz["cases"]),
                    _num(fuzz["server_errors"] + escapes),
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "yes" if met else "NO",
                )
            )
    if "bodies" in document:
        bodies = document["bodies"]
        growth = max(v["peak_rss_growth_mb"] for k, v in bodies.items() if isinstance(v, dict))
        label = f"1 GiB / nested bodies (peak RSS +{growth:.0f} MB)"
        met = "yes" if bodies["server_errors"] == 0 and bodies["all_refused_4xx"] else "NO"
        out.append((label, "18", _num(bodies["server_errors"]), "-", "-", "-", "-", "-", met))
    return out


def render(document: dict[str, Any], console: Console) -> None:
    table = Table(title=f"chaos: {document['started_at']} ({document['wall_s']} s)", title_justify="left")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "scenario" else "right", no_wrap=True)
    for row in rows(document):
        table.add_row(*row)
    console.print(table)
    for fault in document["faults"]:
        if fault.get("status") == "error":
            console.print(f"[red]{fault['name']}: {fault.get('error')}[/red]")
    for sample in document.get("schemathesis", {}).get("server_error_samples", [])[:5]:
        console.print(f"[red]schemathesis {sample['operation']} -> {sample['status']}[/red]: {sample['curl']}")
    console.print("all targets met" if document["all_met"] else "[red]some targets not met[/red]")


def markdown(document: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(document)]
    return "\n".join(lines)
