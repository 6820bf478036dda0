"""Which node gets a request: strategies over a pool of healthy nodes, health probes, retries."""

from balancer.health import HealthProber, describe_node
from balancer.pool import Lease, NodePool, UnknownStrategy
from balancer.retry import RetryPolicy
from balancer.strategies import Strategy, default_strategies

__all__ = [
    "HealthProber",
    "Lease",
    "NodePool",
    "RetryPolicy",
    "Strategy",
    "UnknownStrategy",
    "default_strategies",
    "describe_node",
]
