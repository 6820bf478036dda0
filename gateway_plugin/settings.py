"""One settings object, in sections, read from the environment names of CONTRACT.md.

The contract fixes flat names (`ENABLE_DISTRIBUTED_INFERENCE`, `DISTINFER_NODES`, ...); the
`ENVIRONMENT` table below maps each to its place in the sections, in one spot. Values come from
the process environment, then a `.env` file; keyword arguments win over both. Nothing is read at
import time: `Settings()` reads when it is called.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from balancer.strategies.capability import parse_requirements
from discovery.node import normalise_url

__all__ = [
    "ENVIRONMENT",
    "ApiSettings",
    "AuthSettings",
    "BalancerSettings",
    "CacheSettings",
    "DiscoverySettings",
    "DispatchSettings",
    "FlagSettings",
    "LimitSettings",
    "LocalSettings",
    "OrchestrationSettings",
    "Settings",
    "ShardingSettings",
    "TrustSettings",
    "TaskSettings",
    "TelemetrySettings",
]


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class _Section(BaseModel):
    # Built on their own too (code-first hosts): errors never echo the value given (see Settings).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, hide_input_in_errors=True)


class FlagSettings(_Section):
    enabled: bool = False
    rollout_percent: float = Field(default=100.0, ge=0, le=100)
    mode: Literal["serve", "shadow"] = "serve"


class ApiSettings(_Section):
    prefix: str = Field(default="/api/v1/distributed", pattern=r"^/[A-Za-z0-9/_\-]*[A-Za-z0-9_\-]$")


class DiscoverySettings(_Section):
    """CONTRACT §8. `static` covers both `nodes` and `nodes_file`; sources combine (`static,consul`)."""

    sources: list[Literal["static", "consul", "dns"]] = ["static"]
    nodes: list[str] = []
    nodes_file: Path | None = None
    consul_url: str = "http://127.0.0.1:8500"
    consul_service: str = Field(default="distinfer-node", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    consul_token: SecretStr | None = None
    consul_dc: str | None = None
    consul_wait_s: float = Field(default=60.0, gt=0, le=600)
    dns_srv: str | None = None
    dns_nameserver: str | None = None
    start_timeout_s: float = Field(default=5.0, ge=0, le=120)

    _split = field_validator("sources", "nodes", mode="before")(_comma_list)

    @field_validator("nodes")
    @classmethod
    def _node_urls(cls, urls: list[str]) -> list[str]:
        """Each a usable node URL (`discovery.node.normalise_url`): refused at startup, with the reason."""
        return [normalise_url(url) for url in urls]

    @model_validator(mode="after")
    def _dns_needs_a_name(self) -> DiscoverySettings:
        if "dns" in self.sources and not self.dns_srv:
            raise ValueError("DISTINFER_DISCOVERY includes dns but DISTINFER_DNS_SRV is not set")
        if "static" not in self.sources and (self.nodes or self.nodes_file is not None):
            # Read only by the static source: silently ignored, they left an operator wondering.
            raise ValueError(
                "DISTINFER_NODES / DISTINFER_NODES_FILE are set but DISTINFER_DISCOVERY has no static: "
                "add static to it (static,consul), or unset them"
            )
        return self


class BalancerSettings(_Section):
    """Strategy, health (probes, outlier ejection, breakers, panic), retries, budget, hedging (balancer/)."""

    strategy: str = "latency"
    probe_interval_s: float = Field(default=1.0, gt=0, le=300)
    probe_timeout_s: float = Field(default=1.0, gt=0, le=60)
    max_attempts: int = Field(default=3, ge=1, le=10)
    attempt_timeout_ms: int = Field(default=0, ge=0)  # per attempt, within the request's deadline; 0: all of it
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=10)
    retry_budget_min_per_s: float = Field(default=10.0, ge=0)
    hedging: bool = False
    hedge_after_ms: int = Field(default=0, ge=0)  # 0: after the node's p95
    eject_consecutive_failures: int = Field(default=5, ge=1)
    eject_error_rate: float = Field(default=0.5, gt=0, le=1)
    eject_min_requests: int = Field(default=10, ge=1)
    eject_base_s: float = Field(default=5.0, gt=0)
    eject_max_s: float = Field(default=120.0, gt=0)
    panic_threshold_percent: float = Field(default=0.0, ge=0, le=100)
    node_max_in_flight: int = Field(default=0, ge=0)  # at the limit a node is `busy`; 0: its advertised max_concurrency
    latency_decay_s: float = Field(default=1.0, gt=0)  # peak EWMA blending; idle decay is 10x
    latency_band: float = Field(default=0.1, ge=0, lt=1)
    model_requirements: str = ""  # capability: "model:label=value,label>=n;model2:..."

    @field_validator("model_requirements")
    @classmethod
    def _requirements_parse(cls, value: str) -> str:
        parse_requirements(value)
        return value

    @model_validator(mode="after")
    def _ejection_bounds(self) -> BalancerSettings:
        if self.eject_max_s < self.eject_base_s:
            raise ValueError("DISTINFER_EJECT_MAX_S must be >= DISTINFER_EJECT_BASE_S")
        return self


class TrustSettings(_Section):
    """Result validation on a sampled share of requests, and quarantine of nodes that disagree."""

    validation_sample_rate: float = Field(default=0.0, ge=0, le=1)
    validation_rtol: float = Field(default=1e-3, ge=0)
    validation_atol: float = Field(default=1e-4, ge=0)
    quarantine_below: float = Field(default=0.5, ge=0, le=1)
    quarantine_s: float = Field(default=60.0, gt=0)


class DispatchSettings(_Section):
    default_timeout_ms: int = Field(default=5000, gt=0)
    max_timeout_ms: int = Field(default=60_000, gt=0)
    # A whole batch or pipeline (items and stages, retries and queueing for slots included): without
    # it, a batch run one item at a time, or a chain of retried stages, held the request for hours.
    max_batch_pipeline_timeout_ms: int = Field(default=300_000, gt=0)
    binary_to_nodes: bool = True
    connections_per_node: int = Field(default=100, ge=1)

    def whole_timeout_s(self, timeout_ms: int | None) -> float:
        """A batch's or pipeline's deadline: what the client asks, within the operator's bound."""
        most = self.max_batch_pipeline_timeout_ms
        return min(timeout_ms or most, most) / 1000


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_tensor_elements: int = Field(default=16_777_216, gt=0)
    max_string_bytes: int = Field(default=1_048_576, gt=0)
    max_batch_size: int = Field(default=1024, gt=0)  # rows of a tensor's batch dim; items of /inference/batch
    max_pipeline_stages: int = Field(default=32, gt=0)
    max_new_tokens: int = Field(default=1024, gt=0)  # tokens one stream may ask a generative model for
    max_inflight: int = Field(default=512, ge=0)  # synchronous requests at once before 429 (0: no limit)


