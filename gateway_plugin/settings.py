"""One settings object, in sections, read from the environment names of CONTRACT.md.

The contract fixes flat names (`ENABLE_DISTRIBUTED_INFERENCE`, `DISTINFER_NODES`, ...); the
`ENVIRONMENT` table below maps each to its place in the sections, in one spot. Values come from
the process environment, then a `.env` file; keyword arguments win over both. Nothing is read at
import time: `Settings()` reads when it is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ENVIRONMENT",
    "ApiSettings",
    "BalancerSettings",
    "DiscoverySettings",
    "DispatchSettings",
    "FlagSettings",
    "LimitSettings",
    "LocalSettings",
    "Settings",
]


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FlagSettings(_Section):
    enabled: bool = False
    rollout_percent: float = Field(default=100.0, ge=0, le=100)
    mode: Literal["serve", "shadow"] = "serve"


class ApiSettings(_Section):
    prefix: str = Field(default="/api/v1/distributed", pattern=r"^/[A-Za-z0-9/_\-]*[A-Za-z0-9_\-]$")


class DiscoverySettings(_Section):
    sources: list[Literal["static", "consul", "dns"]] = ["static"]
    nodes: list[str] = []
    nodes_file: Path | None = None

    _split = field_validator("sources", "nodes", mode="before")(_comma_list)


class BalancerSettings(_Section):
    strategy: str = "round_robin"
    probe_interval_s: float = Field(default=1.0, gt=0, le=300)
    probe_timeout_s: float = Field(default=1.0, gt=0, le=60)
    max_attempts: int = Field(default=2, ge=1, le=10)


class DispatchSettings(_Section):
    default_timeout_ms: int = Field(default=5000, gt=0)
    max_timeout_ms: int = Field(default=60_000, gt=0)
    binary_to_nodes: bool = True
    connections_per_node: int = Field(default=100, ge=1)


class LimitSettings(_Section):
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_tensor_elements: int = Field(default=16_777_216, gt=0)
    max_string_bytes: int = Field(default=1_048_576, gt=0)


class LocalSettings(_Section):
    model_repository: Path | None = None
    threads: int = Field(default=1, ge=0)


ENVIRONMENT: dict[str, tuple[str, str]] = {
    "ENABLE_DISTRIBUTED_INFERENCE": ("flags", "enabled"),
    "DISTRIBUTED_INFERENCE_ROLLOUT_PERCENT": ("flags", "rollout_percent"),
    "DISTRIBUTED_INFERENCE_MODE": ("flags", "mode"),
    "DISTINFER_API_PREFIX": ("api", "prefix"),
    "DISTINFER_DISCOVERY": ("discovery", "sources"),
    "DISTINFER_NODES": ("discovery", "nodes"),
    "DISTINFER_NODES_FILE": ("discovery", "nodes_file"),
    "DISTINFER_STRATEGY": ("balancer", "strategy"),
    "DISTINFER_PROBE_INTERVAL_S": ("balancer", "probe_interval_s"),
    "DISTINFER_PROBE_TIMEOUT_S": ("balancer", "probe_timeout_s"),
    "DISTINFER_MAX_ATTEMPTS": ("balancer", "max_attempts"),
    "DISTINFER_DEFAULT_TIMEOUT_MS": ("dispatch", "default_timeout_ms"),
    "DISTINFER_MAX_TIMEOUT_MS": ("dispatch", "max_timeout_ms"),
    "DISTINFER_BINARY_TO_NODES": ("dispatch", "binary_to_nodes"),
    "DISTINFER_MAX_BODY_BYTES": ("limits", "max_body_bytes"),
    "DISTINFER_MAX_TENSOR_ELEMENTS": ("limits", "max_tensor_elements"),
    "DISTINFER_MAX_STRING_BYTES": ("limits", "max_string_bytes"),
    "DISTINFER_LOCAL_MODEL_REPOSITORY": ("local", "model_repository"),
    "DISTINFER_LOCAL_THREADS": ("local", "threads"),
}


class _ContractEnvironment(PydanticBaseSettingsSource):
    """Reads the contract's flat names from the environment (first) and `.env` (second)."""

    def __init__(self, settings_cls: type[BaseSettings], env_file: Path | None) -> None:
        super().__init__(settings_cls)
        self._env_file = env_file

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is done in __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, str | None] = {}
        if self._env_file is not None and self._env_file.is_file():
            found.update(dotenv_values(self._env_file))
        found.update({name: value for name, value in os.environ.items() if name in ENVIRONMENT})
        sections: dict[str, dict[str, Any]] = {}
        for name, (section, key) in ENVIRONMENT.items():
            value = found.get(name)
            if value is not None and value != "":
                sections.setdefault(section, {})[key] = value
        return sections


class Settings(BaseSettings):
    """Everything the plugin needs, built once by the caller (or `from_env`) and passed down."""

    model_config = SettingsConfigDict(extra="forbid", validate_assignment=True)

    flags: FlagSettings = FlagSettings()
    api: ApiSettings = ApiSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    balancer: BalancerSettings = BalancerSettings()
    dispatch: DispatchSettings = DispatchSettings()
    limits: LimitSettings = LimitSettings()
    local: LocalSettings = LocalSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _ContractEnvironment(settings_cls, Path(".env"))
