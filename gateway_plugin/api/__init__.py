"""The HTTP API under `/api/v1/distributed`, one router module per resource."""

from gateway_plugin.api.cluster import cluster_router
from gateway_plugin.api.health import health_router
from gateway_plugin.api.inference import inference_router
from gateway_plugin.api.relay import relay_router
from gateway_plugin.api.routing import ProblemRoute, problem_route

__all__ = ["ProblemRoute", "problem_route", "cluster_router", "health_router", "inference_router", "relay_router"]