class OrchestrationSettings(_Section):
    """Batch, parallel and pipeline execution (CONTRACT §4)."""

    coalesce: bool = True  # merge batch items for one model into multi-row node requests
    batch_concurrency: int = Field(default=32, ge=1, le=1024)  # node requests of one batch at once, at most
    max_parallel_models: int = Field(default=16, ge=1, le=256)


class TaskSettings(_Section):
    """Asynchronous tasks: the priority queue, its workers and the store (memory, or a shared Redis)."""

    # A secret: a Redis URL may carry a password (repr, logs and validation errors must not show it).
    store: SecretStr = SecretStr("memory")
    queue_size: int = Field(default=1000, ge=1)  # pending tasks before 429
    workers: int = Field(default=4, ge=0, le=256)  # tasks run at once by this gateway (0: submit only)
    aging_s: float = Field(default=30.0, gt=0)  # a task waiting this long moves up one priority
    ttl_s: float = Field(default=3600.0, gt=0)  # finished tasks and their results are kept this long
    max_tasks: int = Field(default=10_000, ge=1)  # memory store: records kept at most
    # Memory store: bytes of the requests it holds (pending and running tasks), counted as sent;
    # beyond it, 429. Held as Python objects, a request takes several times its JSON size.
    max_pending_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    lease_s: float = Field(default=30.0, gt=0)  # redis: a running task whose gateway stops renewing is requeued

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url != "memory" and not url.startswith(("redis://", "rediss://", "unix://")):
            scheme = url.split("://", 1)[0][:16] if "://" in url else "(none)"
            raise ValueError(f"must be 'memory' or a redis://, rediss:// or unix:// URL, not scheme {scheme!r}")
        return value


