"""Runtime flags: sticky rollout buckets, local updates, and an OpenFeature provider backing them."""

from __future__ import annotations

import pytest
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider
from pydantic import ValidationError

from gateway_plugin.flags import FLAG_KEYS, FeatureFlags, rollout_bucket
from gateway_plugin.settings import FlagSettings


def test_rollout_bucket_is_stable_and_spread() -> None:
    assert rollout_bucket("sub:alice") == rollout_bucket("sub:alice")  # sticky: same caller, same bucket
    buckets = [rollout_bucket(f"sub:user-{i}") for i in range(4000)]
    assert all(0 <= b < 100 for b in buckets)
    share = sum(b < 25 for b in buckets) / len(buckets)
    assert 0.22 < share < 0.28  # 25 % of callers for a 25 % rollout
    # Raising the percentage only adds callers: whoever was in at 10 % is still in at 50 %.
    assert {i for i, b in enumerate(buckets) if b < 10} <= {i for i, b in enumerate(buckets) if b < 50}
    assert FeatureFlags.in_rollout("anyone", 100)
    assert not FeatureFlags.in_rollout("anyone", 0)


def test_updates_apply_at_once_and_are_validated() -> None:
    flags = FeatureFlags(FlagSettings())
    assert flags.current().as_dict() == {
        "enabled": False,
        "rollout_percent": 100.0,
        "mode": "serve",
        "source": "settings",
    }
    state = flags.update(enabled=True, rollout_percent=12.5, mode="shadow")
    assert (state.enabled, state.rollout_percent, state.mode) == (True, 12.5, "shadow")
    assert flags.enabled
    with pytest.raises(ValidationError):
        flags.update(rollout_percent=101)


def test_an_openfeature_provider_backs_the_flags() -> None:
    provider = InMemoryProvider(
        {
            FLAG_KEYS["enabled"]: InMemoryFlag("on", {"on": True, "off": False}),
            FLAG_KEYS["rollout_percent"]: InMemoryFlag("some", {"some": 30.0}),
        }
    )
    from openfeature import api

    api.set_provider(provider, domain="distinfer-test")
    try:
        flags = FeatureFlags(FlagSettings(enabled=False, mode="shadow"), api.get_client(domain="distinfer-test"))
        state = flags.current()
        assert (state.enabled, state.rollout_percent, state.source) == (True, 30.0, "provider")
        assert state.mode == "shadow"  # the provider does not know this flag: the local value stands
    finally:
        api.clear_providers()


class _Broken:
    def get_boolean_value(self, flag_key: str, default_value: bool) -> bool:
        raise RuntimeError("flag service down")

    def get_float_value(self, flag_key: str, default_value: float) -> float:
        return default_value

    def get_string_value(self, flag_key: str, default_value: str) -> str:
        return default_value


def test_a_failing_provider_falls_back_to_local_values(caplog: pytest.LogCaptureFixture) -> None:
    flags = FeatureFlags(FlagSettings(enabled=True, rollout_percent=40), _Broken())
    state = flags.current()
    assert (state.enabled, state.rollout_percent, state.source) == (True, 40, "settings")
    assert "flag provider failed" in caplog.text


class _NotANumber(_Broken):
    def get_boolean_value(self, flag_key: str, default_value: bool) -> bool:
        return True

    def get_float_value(self, flag_key: str, default_value: float) -> float:
        return float("nan")


def test_a_nan_rollout_percent_from_a_provider_keeps_the_local_value() -> None:
    """Regression: clamping kept the NaN: nobody was in the rollout and GET /flags said null."""
    state = FeatureFlags(FlagSettings(rollout_percent=40), _NotANumber()).current()
    assert (state.enabled, state.rollout_percent, state.source) == (True, 40.0, "provider")


class _Flipping:
    """A provider whose `enabled` flag reads off, then on, then on."""

    def __init__(self) -> None:
        self.reads = [False, True, True]

    def get_boolean_value(self, flag_key: str, default_value: bool) -> bool:
        return self.reads.pop(0) if flag_key == FLAG_KEYS["enabled"] else default_value

    def get_float_value(self, flag_key: str, default_value: float) -> float:
        return default_value

    def get_string_value(self, flag_key: str, default_value: str) -> str:
        return default_value


async def test_the_relay_guard_reads_the_flag_once() -> None:
    """Regression (review): the guard read an off flag, then read it again to raise, and a provider
    that changed in between let the request through."""
    from gateway_plugin.errors import NotFound
    from gateway_plugin.plugin import DistributedInference
    from gateway_plugin.settings import Settings

    provider = _Flipping()
    plugin = DistributedInference(Settings(), flag_provider=provider)
    with pytest.raises(NotFound):
        await plugin._guard_infer(None)
    assert provider.reads == [True, True]


class _Untyped(_Broken):
    """A hand-written provider that answers strings (no OpenFeature type checks in between)."""

    def __init__(self, enabled: object, percent: object) -> None:
        self.values = {"enabled": enabled, "percent": percent}

    def get_boolean_value(self, flag_key: str, default_value: bool) -> bool:
        return self.values["enabled"]  # type: ignore[return-value]

    def get_float_value(self, flag_key: str, default_value: float) -> float:
        return self.values["percent"]  # type: ignore[return-value]


@pytest.mark.parametrize(("enabled", "percent"), [(True, "abc"), (True, None), ("false", 50.0), (1, 50.0)])
def test_a_provider_value_of_the_wrong_type_falls_back_to_local_values(enabled: object, percent: object) -> None:
    """Regression (audit): `float("abc")` sat outside the fallback (the legacy endpoint and GET /flags
    answered 500), and `bool("false")` turned the flag on."""
    flags = FeatureFlags(FlagSettings(enabled=False, rollout_percent=40), _Untyped(enabled, percent))
    state = flags.current()
    assert (state.enabled, state.rollout_percent, state.source) == (False, 40, "settings")
    assert flags.enabled is (enabled is True)  # the switch alone: a string or a number is not a boolean
