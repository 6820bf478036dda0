"""Building the balancer's objects from settings: the pool (strategies, ejection, panic, trust) and
the dispatcher's policies (retry budget, hedging, per-attempt timeout, result validation)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from balancer import (
    EjectionPolicy,
    HedgePolicy,
    NodePool,
    PoolConfig,
    RetryBudget,
    TrustLedger,
    TrustPolicy,
    Validator,
    default_strategies,
    parse_requirements,
)
from discovery.registry import NodeRegistry
from gateway_plugin.settings import Settings

__all__ = ["Resilience", "build_pool", "build_resilience"]


def build_pool(registry: NodeRegistry, settings: Settings, *, rng: random.Random | None = None) -> NodePool:
    balancer, trust = settings.balancer, settings.trust
    ejection = EjectionPolicy(
        consecutive_failures=balancer.eject_consecutive_failures,
        error_rate=balancer.eject_error_rate,
        min_requests=balancer.eject_min_requests,
        base_ejection_s=balancer.eject_base_s,
        max_ejection_s=balancer.eject_max_s,
    )
    config = PoolConfig(
        ejection=ejection,
        panic_threshold=balancer.panic_threshold_percent,
        max_in_flight=balancer.node_max_in_flight,
        latency_decay_s=balancer.latency_decay_s,
    )
    ledger = TrustLedger(
        TrustPolicy(
            quarantine_below=trust.quarantine_below,
            quarantine_s=trust.quarantine_s,
            rtol=trust.validation_rtol,
            atol=trust.validation_atol,
        ),
        time.monotonic,
    )
    strategies = default_strategies(
        requirements=parse_requirements(balancer.model_requirements), latency_band=balancer.latency_band
    )
    return NodePool(registry, strategies, default_strategy=balancer.strategy, rng=rng, config=config, trust=ledger)


@dataclass(frozen=True, slots=True)
class Resilience:
    budget: RetryBudget
    hedge: HedgePolicy
    attempt_timeout_s: float | None
    validator: Validator | None


def build_resilience(settings: Settings, pool: NodePool, *, rng: random.Random | None = None) -> Resilience:
    balancer = settings.balancer
    budget = RetryBudget(time.monotonic, ratio=balancer.retry_budget_ratio, min_per_s=balancer.retry_budget_min_per_s)
    hedge = HedgePolicy(
        enabled=balancer.hedging,
        after_s=balancer.hedge_after_ms / 1000 if balancer.hedge_after_ms else None,
    )
    rate = settings.trust.validation_sample_rate
    validator = Validator(pool.trust, sample_rate=rate, rng=rng) if rate > 0 else None
    attempt_timeout = balancer.attempt_timeout_ms / 1000 if balancer.attempt_timeout_ms else None
    return Resilience(budget, hedge, attempt_timeout, validator)