class AuthSettings(_Section):
    """JWT verification for callers (CONTRACT §6), and the gateway's credentials towards nodes."""

    disabled: bool = False
    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = None  # PEM text, or the path of a PEM file
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    leeway_s: float = Field(default=30.0, ge=0, le=600)
    jwks_refresh_s: float = Field(default=30.0, ge=0)  # unknown kids refetch the JWKS at most this often
    node_token: SecretStr | None = None
    node_ca_file: Path | None = None
    node_cert_file: Path | None = None
    node_key_file: Path | None = None


class LocalSettings(_Section):
    model_repository: Path | None = None
    threads: int = Field(default=1, ge=0)


class CacheSettings(_Section):
    """Response cache, opt-in per model: only deterministic models belong in `models`."""

    models: list[str] = []
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1)  # the answers' tensor bytes, about
    ttl_s: float = Field(default=60.0, gt=0)

    _split = field_validator("models", mode="before")(_comma_list)


class ShardingSettings(_Section):
    """Sharded models (worker.sharding): pipeline descriptions to serve, micro-batching, node-to-node hops."""

    models: list[Path] = []  # `<name>.pipeline.json` files, or folders of them
    micro_batch: int = Field(default=0, ge=0)  # rows per micro-batch; 0: whole requests
    forwarding: bool = False  # stage nodes hand activations straight to the next stage's node

    _split = field_validator("models", mode="before")(_comma_list)


class TelemetrySettings(_Section):
    """Where `distributed.router` serves Prometheus metrics (outside the API prefix, no auth); `off`: nowhere."""

    metrics_path: str = Field(default="/metrics", pattern=r"^(/[A-Za-z0-9/_\-.]*|off)$")


