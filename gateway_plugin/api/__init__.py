"""The HTTP API under `/api/v1/distributed`, one router module per resource."""

from gateway_plugin.api.batch import batch_router
from gateway_plugin.api.cluster import cluster_router
from gateway_plugin.api.flags import flags_router
from gateway_plugin.api.health import health_router
from gateway_plugin.api.inference import inference_router
from gateway_plugin.api.nodes_admin import nodes_admin_router
from gateway_plugin.api.parallel import parallel_router
from gateway_plugin.api.pipeline import pipeline_router
from gateway_plugin.api.relay import relay_router
from gateway_plugin.api.routing import ProblemRoute, problem_route
from gateway_plugin.api.stream import stream_router

__all__ = [
    "ProblemRoute",
    "problem_route",
    "batch_router",
    "cluster_router",
    "flags_router",
    "health_router",
    "inference_router",
    "nodes_admin_router",
    "parallel_router",
    "pipeline_router",
    "relay_router",
    "stream_router",
]
