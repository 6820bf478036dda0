"""`distinfer monitor --url URL [--token T] [--once]`: a live terminal dashboard of a gateway.

It polls the gateway's `GET {prefix}/stats` and redraws in place (rich `Live`): a summary line
(throughput, in flight, requests and errors, queue depth), one row per node (status, in-flight,
p50/p99 latency and error rate over its recent attempts, breaker, trust, models) and the most
recent requests. `--once` prints one snapshot as plain text and exits, for scripts and CI.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import httpx
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["add_monitor_parser", "fetch", "render", "run"]

_STATUS_STYLE = {"online": "green", "busy": "yellow", "offline": "red", "error": "red"}
_OUTCOME_STYLE = {"ok": "green", "cancelled": "yellow"}


class MonitorError(Exception):
    """The stats endpoint could not be read; the message says why, for a person."""


def fetch(client: httpx.Client, url: str) -> dict[str, Any]:
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise MonitorError(f"cannot reach {url}: {exc}") from exc
    if response.status_code in (401, 403):
        raise MonitorError(f"{url} answered {response.status_code}: pass a token with `infer` scope (--token)")
    if response.status_code != 200:
        raise MonitorError(f"{url} answered {response.status_code}: {response.text[:200]}")
    try:
        body = response.json()
    except ValueError as exc:
        raise MonitorError(f"{url} did not answer JSON") from exc
    if not isinstance(body, dict) or "nodes" not in body:
        raise MonitorError(f"{url} is not a distinfer stats endpoint")
    return body


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(value):.1f}"  # type: ignore[arg-type]


def _rate(value: object) -> str:
    return "-" if value is None else f"{float(value) * 100:.1f}%"  # type: ignore[arg-type]


def _summary(stats: dict[str, Any], source: str) -> Text:
    load, queue = stats.get("load", {}), stats.get("queue", {})
    text = Text()
    text.append("distinfer ", style="bold")
    text.append(f"{source}  up {float(stats.get('uptime_s', 0)):.0f}s\n")
    text.append(f"throughput {float(load.get('throughput_rps', 0)):.1f} req/s   ", style="bold")
    text.append(f"in flight {load.get('in_flight', 0)}   ")
    latency = stats.get("latency") or {}  # absent from gateways before it was added
    percentiles = " ".join(f"{q} {_ms(latency.get(f'{q}_ms'))}" for q in ("p50", "p95", "p99"))
    text.append(f"{percentiles} ms   ")
    text.append(f"requests {load.get('requests_total', 0)}   errors {load.get('errors_total', 0)} ")
    text.append(f"({_rate(load.get('error_rate'))})   queue depth {queue.get('depth', 0)}")
    return text


def _nodes(stats: dict[str, Any]) -> Table:
    table = Table(title="nodes", title_justify="left", expand=False)
    for column in ("node", "status", "in-flight", "p50 ms", "p99 ms", "errors", "samples", "breaker", "trust"):
        table.add_column(column, justify="left" if column in ("node", "status", "breaker") else "right")
    table.add_column("models")
    for node in stats.get("nodes", []):
        status = str(node.get("status", "?"))
        trust = node.get("trust")
        table.add_row(
            str(node.get("node_id")),
            Text(status, style=_STATUS_STYLE.get(status, "")),
            str(node.get("in_flight", 0)),
            _ms(node.get("p50_ms")),
            _ms(node.get("p99_ms")),
            _rate(node.get("error_rate")),
            str(node.get("samples", 0)),
            str(node.get("breaker") or "-"),
            "-" if trust is None else f"{float(trust):.2f}",
            ", ".join(node.get("models", [])),
        )
    if not stats.get("nodes"):
        table.add_row("(no nodes)", *[""] * 9)
    return table


def _recent(stats: dict[str, Any], limit: int) -> Table:
    table = Table(title="recent requests", title_justify="left", expand=False)
    for column in ("time", "request id", "model", "node", "mode", "attempts", "outcome", "latency ms"):
        table.add_column(column, justify="right" if column in ("attempts", "latency ms") else "left")
    for row in stats.get("recent", [])[:limit]:
        outcome = str(row.get("outcome"))
        table.add_row(
            str(row.get("time", ""))[11:23],
            str(row.get("request_id", ""))[:16],
            str(row.get("model")),
            str(row.get("node") or "-"),
            str(row.get("mode")),
            str(row.get("attempts")),
            Text(outcome, style=_OUTCOME_STYLE.get(outcome, "red")),
            _ms(row.get("latency_ms")),
        )
    return table


def render(stats: dict[str, Any], source: str, *, recent: int = 10) -> RenderableType:
    return Group(_summary(stats, source), _nodes(stats), _recent(stats, recent))


def _problem(message: str) -> Text:
    return Text(f"distinfer monitor: {message}", style="bold red")


def run(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    url = f"{base}{args.prefix}/stats"
    token = args.token or os.environ.get("DISTINFER_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(headers=headers, timeout=args.timeout) as client:
        if args.once:
            console = Console(width=max(Console().width, 140))  # a pipe reads as 80 columns: too narrow
            try:
                stats = fetch(client, url)
            except MonitorError as exc:
                Console(stderr=True).print(_problem(str(exc)))
                return 1
            console.print(render(stats, base, recent=args.recent))
            return 0
        return _live(client, url, base, args)


def _live(client: httpx.Client, url: str, base: str, args: argparse.Namespace) -> int:
    view: RenderableType = Text("connecting…")
    with Live(view, refresh_per_second=4, screen=args.screen) as live:
        try:
            while True:
                try:
                    live.update(render(fetch(client, url), base, recent=args.recent))
                except MonitorError as exc:
                    live.update(_problem(f"{exc} (retrying)"))
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def add_monitor_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = subparsers.add_parser("monitor", help="live terminal dashboard of a gateway (GET .../stats)")
    monitor.add_argument("--url", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8000")
    monitor.add_argument("--token", default=None, help="bearer token with `infer` scope (default: DISTINFER_TOKEN)")
    monitor.add_argument("--prefix", default="/api/v1/distributed", help="where the plugin is mounted")
    monitor.add_argument("--once", action="store_true", help="print one snapshot as plain text and exit")
    monitor.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    monitor.add_argument("--recent", type=int, default=10, help="recent requests to show")
    monitor.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the gateway")
    monitor.add_argument("--screen", action="store_true", help="use the terminal's alternate screen")
    monitor.set_defaults(run=run)
