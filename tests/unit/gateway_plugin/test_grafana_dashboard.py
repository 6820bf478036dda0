"""The Grafana dashboard in the repo only queries metrics that gateway and nodes really export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway_plugin.telemetry.metrics import GatewayMetrics, LiveNode
from worker.telemetry import NodeTelemetry

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "distinfer.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exported(registry: CollectorRegistry) -> set[str]:
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES.get(family.type, ("",))}


def test_every_queried_metric_exists() -> None:
    gateway = GatewayMetrics(CollectorRegistry(), live_nodes=lambda: [LiveNode("n", True, 0, "closed", 1.0, "online")])
    names = _exported(gateway.registry) | _exported(NodeTelemetry().registry)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(distinfer_[a-z_]+)", target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    assert queried <= names, sorted(queried - names)
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
