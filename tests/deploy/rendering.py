"""Render the chart with the real Helm library (libhelm through helm-python-sdk) and read what it made."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

__all__ = ["CHART", "NAMESPACE", "RELEASE", "VARIANTS", "Manifest", "Rendered", "render"]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm"
RELEASE = "demo"
NAMESPACE = "ml"

# The variants the issue names, plus one that turns on every optional part at once.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "dns": {"discovery": {"sources": ["dns"]}, "nodes": {"kind": "Deployment"}},
    "consul": {
        "discovery": {
            "sources": ["consul"],
            "consul": {"url": "http://consul.consul.svc:8500", "tokenSecret": {"name": "consul-acl", "key": "token"}},
        },
        "nodes": {"kind": "Deployment"},
    },
    "autoscaling": {
        "discovery": {"sources": ["dns"]},
        "gateway": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}},
        "tasks": {"store": "redis", "redisUrl": "redis://redis.cache.svc:6379/0"},
        "nodes": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 8}},
    },
    "everything": {
        "discovery": {
            "sources": ["static", "dns"],
            "static": {
                "nodes": ["http://gpu-box.example:8001"],
                "nodesFile": [
                    {"url": "http://edge-1.example:8001", "node_id": "edge-1", "weight": 2, "labels": {"zone": "a"}}
                ],
            },
        },
        "auth": {
            "existingSecret": "distinfer-keys",
            "jwksUrl": "https://idp.example/.well-known/jwks.json",
            "audience": "distinfer",
            "issuer": "https://idp.example/",
            "nodeTls": {"existingSecret": "node-tls"},
        },
        "tasks": {"store": "redis", "redisUrlSecret": {"name": "redis-url", "key": "url"}},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "otel": {"endpoint": "http://otel-collector.observability:4318", "extraEnv": {"OTEL_BSP_MAX_QUEUE_SIZE": 4096}},
        "gateway": {
            "image": {"repository": "registry.example/acme/api", "tag": "2.3.1"},
            "command": ["uvicorn"],
            "args": ["acme.app:app", "--host=0.0.0.0", "--port=8000"],
            "settings": {
                "DISTINFER_LOCAL_MODEL_REPOSITORY": "/opt/distinfer/models",
                "DISTINFER_STRATEGY": "least_loaded",
            },
            "extraEnv": [{"name": "ACME_MODE", "value": "prod"}],
            "service": {"type": "LoadBalancer"},
        },
        "nodes": {
            "modelRepository": {"volume": {"persistentVolumeClaim": {"claimName": "models", "readOnly": True}}},
            "models": ["digits", "digits_a"],
        },
    },
}


@dataclass(frozen=True)
class Manifest:
    template: str
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])


@dataclass(frozen=True)
class Rendered:
    manifests: list[Manifest]
    notes: str

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m.kind == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m.doc for m in self.of_kind(kind) if name is None or m.name == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def workloads(self) -> Iterator[dict[str, Any]]:
        for manifest in self.manifests:
            if manifest.kind in ("Deployment", "StatefulSet", "Pod"):
                yield manifest.doc

    def gateway_environment(self) -> dict[str, str | None]:
        """Every variable the gateway container gets: its ConfigMap's data and its env (None: from a Secret)."""
        deployment = self.one("Deployment", f"{RELEASE}-distinfer-gateway")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        found: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            found.update(self.one("ConfigMap", source["configMapRef"]["name"])["data"])
        for variable in container.get("env", []):
            found[variable["name"]] = variable.get("value")
        return found


def render(values: dict[str, Any] | None = None) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    notes = ""
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        manifests += [Manifest(template, doc) for doc in yaml.safe_load_all(text) if doc]
    return Rendered(manifests, notes)
