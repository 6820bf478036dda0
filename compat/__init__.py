"""Keeps an existing `/api/inference` working on top of the cluster (CONTRACT §2).

    from compat import LegacyInferenceMiddleware
    app.add_middleware(LegacyInferenceMiddleware, distributed=distributed, path="/api/inference")

`cluster_health(distributed)` gives the cluster summary for the service's own health endpoint.
"""

from typing import Any

from compat.adapters import JsonInferenceAdapter, LegacyAdapter, LegacyRequest, LegacyResponse, compare_outputs
from compat.middleware import LegacyInferenceMiddleware
from gateway_plugin import DistributedInference

__all__ = [
    "JsonInferenceAdapter",
    "LegacyAdapter",
    "LegacyInferenceMiddleware",
    "LegacyRequest",
    "LegacyResponse",
    "cluster_health",
    "compare_outputs",
]


def cluster_health(distributed: DistributedInference) -> dict[str, Any]:
    """Opt-in: the cluster summary (nodes by state, models, local fallback, flags, shadow counters)."""
    return {
        **distributed.cluster_summary(),
        "flags": distributed.flags.current().as_dict(),
        "legacy": distributed.shadow.snapshot(),
    }