ENVIRONMENT: dict[str, tuple[str, str]] = {
    "ENABLE_DISTRIBUTED_INFERENCE": ("flags", "enabled"),
    "DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT": ("flags", "rollout_percent"),
    "DISTRIBUTED_INFERENCE_MODE": ("flags", "mode"),
    "DISTINFER_API_PREFIX": ("api", "prefix"),
    "DISTINFER_DISCOVERY": ("discovery", "sources"),
    "DISTINFER_NODES": ("discovery", "nodes"),
    "DISTINFER_NODES_FILE": ("discovery", "nodes_file"),
    "DISTINFER_CONSUL_URL": ("discovery", "consul_url"),
    "DISTINFER_CONSUL_SERVICE": ("discovery", "consul_service"),
    "DISTINFER_CONSUL_TOKEN": ("discovery", "consul_token"),
    "DISTINFER_CONSUL_DC": ("discovery", "consul_dc"),
    "DISTINFER_CONSUL_WAIT_S": ("discovery", "consul_wait_s"),
    "DISTINFER_DNS_SRV": ("discovery", "dns_srv"),
    "DISTINFER_DNS_NAMESERVER": ("discovery", "dns_nameserver"),
    "DISTINFER_DISCOVERY_START_TIMEOUT_S": ("discovery", "start_timeout_s"),
    "DISTINFER_STRATEGY": ("balancer", "strategy"),
    "DISTINFER_PROBE_INTERVAL_S": ("balancer", "probe_interval_s"),
    "DISTINFER_PROBE_TIMEOUT_S": ("balancer", "probe_timeout_s"),
    "DISTINFER_MAX_ATTEMPTS": ("balancer", "max_attempts"),
    "DISTINFER_ATTEMPT_TIMEOUT_MS": ("balancer", "attempt_timeout_ms"),
    "DISTINFER_RETRY_BUDGET_RATIO": ("balancer", "retry_budget_ratio"),
    "DISTINFER_RETRY_BUDGET_MIN_PER_S": ("balancer", "retry_budget_min_per_s"),
    "DISTINFER_HEDGING": ("balancer", "hedging"),
    "DISTINFER_HEDGE_AFTER_MS": ("balancer", "hedge_after_ms"),
    "DISTINFER_EJECT_CONSECUTIVE_FAILURES": ("balancer", "eject_consecutive_failures"),
    "DISTINFER_EJECT_ERROR_RATE": ("balancer", "eject_error_rate"),
    "DISTINFER_EJECT_MIN_REQUESTS": ("balancer", "eject_min_requests"),
    "DISTINFER_EJECT_BASE_S": ("balancer", "eject_base_s"),
    "DISTINFER_EJECT_MAX_S": ("balancer", "eject_max_s"),
    "DISTINFER_PANIC_THRESHOLD_PERCENT": ("balancer", "panic_threshold_percent"),
    "DISTINFER_NODE_MAX_IN_FLIGHT": ("balancer", "node_max_in_flight"),
    "DISTINFER_LATENCY_DECAY_S": ("balancer", "latency_decay_s"),
    "DISTINFER_LATENCY_BAND": ("balancer", "latency_band"),
    "DISTINFER_MODEL_REQUIREMENTS": ("balancer", "model_requirements"),
    "DISTINFER_VALIDATION_SAMPLE_RATE": ("trust", "validation_sample_rate"),
    "DISTINFER_VALIDATION_RTOL": ("trust", "validation_rtol"),
    "DISTINFER_VALIDATION_ATOL": ("trust", "validation_atol"),
    "DISTINFER_TRUST_QUARANTINE_BELOW": ("trust", "quarantine_below"),
    "DISTINFER_TRUST_QUARANTINE_S": ("trust", "quarantine_s"),
    "DISTINFER_DEFAULT_TIMEOUT_MS": ("dispatch", "default_timeout_ms"),
    "DISTINFER_CONNECTIONS_PER_NODE": ("dispatch", "connections_per_node"),
    "DISTINFER_MAX_TIMEOUT_MS": ("dispatch", "max_timeout_ms"),
    "DISTINFER_MAX_BATCH_PIPELINE_TIMEOUT_MS": ("dispatch", "max_batch_pipeline_timeout_ms"),
    "DISTINFER_BINARY_TO_NODES": ("dispatch", "binary_to_nodes"),
    "DISTINFER_MAX_BODY_BYTES": ("limits", "max_body_bytes"),
    "DISTINFER_MAX_TENSOR_ELEMENTS": ("limits", "max_tensor_elements"),
    "DISTINFER_MAX_STRING_BYTES": ("limits", "max_string_bytes"),
    "DISTINFER_MAX_BATCH_SIZE": ("limits", "max_batch_size"),
    "DISTINFER_MAX_PIPELINE_STAGES": ("limits", "max_pipeline_stages"),
    "DISTINFER_MAX_NEW_TOKENS": ("limits", "max_new_tokens"),
    "DISTINFER_MAX_INFLIGHT": ("limits", "max_inflight"),
    "DISTINFER_BATCH_COALESCE": ("orchestration", "coalesce"),
    "DISTINFER_BATCH_CONCURRENCY": ("orchestration", "batch_concurrency"),
    "DISTINFER_MAX_PARALLEL_MODELS": ("orchestration", "max_parallel_models"),
    "DISTINFER_TASK_STORE": ("tasks", "store"),
    "DISTINFER_TASK_QUEUE_SIZE": ("tasks", "queue_size"),
    "DISTINFER_TASK_WORKERS": ("tasks", "workers"),
    "DISTINFER_TASK_AGING_S": ("tasks", "aging_s"),
    "DISTINFER_TASK_TTL_S": ("tasks", "ttl_s"),
    "DISTINFER_TASK_MAX_TASKS": ("tasks", "max_tasks"),
    "DISTINFER_TASK_MAX_PENDING_BYTES": ("tasks", "max_pending_bytes"),
    "DISTINFER_TASK_LEASE_S": ("tasks", "lease_s"),
    "DISTINFER_AUTH_DISABLED": ("auth", "disabled"),
    "DISTINFER_JWT_SECRET": ("auth", "jwt_secret"),
    "DISTINFER_JWT_PUBLIC_KEY": ("auth", "jwt_public_key"),
    "DISTINFER_JWT_JWKS_URL": ("auth", "jwt_jwks_url"),
    "DISTINFER_JWT_AUDIENCE": ("auth", "jwt_audience"),
    "DISTINFER_JWT_ISSUER": ("auth", "jwt_issuer"),
    "DISTINFER_JWT_LEEWAY_S": ("auth", "leeway_s"),
    "DISTINFER_JWKS_REFRESH_S": ("auth", "jwks_refresh_s"),
    "DISTINFER_NODE_TOKEN": ("auth", "node_token"),
    "DISTINFER_NODE_CA_FILE": ("auth", "node_ca_file"),
    "DISTINFER_NODE_CERT_FILE": ("auth", "node_cert_file"),
    "DISTINFER_NODE_KEY_FILE": ("auth", "node_key_file"),
    "DISTINFER_LOCAL_MODEL_REPOSITORY": ("local", "model_repository"),
    "DISTINFER_LOCAL_THREADS": ("local", "threads"),
    "DISTINFER_CACHE_MODELS": ("cache", "models"),
    "DISTINFER_CACHE_MAX_ENTRIES": ("cache", "max_entries"),
    "DISTINFER_CACHE_MAX_BYTES": ("cache", "max_bytes"),
    "DISTINFER_CACHE_TTL_S": ("cache", "ttl_s"),
    "DISTINFER_METRICS_PATH": ("telemetry", "metrics_path"),
    "DISTINFER_SHARDED_MODELS": ("sharding", "models"),
    "DISTINFER_SHARD_MICRO_BATCH": ("sharding", "micro_batch"),
    "DISTINFER_SHARD_FORWARDING": ("sharding", "forwarding"),
}


