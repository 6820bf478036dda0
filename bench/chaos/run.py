"""One chaos run: fault scenarios, schemathesis, the v2 parser fuzz and the big bodies, as one JSON document.

The document is what a reader compares from run to run (`bench-results/chaos-*.json`, and the
README table made by `bench.chaos.report.markdown`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from bench.chaos.bodies import nested_bodies, peak_rss_mb, post_nested, send_oversized
from bench.chaos.cluster import PREFIX, Cluster
from bench.chaos.scenarios import FAULTY, HEALTHY, SCENARIOS, ChaosParams, Scenario
from bench.chaos.tasks import TASK_SCENARIOS
from bench.machine import describe_machine

__all__ = ["ALL_SCENARIOS", "ChaosPlan", "run_chaos"]

ALL_SCENARIOS: dict[str, Scenario] = {**SCENARIOS, **TASK_SCENARIOS}


class ChaosPlan:
    """What to run and how hard: the short plan is `make test`'s, the long one `distinfer bench chaos`'s."""

    def __init__(
        self,
        params: ChaosParams,
        *,
        scenarios: Sequence[str] | None = None,
        api_examples: int = 0,
        parser_examples: int = 0,
        bodies: bool = True,
    ) -> None:
        unknown = set(scenarios or ()) - set(ALL_SCENARIOS)
        if unknown:
            raise ValueError(f"unknown scenarios {sorted(unknown)}; known: {sorted(ALL_SCENARIOS)}")
        self.params = params
        self.scenarios = list(scenarios) if scenarios is not None else list(ALL_SCENARIOS)
        self.api_examples = api_examples
        self.parser_examples = parser_examples
        self.bodies = bodies

    @classmethod
    def long(cls) -> ChaosPlan:
        return cls(ChaosParams.long(), api_examples=60, parser_examples=5000)

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": {k: getattr(self.params, k) for k in self.params.__dataclass_fields__},
            "scenarios": self.scenarios,
            "api_examples": self.api_examples,
            "parser_examples": self.parser_examples,
            "bodies": self.bodies,
        }


def check_bodies(cluster: Cluster) -> dict[str, Any]:
    """Oversized (1 GiB declared, and chunked) and deeply nested bodies to the gateway, its relay and a node."""
    node = cluster.nodes[HEALTHY]
    gateway = cluster.start_gateway([node.url])
    results: dict[str, Any] = {}
    try:
        cluster.wait_serving(gateway, {HEALTHY})
        targets = {
            "gateway /inference": (gateway, f"{gateway.url}{PREFIX}/inference"),
            "gateway v2 relay": (gateway, f"{gateway.url}{PREFIX}/v2/models/digits/infer"),
            "node v2 infer": (node, f"{node.url}/v2/models/digits/infer"),
        }
        with httpx.Client(timeout=30) as client:
            for label, (server, url) in targets.items():
                before = peak_rss_mb(server.process.pid)
                oversized = [send_oversized(url, chunked=chunked, headers=cluster.auth) for chunked in (False, True)]
                nested = {name: post_nested(client, url, body, cluster.auth) for name, body in nested_bodies().items()}
                results[label] = {
                    "oversized": oversized,
                    "nested": nested,
                    "peak_rss_growth_mb": round(peak_rss_mb(server.process.pid) - before, 1),
                    "alive": server.alive,
                }
    finally:
        cluster.stop_gateway(gateway)
    statuses = [o["status"] for r in results.values() for o in r["oversized"]]
    statuses += [s for r in results.values() for s in r["nested"].values()]
    results["server_errors"] = sum(s is None or s >= 500 for s in statuses)
    results["all_refused_4xx"] = all(s is not None and 400 <= s < 500 for s in statuses)
    return results


async def run_chaos(plan: ChaosPlan, repository: Path, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    started = time.monotonic()
    document: dict[str, Any] = {
        "scenario": "chaos",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(),
        "plan": plan.as_dict(),
        "faults": [],
    }
    with Cluster(repository).running() as cluster:
        await asyncio.to_thread(cluster.start_nodes, HEALTHY, FAULTY)
        for name in plan.scenarios:
            console.print(f"[bold]{name}[/bold] ...")
            try:
                results = await ALL_SCENARIOS[name](cluster, plan.params)
            except Exception as exc:  # one broken scenario must not hide the others' figures
                document["faults"].append({"name": name, "status": "error", "met": False, "error": repr(exc)[:500]})
                if not cluster.nodes[FAULTY].alive:
                    await asyncio.to_thread(cluster.start_nodes, FAULTY)
                continue
            document["faults"] += [result.as_dict() for result in results]
        gateway_urls = [cluster.nodes[HEALTHY].url, cluster.nodes[FAULTY].url]
        if plan.api_examples:
            console.print("[bold]schemathesis[/bold] ...")
            document["schemathesis"] = await asyncio.to_thread(_api_fuzz, cluster, gateway_urls, plan.api_examples)
        if plan.parser_examples:
            console.print("[bold]v2 parser fuzz[/bold] ...")
            document["parser_fuzz"] = await asyncio.to_thread(_parser_fuzz, cluster, plan.parser_examples)
        if plan.bodies:
            console.print("[bold]oversized and nested bodies[/bold] ...")
            document["bodies"] = await asyncio.to_thread(check_bodies, cluster)
    document["wall_s"] = round(time.monotonic() - started, 1)
    document["all_met"] = _all_met(document)
    return document


def _api_fuzz(cluster: Cluster, node_urls: list[str], examples: int) -> dict[str, Any]:
    from bench.chaos.apifuzz import fuzz_api

    gateway = cluster.start_gateway(node_urls)
    try:
        cluster.wait_serving(gateway, {HEALTHY, FAULTY})
        return fuzz_api(gateway.url, headers=cluster.auth, max_examples=examples)
    finally:
        cluster.stop_gateway(gateway)


def _parser_fuzz(cluster: Cluster, examples: int) -> dict[str, Any]:
    from bench.chaos.parserfuzz import run_parser_fuzz

    node = cluster.nodes[HEALTHY]
    gateway = cluster.start_gateway([node.url])
    try:
        cluster.wait_serving(gateway, {HEALTHY})
        urls = [f"{node.url}/v2/models/digits/infer", f"{gateway.url}{PREFIX}/v2/models/digits/infer"]
        return run_parser_fuzz(examples, targets=urls, headers=cluster.auth)
    finally:
        cluster.stop_gateway(gateway)


def _all_met(document: dict[str, Any]) -> bool:
    met = all(fault.get("met") for fault in document["faults"] if fault.get("status") != "skipped")
    for key in ("schemathesis", "parser_fuzz"):
        if key in document:
            met = met and document[key]["server_errors"] == 0
    if "parser_fuzz" in document:
        met = met and document["parser_fuzz"]["parser_escapes"] == 0
    if "bodies" in document:
        met = met and document["bodies"]["server_errors"] == 0
    return met
