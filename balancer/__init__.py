"""Which node gets a request: strategies over a pool of healthy nodes, health probes, outlier
ejection and circuit breakers, panic mode, retries with a budget, hedging, and trust."""

from balancer.breaker import BreakerSnapshot, BreakerState, CircuitBreaker
from balancer.health import HealthProber, advertised_labels, describe_node
from balancer.hedging import HedgePolicy, race
from balancer.outlier import EjectionPolicy
from balancer.pool import Lease, NodePool, PoolConfig, UnknownStrategy
from balancer.retry import RetryBudget, RetryPolicy
from balancer.strategies import PickContext, Strategy, default_strategies, parse_requirements, session_key
from balancer.trust import TrustLedger, TrustPolicy, outputs_agree
from balancer.validation import Validator

__all__ = [
    "BreakerSnapshot",
    "BreakerState",
    "CircuitBreaker",
    "EjectionPolicy",
    "HealthProber",
    "HedgePolicy",
    "Lease",
    "NodePool",
    "PickContext",
    "PoolConfig",
    "RetryBudget",
    "RetryPolicy",
    "Strategy",
    "TrustLedger",
    "TrustPolicy",
    "UnknownStrategy",
    "Validator",
    "advertised_labels",
    "default_strategies",
    "describe_node",
    "outputs_agree",
    "parse_requirements",
    "race",
    "session_key",
]