class _ContractEnvironment(PydanticBaseSettingsSource):
    """Reads the contract's flat names from the environment (first) and `.env` (second)."""

    def __init__(self, settings_cls: type[BaseSettings], env_files: Sequence[Path]) -> None:
        super().__init__(settings_cls)
        self._env_files = env_files

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, str | None] = {}
        for env_file in self._env_files:  # later files win, as in pydantic-settings
            if env_file.is_file():
                found.update(dotenv_values(env_file))
        found.update({name: value for name, value in os.environ.items() if name in ENVIRONMENT})
        sections: dict[str, dict[str, Any]] = {}
        for name, (section, key) in ENVIRONMENT.items():
            value = found.get(name)
            if value is not None and value != "":
                sections.setdefault(section, {})[key] = value
        return sections


class Settings(BaseSettings):
    """Everything the plugin needs, built once by the caller (or `from_env`) and passed down."""

    # Errors name the setting and the problem, never the value given: it may be a key, a token or a
    # URL with a password (the task store's).
    model_config = SettingsConfigDict(
        extra="forbid", validate_assignment=True, env_file=".env", hide_input_in_errors=True
    )

    flags: FlagSettings = FlagSettings()
    api: ApiSettings = ApiSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    balancer: BalancerSettings = BalancerSettings()
    trust: TrustSettings = TrustSettings()
    dispatch: DispatchSettings = DispatchSettings()
    limits: LimitSettings = LimitSettings()
    local: LocalSettings = LocalSettings()
    cache: CacheSettings = CacheSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    orchestration: OrchestrationSettings = OrchestrationSettings()
    tasks: TaskSettings = TaskSettings()
    auth: AuthSettings = AuthSettings()
    sharding: ShardingSettings = ShardingSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # `.env` unless the caller names other files (`Settings(_env_file="prod.env")`) or none (`None`).
        return init_settings, _ContractEnvironment(settings_cls, _env_files(getattr(dotenv_settings, "env_file", None)))


def _env_files(given: object) -> list[Path]:
    if given is None:
        return []
    if isinstance(given, str | os.PathLike):
        return [Path(given)]
    return [Path(item) for item in given]  # type: ignore[attr-defined]
