"""The feature flag, rollout percentage and mode (CONTRACT §3), changeable while the app runs.

`FeatureFlags` reads them for every request, so a change (`PUT /flags`, or a flag provider)
applies to the next request without a restart. A provider backs them when given: anything with
OpenFeature's evaluation methods (an `openfeature.api.get_client()` fits as is); the local
values (settings, then `PUT /flags`) are the defaults it is asked with, so a provider that does
not know a flag leaves it as set here. Rollout is sticky: a caller's bucket is a hash of its
key (JWT `sub`, else client address), the same in every process and across restarts.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway_plugin.settings import FlagSettings

__all__ = ["FLAG_KEYS", "FeatureFlags", "FlagProvider", "FlagState", "rollout_bucket"]

log = logging.getLogger(__name__)

# Flag keys asked of a provider (OpenFeature style); values are those of the CONTRACT §3 variables.
FLAG_KEYS = {
    "enabled": "enable-distributed-inference",
    "rollout_percent": "distributed-inference-rollout-percent",
    "mode": "distributed-inference-mode",
}

Mode = Literal["serve", "shadow"]


class FlagProvider(Protocol):
    """The subset of an OpenFeature client the plugin uses; values are resolved per request."""

    def get_boolean_value(self, flag_key: str, default_value: bool) -> bool: ...

    def get_float_value(self, flag_key: str, default_value: float) -> float: ...

    def get_string_value(self, flag_key: str, default_value: str) -> str: ...


@dataclass(frozen=True, slots=True)
class FlagState:
    enabled: bool
    rollout_percent: float
    mode: Mode
    source: Literal["settings", "provider"] = "settings"

    def as_dict(self) -> dict[str, object]:
        return {
            "enabled": self.enabled,
            "rollout_percent": self.rollout_percent,
            "mode": self.mode,
            "source": self.source,
        }


def rollout_bucket(caller: str) -> float:
    """A stable number in [0, 100) for `caller`: the same caller always lands in the same bucket."""
    digest = hashlib.sha256(b"distinfer-rollout\x00" + caller.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


class FeatureFlags:
    def __init__(self, local: FlagSettings, provider: FlagProvider | None = None) -> None:
        self._local = local
        self.provider = provider

    def current(self) -> FlagState:
        local = self._local
        if self.provider is None:
            return FlagState(local.enabled, local.rollout_percent, local.mode)
        try:
            enabled = _switch(self.provider.get_boolean_value(FLAG_KEYS["enabled"], local.enabled))
            percent = self.provider.get_float_value(FLAG_KEYS["rollout_percent"], local.rollout_percent)
            mode = self.provider.get_string_value(FLAG_KEYS["mode"], local.mode)
            share = float(percent)  # a hand-written provider's "abc" or None: its failure, not ours
        except Exception:  # a provider's failure must not take requests down: fall back to local values
            log.exception("flag provider failed; using the local flag values")
            return FlagState(local.enabled, local.rollout_percent, local.mode)
        if math.isnan(share):  # min/max keep a NaN: nobody would be in the rollout, and GET /flags says null
            log.warning("flag provider gave a NaN rollout percent; using the local value")
            share = local.rollout_percent
        return FlagState(
            enabled=enabled,
            rollout_percent=min(max(share, 0.0), 100.0),
            mode="shadow" if mode == "shadow" else "serve",
            source="provider",
        )

    @property
    def enabled(self) -> bool:
        """The master switch alone (asked on every request, so one provider call, not three)."""
        if self.provider is None:
            return self._local.enabled
        try:
            return _switch(self.provider.get_boolean_value(FLAG_KEYS["enabled"], self._local.enabled))
        except Exception:
            log.exception("flag provider failed; using the local flag values")
            return self._local.enabled

    def update(
        self, *, enabled: bool | None = None, rollout_percent: float | None = None, mode: Mode | None = None
    ) -> FlagState:
        """Change the local values (validated by the settings model); applies from the next request."""
        if enabled is not None:
            self._local.enabled = enabled
        if rollout_percent is not None:
            self._local.rollout_percent = rollout_percent
        if mode is not None:
            self._local.mode = mode
        state = self.current()
        log.info("flags now %s", state.as_dict())
        return state

    @staticmethod
    def in_rollout(caller: str, percent: float) -> bool:
        return percent >= 100 or rollout_bucket(caller) < percent


def _switch(value: object) -> bool:
    """A provider's boolean; a string or number is its error (`bool("false")` is True: the flag on)."""
    if not isinstance(value, bool):
        raise TypeError(f"the flag provider gave {type(value).__name__} {str(value)[:20]!r} for a boolean")
    return value
